"""`python -m lmreason ...` (and `torchrun -m lmreason ...`) runs the CLI."""

import sys

from lmreason.cli import main

sys.exit(main())
