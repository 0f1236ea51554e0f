"""``python -m lmproxy -c config.jsonc``: the same as the ``lmproxy`` script."""

from lmproxy.cli import main

main()
