"""
Helpers for integration tests: run a real ``twistd -n lmproxy`` on a config
written to a temporary directory, with demo model servers as services, on
ports the OS chose, and wait on conditions with deadlines (never sleeps).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from lmproxy.testing.ports import free_ports as free_ports  # shared with bench/

if TYPE_CHECKING:
    import openai
    from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

PROJECT_ROOT = Path(__file__).resolve().parent.parent

HTML_SINKS = [
    "innerHTML",
    "outerHTML",
    "insertAdjacentHTML",
    "document.write",
    "createContextualFragment",
    "DOMParser",
    "eval(",
    "new Function",
]
"""The ways a page's script can put a string into the page as markup, or run it as code."""
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


def listening_ports(pid: int) -> set[int]:
    """
    The TCP ports on which process ``pid`` listens, read from ``/proc`` (Linux).

    Unlike L{port_open}, this never connects: a connection to a service's
    port is a client, and would start the service.
    """
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return set()
    inodes = set()
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if link.startswith("socket:["):
            inodes.add(link[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            # local_address is HEXIP:HEXPORT; state 0A is LISTEN; field 9 is the inode.
            if fields[3] == "0A" and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def pid_alive(pid: int) -> bool:
    """Is ``pid`` a live process (zombies count as gone)?"""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def child_env() -> dict[str, str]:
    """The environment for lmproxy and its services: this source tree first."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def demo_service(
    name: str, listen_port: int | None, target_port: int, *flags: str, **keys: Any
) -> dict[str, Any]:
    """A service entry that runs the demo model server."""
    service: dict[str, Any] = {
        "Name": name,
        "ProxyTargetHost": "127.0.0.1",
        "ProxyTargetPort": str(target_port),
        "Command": sys.executable,
        "Args": " ".join(
            ["-m", "lmproxy.demo", "--port", str(target_port), "--model", name, *flags]
        ),
    }
    if listen_port is not None:
        service["ListenPort"] = str(listen_port)
    service.update(keys)
    return service


class RawClient(Protocol):
    """A plain TCP client that records what it receives and when it is closed."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.closed: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed.callback(None)

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()


async def raw_connect(port: int) -> RawClient:
    """A L{RawClient} connected to ``port`` on 127.0.0.1."""
    protocol = RawClient()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), protocol)
    return protocol


async def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` every 10 ms until it holds; fail after ``timeout`` seconds."""
    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await deferLater(reactor, 0.01)


async def http(
    method: str, url: str, body: bytes | None = None, timeout: float = 20
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP exchange on a fresh connection: (status, headers, body)."""
    response = await treq.request(method, url, data=body, persistent=False, timeout=timeout)
    content = await response.content()
    headers = {k.decode().lower(): v[0].decode() for k, v in response.headers.getAllRawHeaders()}
    return response.code, headers, content


def openai_client(port: int, timeout: float = 60) -> openai.OpenAI:
    """
    The official ``openai`` client (sync) for an OpenAI port on 127.0.0.1.

    It never retries: a 502 or a 503 from lmproxy must reach the test, not be
    hidden by the client's retries.  Its calls block: make them in a thread
    (``deferToThread``).  ``timeout`` bounds each request, the start of a
    stopped model included.
    """
    import openai

    return openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=timeout
    )


def user_message(text: str) -> list[ChatCompletionMessageParam]:
    """The ``messages`` of a chat completion: one user message."""
    return [{"role": "user", "content": text}]


def stream_chat(
    client: openai.OpenAI, model: str, text: str, **options: Any
) -> list[ChatCompletionChunk]:
    """Every chunk of a streamed chat completion (blocking: call it in a thread)."""
    with client.chat.completions.create(
        model=model, messages=user_message(text), stream=True, **options
    ) as chunks:
        return list(chunks)


def delta_texts(chunks: list[ChatCompletionChunk]) -> list[str]:
    """The non-empty contents of streamed chat chunks, in order."""
    return [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]


P = TypeVar("P", bound=Protocol)


async def connected_pair(test: TestCase, server: type[P]) -> tuple[Protocol, P]:
    """
    A real TCP connection on 127.0.0.1: its client's protocol and its
    server's (a C{server}); both ends are closed when the test ends.
    """
    accepted: Deferred[P] = Deferred()

    class Accepted(server):  # type: ignore[valid-type, misc]
        def connectionMade(self) -> None:
            super().connectionMade()
            accepted.callback(self)

    port = reactor.listenTCP(0, Factory.forProtocol(Accepted), interface="127.0.0.1")
    test.addCleanup(port.stopListening)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
    client = await connectProtocol(endpoint, Protocol())
    accepted_server = await accepted
    test.addCleanup(accepted_server.transport.loseConnection)
    test.addCleanup(client.transport.loseConnection)
    return client, accepted_server


class ProcessOutput(ProcessProtocol):
    """A child process as a test sees it: everything it wrote, its end and its exit code."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.ended: Deferred[int | None] = Deferred()
        self.exit_code: int | None = None

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.data += data

    def processEnded(self, reason: Failure) -> None:
        value = reason.value
        if isinstance(value, ProcessDone | ProcessTerminated):
            self.exit_code = value.exitCode
        self.ended.callback(self.exit_code)


class Lmproxy:
    """A real ``twistd -n lmproxy -c config.json`` in a temporary directory."""

    def __init__(
        self,
        test: TestCase,
        config: dict[str, Any],
        command: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.test = test
        self.env = env or child_env()
        # Without -c, lmproxy must find ./config.json in its working directory.
        self.argv = command or [TWISTD, "--nodaemon", "--pidfile=", "lmproxy", "-c", "config.json"]
        self.config = config
        self.dir = Path(test.mktemp())
        self.dir.mkdir(parents=True)
        self.config_path = self.dir / "config.json"
        self.config_path.write_text(json.dumps(config, indent=2))
        self._output = ProcessOutput()
        self.pid: int | None = None

    @property
    def output(self) -> str:
        return self._output.data.decode("utf-8", "replace")

    def ports(self) -> list[int]:
        ports = [int(s["ListenPort"]) for s in self.config["Services"] if s.get("ListenPort")]
        for api in ("OpenAiApi", "ManagementApi"):
            if self.config.get(api, {}).get("ListenPort"):
                ports.append(int(self.config[api]["ListenPort"]))
        return ports

    def spawn(self) -> None:
        transport = reactor.spawnProcess(
            self._output,
            self.argv[0],
            self.argv,
            env=self.env,
            path=str(self.dir),
        )
        self.pid = transport.pid
        self.test.addCleanup(self._kill)

    async def start(self, timeout: float = 15) -> float:
        """
        Spawn lmproxy and wait until it listens on every port; returns how long
        that took.  Nothing connects, so no service is started.
        """
        began = reactor.seconds()
        self.spawn()
        ports = set(self.ports())
        assert self.pid is not None
        pid = self.pid
        try:
            await wait_for(
                lambda: self.has_exited() or ports <= listening_ports(pid),
                timeout,
                "lmproxy to listen",
            )
            if self.has_exited():
                raise AssertionError("lmproxy exited")
        except AssertionError:
            raise AssertionError(f"lmproxy did not listen; its output:\n{self.output}") from None
        return reactor.seconds() - began

    async def stop(self, signum: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        """Signal lmproxy and wait for it to exit; returns its exit status."""
        if not self._output.ended.called:
            assert self.pid is not None
            os.kill(self.pid, signum)
        return await self.exited(timeout)

    def has_exited(self) -> bool:
        return self._output.ended.called

    async def exited(self, timeout: float = 20) -> int | None:
        await wait_for(lambda: self._output.ended.called, timeout, "lmproxy to exit")
        return self._output.exit_code

    async def _kill(self) -> None:
        if not self._output.ended.called and self.pid is not None:
            os.kill(self.pid, signal.SIGKILL)
            await self._output.ended

    def log_text(self, service: str) -> str:
        path = self.dir / "logs" / f"{service}.log"
        return path.read_text() if path.exists() else ""


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Like L{wait_for} for an asynchronous check."""
    deadline = reactor.seconds() + timeout
    while not await check():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await deferLater(reactor, 0.01)
