"""`python -m pipeline` is the `casewatch` command."""

import sys

from pipeline.cli import main

sys.exit(main())
