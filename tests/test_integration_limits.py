"""
Integration tests of lmproxy's limits, on a real ``twistd -n lmproxy`` and
real sockets: slow clients (slowloris) beside ``/status``, a declared 100 MB
body, and running out of file descriptors under a low hard limit.  No
timing assertions: each test waits on conditions with deadlines.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from lmproxy.listen.timeouts import HEADERS_SECONDS
from tests.harness import TWISTD, Lmproxy, RawClient, free_ports, http, raw_connect, wait_for

SLOW_CLIENTS = 200
STATUS = b"GET /status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
FD_LIMIT = 64
"""lmproxy's hard (so also soft) limit in the file-descriptor test: a few dozen spare."""

# Runs a command with RLIMIT_NOFILE set, soft and hard: raising the soft
# limit to the hard one at start cannot lift it.
_LIMITED = (
    "import os, resource, sys; "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[1]))); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)


def _config(management: int, openai: int) -> dict[str, object]:
    return {
        "Services": [],
        "ManagementApi": {"ListenPort": str(management)},
        "OpenAiApi": {"ListenPort": str(openai)},
    }


def _open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class SlowClientTests(TestCase):
    """Slow clients hold only their own connection, and not for long."""

    timeout = 120

    async def start(self) -> None:
        self.management, self.openai = free_ports(2)
        self.lmproxy = Lmproxy(self, _config(self.management, self.openai))
        await self.lmproxy.start()

    async def test_slowloris_beside_status(self) -> None:
        """
        200 clients that send half their headers, on both ports: /status
        answers meanwhile, and each of them gets a 408 and is closed.
        """
        await self.start()
        clients: list[RawClient] = []
        for index in range(SLOW_CLIENTS):
            port = self.management if index % 2 else self.openai
            client = await raw_connect(port)
            client.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
            clients.append(client)
            self.addCleanup(lambda c=client: c.closed if c.closed.called else c.close())
        status, _, body = await http("GET", f"http://127.0.0.1:{self.management}/status")
        self.assertEqual(status, 200, body)
        await wait_for(
            lambda: all(c.closed.called for c in clients),
            HEADERS_SECONDS + 30,
            "lmproxy to close the slow clients",
        )
        answers = {bytes(c.received).split(b"\r\n", 1)[0] for c in clients}
        self.assertEqual(answers, {b"HTTP/1.1 408 Request Timeout"})
        status, _, _ = await http("GET", f"http://127.0.0.1:{self.management}/status")
        self.assertEqual(status, 200)

    async def test_declared_100_mb_body_refused_unread(self) -> None:
        """413 as soon as the headers are in, on both ports: the body is never waited for."""
        await self.start()
        for port, path in (
            (self.openai, b"/v1/chat/completions"),
            (self.management, b"/services/x/stop"),
        ):
            client = await raw_connect(port)
            client.send(
                b"POST %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % (path, 100 * 1024 * 1024)
            )
            await wait_for(lambda c=client: c.closed.called, 20, "the 413 and the close")
            self.assertTrue(bytes(client.received).startswith(b"HTTP/1.1 413 "), client.received)


class DescriptorShortageTests(TestCase):
    """Out of file descriptors: what is open keeps working, the rest waits, the log stays short."""

    timeout = 120

    async def test_out_of_descriptors(self) -> None:
        management, openai = free_ports(2)
        argv = [sys.executable, "-c", _LIMITED, str(FD_LIMIT), TWISTD]
        argv += ["--nodaemon", "--pidfile=", "lmproxy", "-c", "config.json"]
        lmproxy = Lmproxy(self, _config(management, openai), command=argv)
        await lmproxy.start()
        assert lmproxy.pid is not None
        pid = lmproxy.pid
        [limits] = [
            line.split()[3:5]
            for line in Path(f"/proc/{pid}/limits").read_text().splitlines()
            if line.startswith("Max open files")
        ]
        self.assertEqual(limits, [str(FD_LIMIT)] * 2)  # soft, hard
        clients = [await raw_connect(management) for _ in range(2 * FD_LIMIT)]
        for client in clients:
            self.addCleanup(lambda c=client: c.closed if c.closed.called else c.close())
        await wait_for(
            lambda: _open_descriptors(pid) == FD_LIMIT, 20, "lmproxy to run out of descriptors"
        )
        shortage_began = reactor.seconds()
        # Every client asks for /status: those accepted are answered and
        # closed, which frees descriptors for those still waiting in the queue.
        for client in clients:
            client.send(STATUS)
        await wait_for(
            lambda: all(c.closed.called for c in clients), 60, "every client to be answered"
        )
        for client in clients:
            self.assertTrue(bytes(client.received).startswith(b"HTTP/1.1 200 "), client.received)
        # Logged, at most a line a second, not a line a client.
        output = lmproxy.output
        lines = len(re.findall("Cannot accept new connections", output))
        self.assertTrue(1 <= lines <= 2 + reactor.seconds() - shortage_began, output)
        self.assertNotIn("EMFILE recovery", output)
        self.assertNotIn("Traceback", output)
        status, _, _ = await http("GET", f"http://127.0.0.1:{management}/status")
        self.assertEqual(status, 200)
