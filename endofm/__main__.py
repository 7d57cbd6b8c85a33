"""``python -m endofm`` runs the command line."""

import sys

from endofm.cli.main import main

sys.exit(main())
