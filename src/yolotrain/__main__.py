"""``python -m yolotrain ...`` is the same as the ``yolotrain`` command."""

import sys

from .cli import main

sys.exit(main())
