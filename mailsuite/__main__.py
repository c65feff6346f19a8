"""``python -m mailsuite`` is the admin command."""

import sys

from .cli import main

sys.exit(main())
