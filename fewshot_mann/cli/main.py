"""Command line: ``fewshot-mann VERB [options]`` (also ``python -m fewshot_mann VERB``;
``train.py`` and ``evaluate.py`` at the top are the first two verbs).

Each verb is one module of this package with ``main(argv=None) -> int``; it parses its
arguments and calls the package (engine/, data/). User errors print one line
(``error: ...``) and exit with status 2, never a traceback.
"""
from __future__ import annotations

import importlib
import sys

from fewshot_mann.cli.common import fail, run_guarded

# verb -> (module, its line in the usage)
VERBS = {
    "train": ("fewshot_mann.cli.train", "meta-train a model on label-shifted episodes"),
    "evaluate": ("fewshot_mann.cli.evaluate", "accuracy by instance on held-out classes"),
    "inspect": ("fewshot_mann.cli.inspect_folder", "check an image folder dataset"),
    "predict": ("fewshot_mann.cli.predict", "classify new images from a few labelled examples"),
    "bench": ("fewshot_mann.cli.bench", "speed benchmark against the plain reference loop"),
    "knn": ("fewshot_mann.cli.knn", "nearest-neighbour baseline on the evaluation episodes"),
    "export": ("fewshot_mann.cli.export", "a small weights-only copy of a checkpoint"),
    "kshot": ("fewshot_mann.cli.kshot", "standard N-way K-shot accuracy (1-shot, 5-shot)"),
    "models": ("fewshot_mann.cli.models", "the models bundled with fewshot-mann (usable as --checkpoint NAME)"),
    "cache": ("fewshot_mann.cli.cache", "list or clear the caches (decoded images, backbone features)"),
    "pretrain": ("fewshot_mann.cli.pretrain", "pretrain a Conv4 backbone on the training classes (prototypical loss)"),
    "report": ("fewshot_mann.cli.report", "regenerate the reports' tables and plots"),
    "serve": ("fewshot_mann.cli.serve", "a local web page: support folder, cases, answers, checks"),
}


def usage() -> str:
    return "\n".join(["usage: fewshot-mann {" + ",".join(VERBS) + "} [options]",
                      *(f"  {verb:<9} {line}" for verb, (_, line) in VERBS.items())])


def main(argv=None) -> int:
    return run_guarded(_main, argv)


def _main(argv) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] not in VERBS:
        print(usage(), file=sys.stderr)
        return fail(f"unknown command {argv[0]!r}")
    try:
        module = importlib.import_module(VERBS[argv[0]][0])
    except ImportError:
        return fail(f"the {argv[0]!r} command is not available in this build")
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
