"""``python -m medsamkit``: the same as the ``medsamkit`` command."""

import sys

from .cli import main

sys.exit(main())
