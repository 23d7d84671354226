"""``python -m modular ...``: see modular/cli.py."""

import sys

from modular.cli import main

sys.exit(main())
