"""
Integration test of C{Pinned}, C{StartOnLaunch}, C{ShutDownAfterInactivitySeconds:
-1} and C{Env} together: a real C{twistd -n lmproxy}, demo model servers as real
subprocesses, real sockets on 127.0.0.1.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import TestCase

from tests.harness import (
    Lmproxy,
    demo_service,
    eventually,
    free_ports,
    http,
    port_open,
    raw_connect,
)

JSON = dict[str, Any]


async def status(api: int) -> JSON:
    code, _, body = await http("GET", f"http://127.0.0.1:{api}/status")
    assert code == 200, (code, body)
    document: JSON = json.loads(body)
    return document


def service(document: JSON, name: str) -> JSON:
    [found] = [s for s in document["services"] if s["name"] == name]
    return found


def environ(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        pairs = [entry.split(b"=", 1) for entry in f.read().split(b"\0") if b"=" in entry]
    return {k.decode(): v.decode() for k, v in pairs}


class KeepIntegrationTests(TestCase):
    """A pinned, preloaded, never-idle service stays up and keeps its place."""

    timeout = 60

    async def test_pinned_preloaded_never_idle(self) -> None:
        """
        C{kept} (pinned, StartOnLaunch, -1, with an Env its healthcheck checks)
        is up after launch without a client; C{other}, which needs its VRAM,
        waits, /status says why, and its client is closed after the max wait;
        C{brief} (StartOnLaunch, idle after 1 s) comes and goes while C{kept}
        stays, with the same process.
        """
        lk, tk, lo, to, tb, api = free_ports(6)
        env = {"LMPROXY_TEST_ENV": "hello world", "CUDA_VISIBLE_DEVICES": "1"}
        config = {
            "ResourcesAvailable": {"VRAM": 10},
            "ManagementApi": {"ListenPort": str(api)},
            "ShutDownAfterInactivitySeconds": 1,
            "MaxTimeToWaitForServiceToCloseConnectionBeforeGivingUpSeconds": 2,
            "Services": [
                demo_service(
                    "kept",
                    lk,
                    tk,
                    ResourceRequirements={"VRAM": 6},
                    Pinned=True,
                    StartOnLaunch=True,
                    ShutDownAfterInactivitySeconds=-1,
                    Env=env,
                    # Passes only with the Env: the start would time out otherwise.
                    HealthcheckCommand='test "$LMPROXY_TEST_ENV" = "hello world"',
                    StartupTimeoutMilliseconds=20000,
                ),
                demo_service("other", lo, to, ResourceRequirements={"VRAM": 6}),
                demo_service("brief", None, tb, StartOnLaunch=True, OpenAiApi=True),
            ],
        }
        lmproxy = Lmproxy(self, config)
        await lmproxy.start()

        # Up without a client.
        last: JSON = {}

        async def shows(name: str, **fields: Any) -> bool:
            last.update(service(await status(api), name))
            return all(last[k] == v for k, v in fields.items())

        await eventually(lambda: shows("kept", status="running"), 30, "kept to run after launch")
        kept = dict(last)
        self.assertTrue(kept["pinned"])
        self.assertEqual(kept["proxied_connections"] + kept["waiting_connections"], 0)
        self.assertTrue(port_open(tk))
        pid = kept["pid"]
        self.assertEqual({k: environ(pid)[k] for k in env}, env)

        # A client of other waits: kept is pinned, never evicted for it.
        client = await raw_connect(lo)
        await eventually(
            lambda: shows("other", status="waiting_for_resources"), 10, "other to wait"
        )
        self.assertFalse(last["pinned"])
        waiting = last["waiting_for"]
        self.assertEqual(
            [
                {k: r[k] for k in ("resource", "needed", "available", "held_by", "pinned")}
                for r in waiting["resources"]
            ],
            [
                {
                    "resource": "VRAM",
                    "needed": 6,
                    "available": 4,
                    "held_by": ["kept"],
                    "pinned": ["kept"],
                }
            ],
        )
        self.assertEqual(waiting["behind"], [])
        # Closed after the max wait; kept never moved.
        await client.closed
        self.assertEqual(bytes(client.received), b"")
        await eventually(lambda: shows("other", status="stopped"), 10, "other to give up")
        self.assertIsNone(last["waiting_for"])

        # brief started on launch too, and its 1 s idle timeout stopped it; kept
        # (-1) is still up, the same process.
        await eventually(
            lambda: shows("brief", starts=1, status="stopped"), 30, "brief to come and go"
        )
        self.assertEqual(last["failed_starts"], 0)
        await shows("kept")
        self.assertEqual(
            (last["status"], last["pid"], last["evictions"], last["starts"]),
            ("running", pid, 0, 1),
        )
        self.assertIn("kept: starting it (StartOnLaunch)", lmproxy.output)
        self.assertEqual(await lmproxy.stop(), 0)
        self.assertFalse(port_open(tk))
