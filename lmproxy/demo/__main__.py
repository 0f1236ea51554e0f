"""C{python -m lmproxy.demo}: run the demo model server (see L{lmproxy.demo.main})."""

import sys

from lmproxy.demo.main import main

sys.exit(main())
