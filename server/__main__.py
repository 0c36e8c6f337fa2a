"""`python -m server --checkpoint RUN ...`: the same as `textebm serve` (see server/launch.py)."""

import sys

from server.launch import main

if __name__ == "__main__":
    sys.exit(main())
