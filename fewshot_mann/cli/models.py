"""``fewshot-mann models``: the models bundled with fewshot-mann (engine/bundled.py); each
name works as ``--checkpoint NAME``."""
from __future__ import annotations

import argparse
import json
import sys

from fewshot_mann.cli.common import parse_checked, run_guarded


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fewshot-mann models",
                                description="List the models bundled with fewshot-mann (use a name as --checkpoint).")
    # a switch here (print to stdout), unlike the other commands' --json PATH
    p.add_argument("--json", action="store_true", help="print the registry as JSON")
    return p


def main(argv=None) -> int:
    return run_guarded(_models, argv)


def _models(argv) -> int:
    from fewshot_mann.engine.bundled import format_models, registry

    args = parse_checked(parser(), argv)
    if args.json:
        print(json.dumps(list(registry().values()), indent=1))
    else:
        print(format_models())
    return 0


if __name__ == "__main__":
    sys.exit(main())
