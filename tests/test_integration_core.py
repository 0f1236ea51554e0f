"""
Integration tests of the core: a real ``twistd -n lmproxy``, demo model
servers as real subprocesses, real sockets on 127.0.0.1 (ports the OS chose).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from tests.harness import (
    Lmproxy,
    demo_service,
    eventually,
    free_ports,
    http,
    listening_ports,
    pid_alive,
    port_open,
    raw_connect,
    wait_for,
)


class CoreIntegrationTests(TestCase):
    """lmproxy's main job, end to end."""

    timeout = 60

    async def test_starts_on_first_connection_and_logs(self) -> None:
        """A service starts when its port is used; its output lands in its log file."""
        listen, target = free_ports(2)
        lmproxy = Lmproxy(self, {"Services": [demo_service("alpha", listen, target)]})
        await lmproxy.start()
        self.assertFalse(port_open(target), "nothing runs before a client comes")
        status, headers, body = await http("GET", f"http://127.0.0.1:{listen}/health")
        self.assertEqual((status, body), (200, b'{"status":"ok"}'))
        pid = int(headers["x-demo-pid"])
        self.assertTrue(pid_alive(pid))
        self.assertIn('demo model server "alpha" listening', lmproxy.log_text("alpha"))
        self.assertIn("[alpha/stdout] demo model server", lmproxy.output)
        self.assertNotIn("alpha: client", lmproxy.output, "per-connection lines are debug-only")
        self.assertEqual(await lmproxy.stop(), 0)
        self.assertFalse(pid_alive(pid))
        self.assertFalse(port_open(listen))

    async def test_listens_while_start_up_work_is_blocked(self) -> None:
        """
        Every port listens, the HTTP APIs' included, while the CheckCommand
        that lmproxy runs at start-up is still blocked: no listener waits for
        slow start-up work.  (How long launch-to-listen takes is a figure for
        bench/, not a test.)
        """
        await self.listens_while_start_up_work_is_blocked(None)

    async def test_command_listens_while_start_up_work_is_blocked(self) -> None:
        """The same with the C{lmproxy} command, which opens its ports before Twisted loads."""
        await self.listens_while_start_up_work_is_blocked([sys.executable, "-m", "lmproxy"])

    async def listens_while_start_up_work_is_blocked(self, command: list[str] | None) -> None:
        la, ta, lb, tb, api, management = free_ports(6)
        gate = Path(self.mktemp()).resolve()
        gate.mkdir()
        started, release = gate / "started", gate / "release"
        # Blocks until the test creates the release file; gives up after 60 s so
        # that it never outlives a failed test.
        check = (
            f"touch {shlex.quote(str(started))}; i=0; "
            f"while [ ! -e {shlex.quote(str(release))} ] && [ $i -lt 1200 ]; "
            "do sleep 0.05; i=$((i+1)); done; echo 100"
        )
        lmproxy = Lmproxy(
            self,
            {
                "OpenAiApi": {"ListenPort": api},
                "ManagementApi": {"ListenPort": management},
                "ResourcesAvailable": {"VRAM": {"CheckCommand": check}},
                "Services": [
                    demo_service("a", la, ta, OpenAiApi=True, ResourceRequirements={"VRAM": 1}),
                    demo_service("b", lb, tb),
                ],
            },
            command,
        )
        await lmproxy.start()
        await wait_for(started.exists, 15, "the CheckCommand to run")
        assert lmproxy.pid is not None
        # The check is running and cannot end before the release file exists.
        self.assertLessEqual({la, lb, api, management}, listening_ports(lmproxy.pid))
        release.touch()

        async def measured() -> bool:
            _, _, body = await http("GET", f"http://127.0.0.1:{management}/status")
            return json.loads(body)["resources"]["VRAM"]["measured"] == 100

        await eventually(measured, 15, "the CheckCommand's value")
        self.assertEqual(await lmproxy.stop(), 0)

    async def test_eviction_of_the_least_recently_used(self) -> None:
        """Two services that don't fit together: using one stops the other."""
        la, ta, lb, tb = free_ports(4)
        lmproxy = Lmproxy(
            self,
            {
                "ResourcesAvailable": {"RAM": 10},
                "Services": [
                    demo_service("a", la, ta, ResourceRequirements={"RAM": 6}),
                    demo_service("b", lb, tb, ResourceRequirements={"RAM": 6}),
                ],
            },
        )
        await lmproxy.start()
        _, headers, _ = await http("GET", f"http://127.0.0.1:{la}/health")
        pid_a = int(headers["x-demo-pid"])
        _, headers, _ = await http("GET", f"http://127.0.0.1:{lb}/health")
        pid_b = int(headers["x-demo-pid"])
        await wait_for(lambda: not pid_alive(pid_a), 10, "a to be evicted")
        self.assertTrue(pid_alive(pid_b))
        _, headers, _ = await http("GET", f"http://127.0.0.1:{la}/health")
        self.assertNotEqual(int(headers["x-demo-pid"]), pid_a)
        await wait_for(lambda: not pid_alive(pid_b), 10, "b to be evicted")
        self.assertEqual(await lmproxy.stop(), 0)

    async def test_waits_while_the_other_service_is_in_use(self) -> None:
        """A busy service is never evicted; the newcomer is served once it is free."""
        la, ta, lb, tb = free_ports(4)
        lmproxy = Lmproxy(
            self,
            {
                "ResourcesAvailable": {"GPU": 1},
                "Services": [
                    demo_service("a", la, ta, ResourceRequirements={"GPU": 1}),
                    demo_service("b", lb, tb, ResourceRequirements={"GPU": 1}),
                ],
            },
        )
        await lmproxy.start()
        busy = await raw_connect(la)
        busy.transport.write(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n")  # type: ignore[union-attr]
        await wait_for(lambda: b"200 OK" in busy.received, 10, "a to answer")
        waiting = Deferred.fromCoroutine(http("GET", f"http://127.0.0.1:{lb}/health"))
        answered: list[bytes] = []
        waiting.addCallback(lambda r: answered.append(r[2]))
        await wait_for(lambda: "b: waiting for resources" in lmproxy.output, 10, "b to wait")
        self.assertEqual(answered, [], "b must wait while a is in use")
        self.assertNotIn("[b/stdout]", lmproxy.output)
        busy.transport.loseConnection()  # type: ignore[union-attr]
        await waiting
        self.assertEqual(answered, [b'{"status":"ok"}'])
        self.assertEqual(await lmproxy.stop(), 0)

    async def test_idle_service_is_stopped(self) -> None:
        listen, target = free_ports(2)
        lmproxy = Lmproxy(
            self,
            {
                "LogLevel": "Debug",
                "Services": [
                    demo_service("idle", listen, target, ShutDownAfterInactivitySeconds=0.5)
                ],
            },
        )
        await lmproxy.start()
        _, headers, _ = await http("GET", f"http://127.0.0.1:{listen}/health")
        pid = int(headers["x-demo-pid"])
        await wait_for(lambda: not pid_alive(pid), 10, "the idle service to stop")
        self.assertIn("idle: stopping (idle for 0.5 s)", lmproxy.output)
        self.assertRegex(lmproxy.output, r"idle: client 127\.0\.0\.1:\d+ connected")
        self.assertEqual(await lmproxy.stop(), 0)

    async def test_shutdown_leaves_no_grandchild(self) -> None:
        """SIGINT stops services with their whole process group, then exits 0."""
        await self.stops_everything_on(signal.SIGINT)

    async def test_sigterm_stops_cleanly(self) -> None:
        """SIGTERM (what systemd and kill send) stops everything: no process left."""
        await self.stops_everything_on(signal.SIGTERM)

    async def stops_everything_on(self, signum: int) -> None:
        """Run a service with a grandchild; C{signum} stops it all, and lmproxy exits 0."""
        listen, target = free_ports(2)
        pidfile = Path(self.mktemp()).resolve()
        lmproxy = Lmproxy(
            self,
            {"Services": [demo_service("g", listen, target, "--spawn-grandchild", str(pidfile))]},
        )
        await lmproxy.start()
        _, headers, _ = await http("GET", f"http://127.0.0.1:{listen}/health")
        pid = int(headers["x-demo-pid"])
        await wait_for(pidfile.exists, 10, "the grandchild's pid file")
        grandchild = int(pidfile.read_text())
        self.assertTrue(pid_alive(grandchild))
        self.assertEqual(await lmproxy.stop(signum), 0)
        self.assertFalse(pid_alive(pid))
        await wait_for(lambda: not pid_alive(grandchild), 5, "the grandchild to be gone")
        self.assertFalse(port_open(listen))

    async def test_bad_config_is_reported_without_traceback(self) -> None:
        listen, target = free_ports(2)
        config = {
            "ResourcesAvailable": {"RAM": 4},
            "Services": [
                demo_service("ok", listen, target, ResourceRequirements={"VRAM": 1}),
                {"Name": "bad", "ListenPort": "70000", "Command": "x", "ProxyTargetPort": 1},
            ],
        }
        lmproxy = Lmproxy(self, config)
        lmproxy.spawn()
        self.assertEqual(await lmproxy.exited(), 1)
        self.assertIn(
            'Services[0] ("ok").ResourceRequirements: resource "VRAM" is not in ResourcesAvailable',
            lmproxy.output,
        )
        self.assertIn('Services[1] ("bad").ListenPort', lmproxy.output)
        self.assertNotIn("Traceback", lmproxy.output)

    async def test_console_script_uses_config_json_by_default(self) -> None:
        """``python -m lmproxy`` (the console script's code) without -c reads ./config.json."""
        listen, target = free_ports(2)
        lmproxy = Lmproxy(
            self,
            {"Services": [demo_service("d", listen, target)]},
            [sys.executable, "-m", "lmproxy"],
        )
        await lmproxy.start()
        status, _, _ = await http("GET", f"http://127.0.0.1:{listen}/health")
        self.assertEqual(status, 200)
        self.assertEqual(await lmproxy.stop(), 0)

    async def test_second_signal_kills_at_once(self) -> None:
        """A service that ignores SIGTERM is SIGKILLed on a second signal, at once."""
        listen, target = free_ports(2)
        stubborn = {
            "Name": "stubborn",
            "ListenPort": listen,
            "ProxyTargetHost": "127.0.0.1",
            "ProxyTargetPort": target,
            "Command": "/bin/sh",
            # http.server keeps the ignored SIGTERM disposition it inherits.
            "Args": f"-c \"trap '' TERM; exec {sys.executable} -m http.server "
            f'-b 127.0.0.1 {target}"',
        }
        lmproxy = Lmproxy(self, {"Services": [stubborn]})
        await lmproxy.start()
        status, _, _ = await http("GET", f"http://127.0.0.1:{listen}/")
        self.assertEqual(status, 200)
        assert lmproxy.pid is not None
        os.kill(lmproxy.pid, signal.SIGTERM)
        await wait_for(lambda: "stopping every service" in lmproxy.output, 10, "shutdown")
        self.assertFalse(lmproxy.has_exited())
        began = reactor.seconds()
        self.assertEqual(await lmproxy.stop(signal.SIGTERM, timeout=5), 0)
        self.assertLess(reactor.seconds() - began, 5)
        self.assertIn("again: killing every service now", lmproxy.output)
        self.assertFalse(port_open(target))
        self.assertNotIn("Traceback", lmproxy.output)

    async def test_no_service_outlives_a_killed_lmproxy(self) -> None:
        """Even after SIGKILL to lmproxy, its services and their children go away."""
        listen, target = free_ports(2)
        pidfile = Path(self.mktemp()).resolve()
        lmproxy = Lmproxy(
            self,
            {"Services": [demo_service("k", listen, target, "--spawn-grandchild", str(pidfile))]},
        )
        await lmproxy.start()
        _, headers, _ = await http("GET", f"http://127.0.0.1:{listen}/health")
        pid = int(headers["x-demo-pid"])
        await wait_for(pidfile.exists, 10, "the grandchild's pid file")
        grandchild = int(pidfile.read_text())
        await lmproxy.stop(signal.SIGKILL)
        await wait_for(lambda: not pid_alive(pid), 10, "the service to be gone")
        await wait_for(lambda: not pid_alive(grandchild), 10, "the grandchild to be gone")
