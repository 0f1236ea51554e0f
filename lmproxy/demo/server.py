"""
The demo server's life: spawn the C{--spawn-grandchild} process, listen after
C{--startup-delay}, say so in the listening line, exit on schedule with
C{--exit-after}; and the L{DemoSite} that logs one line per request.

The listening line, C{demo model server "MODEL" listening on
http://HOST:PORT pid=PID at=TIME}, is read by lmproxy's tests and benchmarks
(C{--port 0}: the port is only known from it; C{TIME}: when listening began,
in POSIX seconds); keep it as it is.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IListeningPort,
    IReactorCore,
    IReactorProcess,
    IReactorTCP,
    IReactorTime,
)
from twisted.internet.protocol import ProcessProtocol, ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.server import Site

from lmproxy.demo.api import DemoAPI
from lmproxy.demo.options import DemoOptions
from lmproxy.logs import log_observer

_log = Logger(observer=log_observer)


class IDemoReactor(IReactorCore, IReactorTime, IReactorTCP, IReactorProcess):
    """
    The reactor features that L{DemoServer} uses (the real reactor provides them all).
    """


class DemoSite(Site):
    """
    A C{twisted.web} site that logs each finished request as one line, like
    an access log: C{HOST "METHOD URI PROTOCOL" CODE LENGTH}.
    """

    noisy = False  # no "Starting factory" events: the demo's output is its own lines

    def log(self, request: http.Request) -> None:
        """
        Log the finished C{request} (twisted.web calls this instead of writing
        to an access log file).
        """
        _log.info(
            '{host} "{method} {uri} {protocol}" {code} {length}',
            host=getattr(request.getClientAddress(), "host", "-"),
            method=request.method.decode("ascii", "replace"),
            uri=request.uri.decode("utf-8", "replace"),
            protocol=request.clientproto.decode("ascii", "replace"),
            code=request.code,
            length=request.sentLength,
        )


class _Grandchild(ProcessProtocol):
    """
    The C{--spawn-grandchild} process: reaped (no zombie) and reported when it ends.
    """

    def processEnded(self, reason: Failure) -> None:
        _log.info("grandchild ended: {why}", why=reason.getErrorMessage())


def _sleeper_argv() -> list[str]:
    """
    A command that sleeps forever: C{sleep}, or Python where there is none.
    """
    sleep = shutil.which("sleep")
    if sleep:
        return [sleep, "100000"]
    return [sys.executable, "-c", "import time\nwhile True: time.sleep(3600)"]


class DemoServer:
    """
    The demo server process: listens after C{startup_delay}, logs the
    listening line, and exits on schedule with C{exit_after}.  Read
    L{exit_code} after the reactor stops.

    @param reactor: listens, spawns, schedules and stops.
    @param options: the command line.
    @param pid: this process's pid (for the lines and the answers); default:
        C{os.getpid()}.
    @ivar exit_code: the status for the process to exit with.
    @ivar port: the listening port, once listening.
    @ivar api: the HTTP API.
    @ivar site: the HTTP factory that serves C{api}.
    """

    def __init__(self, reactor: IDemoReactor, options: DemoOptions, pid: int | None = None) -> None:
        self._reactor = reactor
        self._options = options
        self.pid = os.getpid() if pid is None else pid
        self.exit_code = 0
        self.port: IListeningPort | None = None
        self.api = DemoAPI(
            reactor,
            model=options.model,
            pid=self.pid,
            token_delay=options.token_delay,
            crash_mid_stream=options.crash_mid_stream,
            fail_health=options.fail_health,
        )
        self.site = DemoSite(self.api, reactor=reactor)

    def start(self) -> None:
        """
        Spawn the grandchild if asked, then listen once the startup delay is over.
        """
        if self._options.spawn_grandchild is not None:
            self._spawn_grandchild(self._options.spawn_grandchild)
        self._reactor.addSystemEventTrigger("before", "shutdown", self._stopping)
        self._reactor.callLater(self._options.startup_delay, self._listen)

    def _listen(self) -> None:
        options = self._options
        try:
            self.port = self._reactor.listenTCP(
                options.port, cast(ServerFactory, self.site), interface=options.host
            )
        except CannotListenError as e:
            _log.error("demo model server cannot listen: {error}", error=e)
            self._stop(1)
            return
        address = cast(IPv4Address | IPv6Address, self.port.getHost())
        host = f"[{options.host}]" if ":" in options.host else options.host  # a URL's IPv6
        _log.info(
            'demo model server "{model}" listening on http://{host}:{port} pid={pid} at={at:.6f}',
            model=options.model,
            host=host,
            port=address.port,
            pid=self.pid,
            at=self._reactor.seconds(),
        )
        if options.exit_after is not None:
            self._reactor.callLater(options.exit_after, self._exit_after)

    def _exit_after(self) -> None:
        _log.info(
            "exiting on schedule (--exit-after {seconds}), status {status}",
            seconds=self._options.exit_after,
            status=self._options.exit_code,
        )
        self._stop(self._options.exit_code)

    def _stop(self, code: int) -> None:
        self.exit_code = code
        self._reactor.stop()

    def _stopping(self) -> None:
        _log.info("demo model server pid={pid} stopping", pid=self.pid)

    def _spawn_grandchild(self, pidfile: str) -> None:
        argv = _sleeper_argv()
        # Same process group, same stdout/stderr: like a launcher script's real server.
        transport = self._reactor.spawnProcess(
            _Grandchild(),
            argv[0],
            argv,
            env=dict(os.environ),
            childFDs={0: 0, 1: 1, 2: 2},
        )
        pid = cast(int, transport.pid)
        # Written aside and renamed, so that a reader never sees a partial pid.
        temporary = f"{pidfile}.{self.pid}.tmp"
        with open(temporary, "w") as f:
            f.write(f"{pid}\n")
        os.replace(temporary, pidfile)
        _log.info(
            "spawned grandchild pid={pid} (pid written to {pidfile})", pid=pid, pidfile=pidfile
        )
