"""The project's own error type: a problem the user can fix, reported in one line."""


class UserError(Exception):
    """Bad input (data, options, checkpoint). The CLI prints it and exits 2, no traceback."""


class CheckpointError(UserError):
    """A checkpoint file that is missing, corrupt, foreign or from an unknown version."""


class DataError(UserError):
    """Missing, unreadable or insufficient data."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def is_allocation_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a failed memory allocation (torch reports one as a RuntimeError)."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text.lower() or "can't allocate memory" in text)
