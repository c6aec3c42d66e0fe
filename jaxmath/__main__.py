"""``python -m jaxmath ...``: the same as the ``jaxmath`` command (see :mod:`jaxmath.run.cli`)."""

import sys

from jaxmath.run.cli import main

if __name__ == "__main__":
    sys.exit(main())
