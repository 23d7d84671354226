"""``python -m modular ...``: see modular/tools/cli.py."""

import sys

from modular.tools.cli import main

sys.exit(main())
