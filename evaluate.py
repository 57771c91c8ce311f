#!/usr/bin/env python
"""Evaluate a checkpoint: accuracy by instance on held-out classes. See ``--help``."""
import sys

from fewshot_mann.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
