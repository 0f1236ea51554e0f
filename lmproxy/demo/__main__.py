"""``python -m lmproxy.demo``: run the demo model server."""

import sys

from lmproxy.demo.server import main

sys.exit(main())
