"""C{python -m lmproxy -c config.jsonc}: the same as the C{lmproxy} script."""

from lmproxy.cli import main

raise SystemExit(main())
