"""``python -m yolotrain ...`` is the same as the ``yolotrain`` command."""

import sys

from yolotrain.cli import main

sys.exit(main())
