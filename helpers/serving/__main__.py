"""``python -m helpers.serving``: see :func:`helpers.serving.cli.main`."""

import sys

from helpers.serving.cli import main

sys.exit(main())
