"""`python -m opscli` runs the `ftcancel` command."""

import sys

from opscli.cli import main

sys.exit(main())
