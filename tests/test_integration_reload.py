"""
Integration tests of hot reload: a real C{twistd -n lmproxy}, demo model
servers as real subprocesses, live client connections on real sockets,
reloaded by SIGHUP, C{POST /reload} and C{--watch-config}.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

from twisted.trial.unittest import TestCase

from tests.harness import (
    TWISTD,
    Lmproxy,
    RawClient,
    demo_service,
    eventually,
    free_ports,
    http,
    port_open,
    raw_connect,
    wait_for,
)
from tests.test_integration_keep import status

JSON = dict[str, Any]


def services(document: JSON) -> dict[str, JSON]:
    return {s["name"]: s for s in document["services"]}


async def pid_on(client: RawClient) -> int:
    """Ask for /health on a kept-alive connection; the pid of the demo server that answers."""
    client.received.clear()
    client.send(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
    await wait_for(lambda: b"\r\n\r\n" in client.received, 20, "an answer on the connection")
    head = bytes(client.received).split(b"\r\n\r\n")[0].decode()
    [pid] = [line.split(":")[1] for line in head.split("\r\n") if line.lower().startswith("x-demo")]
    return int(pid)


class ReloadIntegrationTests(TestCase):
    """A changed config applied while clients are connected."""

    timeout = 120

    async def test_sighup_keeps_restarts_adds_removes(self) -> None:
        """
        SIGHUP with: C{same} unchanged (its kept-alive client goes on with the
        same process), C{changed} (new args, idle: restarted), C{gone}
        (removed while a client uses it: serves that client to the end, then
        stops, and its port closes), C{new} added (its port opens).  Then a
        config with a mistake is refused by C{POST /reload} with its path,
        and everything stays.
        """
        ls, ts, lc, tc, lg, tg, ln, tn, api = free_ports(9)
        config: JSON = {
            "ManagementApi": {"ListenPort": str(api)},
            "Services": [
                demo_service("same", ls, ts),
                demo_service("changed", lc, tc),
                demo_service("gone", lg, tg),
            ],
        }
        lmproxy = Lmproxy(self, config)
        await lmproxy.start()
        same = await raw_connect(ls)
        same_pid = await pid_on(same)
        gone = await raw_connect(lg)
        gone_pid = await pid_on(gone)
        _, headers, _ = await http("GET", f"http://127.0.0.1:{lc}/health")
        changed_pid = int(headers["x-demo-pid"])

        async def changed_idle() -> bool:  # its client's close has reached lmproxy
            return services(await status(api))["changed"]["proxied_connections"] == 0

        await eventually(changed_idle, 20, "the changed service to be idle")

        config["Services"] = [
            demo_service("same", ls, ts),
            demo_service("changed", lc, tc, "--model", "changed-v2"),
            demo_service("new", ln, tn),
        ]
        lmproxy.config_path.write_text(json.dumps(config))
        assert lmproxy.pid is not None
        os.kill(lmproxy.pid, signal.SIGHUP)
        await wait_for(lambda: "config reloaded" in lmproxy.output, 20, "the reload")
        self.assertIn("changed restarted", lmproxy.output)
        await wait_for(lambda: port_open(ln), 20, "the new service's port")

        async def changed_restarted() -> bool:
            s = services(await status(api))
            return s["changed"]["status"] == "running" and s["changed"]["pid"] != changed_pid

        await eventually(changed_restarted, 30, "the changed service to run again")
        self.assertEqual(await pid_on(same), same_pid)
        document = services(await status(api))
        self.assertEqual(document["gone"]["pending_reload"], "removal")
        self.assertEqual(await pid_on(gone), gone_pid)  # its client is still served
        gone.close()

        async def gone_is_gone() -> bool:
            return "gone" not in services(await status(api))

        await eventually(gone_is_gone, 30, "the removed service to go")
        await wait_for(lambda: not port_open(lg), 20, "the removed service's port to close")
        _, headers, _ = await http("GET", f"http://127.0.0.1:{ln}/health")
        self.assertIn("x-demo-pid", headers)

        config["Services"][0]["ProxyTargetPort"] = "not a port"
        lmproxy.config_path.write_text(json.dumps(config))
        code, _, body = await http("POST", f"http://127.0.0.1:{api}/reload")
        self.assertEqual(code, 400, body)
        problems = json.loads(body)["problems"]
        self.assertTrue(any(p.startswith('Services[0] ("same").ProxyTargetPort') for p in problems))
        self.assertEqual(await pid_on(same), same_pid)
        self.assertEqual(await lmproxy.stop(), 0)

    async def test_busy_service_restarts_when_its_client_is_done(self) -> None:
        """
        C{--watch-config}: a change of a busy service's args waits for its
        client; a new client waits for the new run; C{?force=1} restarts at
        once.
        """
        la, ta, api = free_ports(3)
        config: JSON = {
            "ManagementApi": {"ListenPort": str(api)},
            "Services": [demo_service("a", la, ta)],
        }
        argv = [TWISTD, "--nodaemon", "--pidfile=", "lmproxy", "-c", "config.json"]
        lmproxy = Lmproxy(self, config, command=[*argv, "--watch-config"])
        await lmproxy.start()
        busy = await raw_connect(la)
        old_pid = await pid_on(busy)
        config["Services"] = [demo_service("a", la, ta, "--model", "a-v2")]
        lmproxy.config_path.write_text(json.dumps(config))
        await wait_for(lambda: "config reloaded" in lmproxy.output, 20, "the reload")
        self.assertIn("a restart once idle", lmproxy.output)
        self.assertEqual(services(await status(api))["a"]["pending_reload"], "restart")
        self.assertEqual(await pid_on(busy), old_pid)
        waiting = await raw_connect(la)
        waiting.send(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")

        async def one_waits() -> bool:
            return services(await status(api))["a"]["waiting_connections"] == 1

        await eventually(one_waits, 20, "the new client to wait")
        self.assertEqual(bytes(waiting.received), b"")
        busy.close()
        await wait_for(lambda: b"\r\n\r\n" in waiting.received, 30, "the new run to answer")
        new_pid = await pid_on(waiting)
        self.assertNotEqual(new_pid, old_pid)

        config["Services"] = [demo_service("a", la, ta, "--model", "a-v3")]
        lmproxy.config_path.write_text(json.dumps(config))
        code, _, body = await http("POST", f"http://127.0.0.1:{api}/reload?force=1")
        self.assertEqual(code, 200, body)
        self.assertEqual(json.loads(body)["restarted"], ["a"])
        await waiting.closed  # cut: its run was restarted at once
        self.assertEqual(await lmproxy.stop(), 0)
