#!/usr/bin/env python
"""Meta-train a MANN on label-shifted episodes. See ``python train.py --help``."""
import sys

from fewshot_mann.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
