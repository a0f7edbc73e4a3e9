"""``python -m rcf_sync``: the command line (see :mod:`rcf_sync._cli`)."""

import sys

from ._cli import main

sys.exit(main())
