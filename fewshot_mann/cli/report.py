"""``fewshot-mann report``: regenerate the reports' tables and plots from the results on disk.

Reports (``--only`` picks some; by default every one whose inputs are there runs):

- ``results``: the results section of ``REPORTS/README.md`` and its plots, from
  ``results/*.json``, ``results-kshot/*.json`` and ``runs/*/metrics.jsonl``
  (``reporting.results``);
- ``memory-comparison``: ``memory_comparison.md`` and its plots, from the rows listed in
  ``REPORTS/memory_comparison.json`` or given with ``--eval NAME=PATH``
  (``reporting.memory_comparison``);
- ``tables``: the hand-laid tables of ``README.md``, ``REPORTS/*.md`` and ``docs/`` listed in
  ``REPORTS/tables.json``, every number read from a committed JSON (``reporting.json_tables``);
- ``second-instance``: ``second_instance.md``, 2nd-instance accuracy by step and gap, from
  ``--checkpoints`` evaluated on their held-out classes (``reporting.second_instance``;
  it runs the models, so it needs the data: ``--data-root``).
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from fewshot_mann import limits
from fewshot_mann.cli.common import add_flag, add_shared_flags, at_least, parse_checked, set_threads
from fewshot_mann.errors import UserError
from fewshot_mann.fileio import check_output_path

REPORTS = ("results", "tables", "memory-comparison", "second-instance")


def report_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fewshot-mann report", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--reports-dir", default="reports", help="the folder of results that the reports are made from")
    p.add_argument("--only", nargs="+", choices=REPORTS, metavar="NAME",
                   help=f"run only these reports ({', '.join(REPORTS)}); default: every one whose inputs exist")
    p.add_argument("--out-dir", default=None, help="memory-comparison/second-instance: write here (default: --reports-dir)")
    g = p.add_argument_group("memory-comparison")
    g.add_argument("--eval", action="append", default=[], metavar="NAME=PATH",
                   help="a row (evaluation JSON); given rows replace those of REPORTS/memory_comparison.json")
    g.add_argument("--metrics", action="append", default=[], metavar="NAME=PATH",
                   help="the training metrics.jsonl of row NAME (default: next to its checkpoint)")
    g = p.add_argument_group("second-instance")
    g.add_argument("--checkpoints", nargs="+", default=[], metavar="CHECKPOINT")
    g.add_argument("--data-root", default=None, help="Omniglot root of the checkpoints' held-out classes")
    add_flag(g, "--episodes", type=int, default=500, problem=at_least(1, "--episodes", high=limits.MAX_EVAL_EPISODES))
    add_shared_flags(g, "threads", threads=1)
    return p


def name_path_pairs(items: list[str], flag: str) -> dict[str, Path]:
    """``{NAME: PATH}`` from ``NAME=PATH`` items; UserError for one without both."""
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UserError(f"{flag} expects NAME=PATH (got {item!r})")
        out[name] = Path(path)
    return out


def run_results(args, reports: Path) -> list[Path]:
    from fewshot_mann.reporting.results import write_results_report
    return write_results_report(reports)


def run_tables(args, reports: Path) -> list[Path]:
    from fewshot_mann.reporting.json_tables import write_tables
    return write_tables(reports)


def run_memory_comparison(args, reports: Path) -> list[Path]:
    from fewshot_mann.reporting.memory_comparison import ROWS_FILE, collect, read_rows, write_comparison
    evals, metrics, source = {}, {}, "the rows given with --eval"
    if args.eval:
        evals = name_path_pairs(args.eval, "--eval")
    elif (reports / ROWS_FILE).exists():
        evals, metrics = read_rows(reports / ROWS_FILE)
        source = f"the rows of `{reports / ROWS_FILE}`"
    metrics.update(name_path_pairs(args.metrics, "--metrics"))
    return write_comparison(collect(evals, metrics), Path(args.out_dir or reports), source)


def run_second_instance(args, reports: Path) -> list[Path]:

    from fewshot_mann.fileio import atomic_write_text
    from fewshot_mann.reporting.second_instance import second_instance_markdown
    if not args.checkpoints:
        raise UserError("second-instance needs --checkpoints CHECKPOINT [...] (and --data-root for their data)")
    set_threads(args.threads)
    command = shlex.join(["fewshot-mann", "report", "--only", "second-instance",
                          *(["--data-root", args.data_root] if args.data_root else []),
                          *(["--episodes", str(args.episodes)] if args.episodes != 500 else []),
                          "--checkpoints", *args.checkpoints])
    text = second_instance_markdown(args.checkpoints, args.data_root, args.episodes, command)
    print(text)
    out = Path(args.out_dir or reports) / "second_instance.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, text)
    return [out]


RUNNERS = {"results": run_results, "tables": run_tables, "memory-comparison": run_memory_comparison,
           "second-instance": run_second_instance}


def has_inputs(name: str, args, reports: Path) -> bool:
    """Whether a report not asked for by name has what it is made from (else it is skipped)."""
    if name == "results":
        return (reports / "results").is_dir()
    if name == "tables":
        return (reports / "tables.json").exists()
    if name == "memory-comparison":
        return bool(args.eval) or (reports / "memory_comparison.json").exists()
    return bool(args.checkpoints)


def _report(argv) -> int:
    args = parse_checked(report_parser(), argv)
    for flag, value in (("--reports-dir", args.reports_dir), ("--out-dir", args.out_dir)):
        if value is not None and not value.strip():  # Path("") is ".": never taken for the default
            raise UserError(f"{flag}: an empty path; name a folder")
    reports = Path(args.reports_dir)
    if not reports.is_dir():
        raise UserError(f"--reports-dir {reports} is not a folder")
    chosen = []
    for name in args.only or REPORTS:
        if not args.only and not has_inputs(name, args, reports):
            print(f"{name}: skipped (no inputs; see fewshot-mann report --help)", file=sys.stderr)
            continue
        chosen.append(name)
    # every place a report writes, checked before any work (a file or a read-only folder: one line now)
    if set(chosen) - {"results", "tables"}:
        check_output_path(Path(args.out_dir or reports) / "memory_comparison.md",
                          "--out-dir" if args.out_dir else "--reports-dir")
    if "results" in chosen:
        check_output_path(reports / "README.md", "--reports-dir")
    for name in chosen:
        for path in RUNNERS[name](args, reports):
            print(f"wrote {path}")
    return 0


def main(argv=None) -> int:
    from fewshot_mann.cli.common import run_guarded
    return run_guarded(_report, sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    sys.exit(main())
