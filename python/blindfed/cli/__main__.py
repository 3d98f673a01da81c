"""``python -m blindfed.cli``: the ``blindfed`` command."""

import sys

from blindfed.cli import main

sys.exit(main())
