"""`python -m vyre_uring ...`: the vyre-uring command line (see vyre_uring.cli)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
