"""
The C{lmproxy} console script: C{lmproxy -c config.jsonc} runs
C{twistd --nodaemon --pidfile= lmproxy -c config.jsonc} for users who expect
one command.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    """Run lmproxy in the foreground under twistd."""
    from twisted.scripts.twistd import run

    args = sys.argv[1:] if argv is None else argv
    sys.argv = ["lmproxy", "--nodaemon", "--pidfile=", "lmproxy", *args]
    run()


if __name__ == "__main__":
    main()
