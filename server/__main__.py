"""``python -m spinup.server`` is the ``spinup`` command."""

import sys

from .cli import main

sys.exit(main())
