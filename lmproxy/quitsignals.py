"""
SIGINT and SIGTERM from the first line of lmproxy's Python on.

The C{lmproxy} command installs L{QuitSignals} before it does anything else
(C{twistd -n lmproxy} as soon as its options are parsed).  From then on a quit
signal is never a C{KeyboardInterrupt} raised into whatever code runs (Twisted's
plugin loading catches C{BaseException}, and would swallow it) nor the default
action (killed by the signal instead of exit 0).  What a signal does depends on
how far lmproxy got:

  - nothing started yet: exit 0 at once, from the handler (the kernel closes
    the sockets bound so far; there is nothing else to undo);
  - held (L{QuitSignals.hold}, called once the service tree is built: it may
    start any moment, spawning the watchdog child, before the reactor runs):
    remembered;
  - handed over (L{QuitSignals.hand_over}, once the reactor runs): passed to
    the receiver (L{lmproxy.shutdown.ShutdownSignals}), the remembered ones
    first, which stops what was started and exits 0.

Standard library only: it is imported before anything slow.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from types import FrameType

SignalHandler = Callable[[int, FrameType | None], None]
"""What C{signal.signal} installs."""

Installer = Callable[[int, "SignalHandler | signal.Handlers"], object]
"""C{signal.signal}: installs a handler, returns the one it replaced."""

QUIT_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""
The signals lmproxy handles: SIGINT and SIGTERM end it, with the same clean
stop; SIGHUP reloads its config once it runs (L{lmproxy.shutdown}), and ends
it like the others before anything started (its default would kill lmproxy
without stopping anything).
"""

_KEPT_IGNORED = (signal.SIGINT, signal.SIGHUP)
"""
Signals that stay ignored when lmproxy starts with them ignored: a shell
without job control starts background jobs with SIGINT ignored, and
C{nohup} starts its command with SIGHUP ignored.
"""


def _write_stderr(text: str) -> None:
    # Unbuffered: a handler may run while the main thread is inside a write to
    # sys.stderr's buffer, which a second buffered write would corrupt.
    try:
        os.write(2, text.encode("utf-8", "replace"))
    except OSError:
        return  # no standard error: exit all the same


class QuitSignals:
    """The handler of SIGINT and SIGTERM, for the whole life of lmproxy."""

    def __init__(
        self,
        install: Installer = signal.signal,
        exit: Callable[[int], object] = os._exit,
        write: Callable[[str], None] = _write_stderr,
    ) -> None:
        """
        @param install: installs a signal handler (C{signal.signal}).
        @param exit: ends the process at once with a status (C{os._exit}:
            no exception that some C{except} could catch, no clean-up to run).
        @param write: writes a line to standard error, safely from a handler.
        """
        self._install_handler = install
        self._exit = exit
        self._write = write
        self._held = False
        self._pending: list[int] = []
        self._receiver: Callable[[int], None] | None = None
        self._ignored: set[int] = set()

    def install(self) -> None:
        """
        Install the handler for every quit signal (again, after someone else
        replaced it: the reactor installs its own SIGTERM handler when it runs).

        A SIGINT or SIGHUP ignored from the start stays ignored (see
        L{_KEPT_IGNORED}), as Python and Twisted leave a SIGINT.
        """
        for signum in QUIT_SIGNALS:
            replaced = self._install_handler(signum, self._received)
            if signum in _KEPT_IGNORED and (signum in self._ignored or replaced == signal.SIG_IGN):
                self._ignored.add(signum)
                self._install_handler(signum, signal.SIG_IGN)

    def hold(self) -> None:
        """Something may be started from now on: remember signals instead of exiting."""
        self._held = True

    def hand_over(self, receiver: Callable[[int], None]) -> None:
        """
        The reactor runs: pass every signal to C{receiver}, those remembered
        so far first.

        @param receiver: called with the signal's number, in the handler (so
            it must only schedule its work).
        """
        self._receiver = receiver
        pending, self._pending = self._pending, []
        for signum in pending:
            receiver(signum)

    def _received(self, signum: int, frame: FrameType | None) -> None:
        if self._receiver is not None:
            self._receiver(signum)
        elif self._held:
            self._pending.append(signum)
        else:
            name = signal.Signals(signum).name
            self._write(f"lmproxy: {name} before anything was started: exiting\n")
            self._exit(0)
