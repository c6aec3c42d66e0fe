"""``python -m jaxmath ...``: the same as the ``jaxmath`` command (see :mod:`jaxmath.cli`)."""

import sys

from jaxmath.cli import main

if __name__ == "__main__":
    sys.exit(main())
