"""`python -m digitrec`: the command line (how torchrun starts its workers: `torchrun ... -m digitrec train`)."""

import sys

from .cli import main

sys.exit(main())
