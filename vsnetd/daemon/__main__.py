"""``python -m vsnetd.daemon``."""

import sys

from vsnetd.daemon import main

sys.exit(main())
