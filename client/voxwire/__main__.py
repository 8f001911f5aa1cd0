"""``python -m voxwire``: the voxwire command line (see :mod:`voxwire.cli`)."""

import sys

from voxwire.cli import main

if __name__ == "__main__":
    sys.exit(main())
