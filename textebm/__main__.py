"""`python -m textebm ...` (and `torchrun -m textebm ...`) run the command line."""

import sys

from textebm.cli import main

sys.exit(main())
