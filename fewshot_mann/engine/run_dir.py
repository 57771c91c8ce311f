"""A run's folder: what a run writes there, and making it ready for a new run or a resume.

``--out DIR`` holds ``config.json``, ``checkpoint.pt`` (latest; atomic) and ``metrics.jsonl``
(``RUN_FILES``), and the results of the run (``RESULT_FILES``). A new run in a folder that holds
one needs ``--overwrite`` (which removes the old run's files, never others) or ``--resume``.
"""
from __future__ import annotations

from pathlib import Path

from fewshot_mann.errors import UserError
from fewshot_mann.fileio import RunLock, check_output_path, same_file

RUN_FILES = ("checkpoint.pt", "config.json", "metrics.jsonl")
# what a run writes besides: results of the old run, which a new run (--overwrite, a restart) removes too
RESULT_FILES = ("final_eval.json", "split.json")


def prepare_run_dir(out: Path, resume: bool, overwrite: bool, lock: RunLock | None = None,
                    init_from: str | None = None) -> bool:
    """Make ``out`` ready for a run; returns True if there is a checkpoint to resume from.

    A run that is not resumed starts from nothing: with --overwrite, or with --resume of a
    run killed before its first checkpoint, the old log and config go (else the new log
    would continue the dead run's lines). ``lock`` (held until the run ends) is taken before
    anything is deleted; a file of the run that ``--init-from`` names is never deleted.
    """
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; name a folder for the run")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the run folder {out}: {exc.strerror or exc}") from exc
    check_output_path(out / "config.json", "--out")  # a read-only or full folder fails now, not after the work
    if lock is not None:
        lock.acquire(out)
    for stale in out.glob(".checkpoint.pt.*.tmp"):  # a save killed halfway; checkpoint.pt itself is whole
        stale.unlink(missing_ok=True)
    ckpt = out / "checkpoint.pt"
    has_run = any((out / name).exists() for name in RUN_FILES)
    if has_run and not (resume or overwrite):
        raise UserError(f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it")
    if resume and ckpt.exists():
        return True
    if init_from:
        for name in RUN_FILES + RESULT_FILES:
            if same_file(init_from, out / name):
                raise UserError(f"--init-from {init_from} is this run's own {name}, which starting the run in "
                                f"{out} would delete; copy it elsewhere first, or train into another --out")
    for name in RUN_FILES + RESULT_FILES:
        try:
            (out / name).unlink(missing_ok=True)
        except OSError as exc:  # a folder or an unwritable file under a run file's name
            raise UserError(f"cannot replace the old run's {out / name}: {exc.strerror or exc}") from exc
    return False
