"""``python -m hesscale``: the same as the ``hesscale`` command."""

import sys

from hesscale.cli import main

sys.exit(main())
