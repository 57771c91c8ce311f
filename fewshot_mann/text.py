"""Names the user chose (class folders, file names), made safe where they are shown or written.

``printable``: for the terminal's tables, one line per row whatever the name holds: a newline,
tab or other control character is written as its escape (``\\n``, ``\\x1b``), so a class named
``"a\\nb"`` cannot break a table or forge a row (nor an escape sequence recolour the terminal).

``csv_writer``: a ``csv.writer`` whose text cells cannot run as spreadsheet formulas: a cell
starting with ``=``, ``+``, ``-``, ``@``, a tab, a carriage return or a newline, with their
fullwidth forms (``＝``) and after leading blanks, gets a leading ``'`` (OWASP's advice for CSV
injection), so a class or file named ``=HYPERLINK(...)`` or `` =1+1`` is shown as text by Excel,
LibreOffice and Sheets. Numbers are written as they are.
"""
from __future__ import annotations

import csv

FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")  # fullwidth: East Asian input


def printable(name) -> str:
    """``name`` with every control character escaped (``\\n``, ``\\t``, ``\\x1b``, ...)."""
    text = str(name)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for c in text)


def csv_cell(value):
    """A CSV cell that a spreadsheet shows as text (see the module docstring); non-text as it is."""
    if isinstance(value, str) and _starts_a_formula(value) and not _is_number(value):
        return "'" + value
    return value


def _starts_a_formula(text: str) -> bool:
    """Whether ``text``, or what follows its leading blanks (spreadsheets skip them), starts as a formula."""
    return text.startswith(FORMULA_START) or text.lstrip().startswith(FORMULA_START)


def _is_number(text: str) -> bool:
    """A plain number as Python writes one (``-0.25``): no blanks around it, where a formula can hide."""
    if text != text.strip():
        return False
    try:
        float(text)
    except ValueError:
        return False
    return True


class _SafeWriter:
    def __init__(self, writer):
        self._writer = writer

    def writerow(self, row):
        return self._writer.writerow([csv_cell(v) for v in row])

    def writerows(self, rows):
        for row in rows:
            self.writerow(row)


def csv_writer(stream, **kwargs) -> _SafeWriter:
    """``csv.writer(stream)`` whose rows go through ``csv_cell``."""
    return _SafeWriter(csv.writer(stream, **kwargs))
