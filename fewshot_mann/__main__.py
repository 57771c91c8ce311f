import sys

from fewshot_mann.cli.main import main

sys.exit(main())
