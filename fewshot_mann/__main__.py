import sys

from fewshot_mann.cli.common import main

sys.exit(main())
