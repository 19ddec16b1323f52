"""``python -m unstuck ...``: the ``unstuck`` command, for environments without its script."""

import sys

from unstuck.cli.main import main

sys.exit(main())
