"""
C{python -m lmproxy.demo} and the C{lmproxy-demo} script: parse the command
line, set up the output, run the demo server on the global reactor until
SIGTERM/SIGINT or C{--exit-after}.

Start-up time matters (lmproxy and its tests connect right after the launch),
so the demo uses plain C{twisted.web} (no Klein, no treq), keeps pyOpenSSL out
of the process, and imports Twisted only once the command line is known to be
good.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import cast

from lmproxy.demo.options import parse_args


def run() -> None:
    """The C{lmproxy-demo} console script: L{main}, its status the exit status."""
    sys.exit(main())


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the demo server.

    @param argv: the command line; C{sys.argv[1:]} when C{None}.
    @return: the process's exit status: 0 after SIGTERM/SIGINT, C{--exit-code}
        after C{--exit-after}, 1 if it cannot listen.
    """
    options = parse_args(argv)
    # The demo never speaks TLS.  Without pyOpenSSL the reactor import skips
    # twisted.internet.ssl and cryptography: about 60 ms less before listening.
    # Set here, not at import time, so that importing this module changes nothing.
    sys.modules.setdefault("OpenSSL", None)  # type: ignore[arg-type]
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner

    from lmproxy.demo.output import observers
    from lmproxy.demo.server import DemoServer, IDemoReactor

    globalLogBeginner.beginLoggingTo(observers(sys.stdout, sys.stderr), redirectStandardIO=False)
    server = DemoServer(cast(IDemoReactor, reactor), options)
    server.start()
    reactor.run()
    return server.exit_code
