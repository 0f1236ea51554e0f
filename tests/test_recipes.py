"""
Integration tests of the recipes where a model server runs elsewhere and
lmproxy only starts, checks and stops it: C{conf/docker.jsonc} (C{docker run
-d}, a C{curl} healthcheck, C{docker stop}) and C{conf/kubernetes.jsonc}
(C{kubectl scale --replicas=1}, C{kubectl rollout status}, C{kubectl scale
--replicas=0} and C{kubectl wait --for=delete}).

Each test runs the real lmproxy on the very file of C{conf/}, with its ports
(and, for Kubernetes, the Service's host) replaced by ones on 127.0.0.1 that
the OS chose, and the idle time of one service cut to 1 s; every command and
healthcheck is the file's own.  A fake C{docker} and a fake C{kubectl}
(L{tests.test_recipes_fake}), first on C{PATH} so that they shadow any real
one, record their calls and talk to a fake platform daemon that runs demo
model servers outside lmproxy's process tree, as dockerd or the kubelet
would: only the recipe's stop command can end them.

Every wait has a deadline; no test asserts a duration.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

import json5
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from tests import test_recipes_fake as fake
from tests.harness import (
    PROJECT_ROOT,
    Lmproxy,
    ProcessOutput,
    child_env,
    eventually,
    free_ports,
    http,
    pid_alive,
    wait_for,
)

DEADLINE = 30.0  # for any one step: far more than any takes, even on a busy machine

LMPROXY = [sys.executable, "-m", "lmproxy", "-c", "config.json"]
"""The C{lmproxy} command, run without relying on PATH (which holds the fakes)."""

QWEN, MISTRAL = "qwen", "mistral"
MISTRAL_MODEL = "mistralai/Mistral-7B-Instruct-v0.3"
"""The model id under which the recipes serve the service C{mistral}."""


class Platform:
    """
    The fake platform of a test: its daemon, its state directory, and a
    directory of C{docker} and C{kubectl} scripts to put first on C{PATH}.

    @ivar state: where the daemon keeps its socket, the calls and the pids.
    @ivar bin: the directory of the fake commands.
    """

    def __init__(self, test: TestCase) -> None:
        self.test = test
        root = Path(test.mktemp()).resolve()
        self.state = root / "state"
        self.bin = root / "bin"
        self.state.mkdir(parents=True)
        self.bin.mkdir()
        script = Path(fake.__file__).resolve()
        for tool in ("docker", "kubectl"):
            path = self.bin / tool
            path.write_text(
                f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(script))}"
                f' {tool} {shlex.quote(str(self.state))} "$@"\n'
            )
            path.chmod(0o755)
        self._daemon = ProcessOutput()

    def env(self) -> dict[str, str]:
        """lmproxy's environment: this source tree first, the fake commands first on PATH."""
        env = child_env()
        env["PATH"] = os.pathsep.join([str(self.bin), env.get("PATH", os.defpath)])
        return env

    async def start(self) -> None:
        """Start the daemon and wait until it serves."""
        command = [sys.executable, str(Path(fake.__file__).resolve()), "daemon", str(self.state)]
        reactor.spawnProcess(self._daemon, command[0], command, env=child_env())
        self.test.addCleanup(self._stop)
        await wait_for(
            lambda: (self.state / fake.PORT_NAME).exists() or self._daemon.ended.called,
            DEADLINE,
            "the fake platform's daemon to serve",
        )
        self.test.assertFalse(self._daemon.ended.called, self._daemon.data.decode())

    async def _stop(self) -> None:
        # The daemon stops its workloads when told; end any that a crash left.
        if not self._daemon.ended.called:
            os.kill(self._daemon_pid(), signal.SIGTERM)
            await wait_for(lambda: self._daemon.ended.called, DEADLINE, "the daemon to exit")
        for pid in self.pids():
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def _daemon_pid(self) -> int:
        transport = self._daemon.transport
        assert transport is not None and transport.pid is not None
        return int(transport.pid)

    def pids(self) -> list[int]:
        """Every workload the daemon started, in order."""
        path = self.state / fake.PIDS_NAME
        return [int(line) for line in path.read_text().split()] if path.exists() else []

    def live(self) -> list[int]:
        """The workloads alive now."""
        return [pid for pid in self.pids() if pid_alive(pid)]

    def running(self, workload: str) -> bool:
        """Does the daemon say that C{workload} runs?"""
        return bool(fake.ask(self.state, op="running", name=workload)["running"])

    def calls(self) -> list[list[str]]:
        """Every call of a fake command so far: the tool's name, then its arguments."""
        path = self.state / fake.CALLS_NAME
        text = path.read_text() if path.exists() else ""
        return [json.loads(line) for line in text.splitlines()]

    def index(self, call: list[str]) -> int:
        """Where C{call} is first in L{calls}; fails the test if it is not there."""
        calls = self.calls()
        self.test.assertIn(call, calls)
        return calls.index(call)


def recipe(
    name: str, ports: list[int], host: str = "127.0.0.1", idle: dict[str, int] | None = None
) -> dict[str, Any]:
    """
    The config C{conf/NAME}, made to run here: each port it names (the APIs',
    each service's ListenPort and ProxyTargetPort, the latter wherever a
    service's commands name it) becomes the next of C{ports}, each
    ProxyTargetHost becomes C{host}, and the services named in C{idle} get that
    ShutDownAfterInactivitySeconds.  Everything else is the file's.
    """
    config: dict[str, Any] = json5.loads((PROJECT_ROOT / "conf" / name).read_text())
    free = iter(ports)
    for api in ("OpenAiApi", "ManagementApi"):
        config[api]["ListenPort"] = str(next(free))
    for service in config["Services"]:
        if "ListenPort" in service:
            service["ListenPort"] = str(next(free))
        old, new = service["ProxyTargetPort"], str(next(free))
        for key, value in service.items():
            if isinstance(value, str):
                service[key] = re.sub(rf"\b{old}\b", new, value)
        service["ProxyTargetPort"] = new
        service["ProxyTargetHost"] = host
        if idle and service["Name"] in idle:
            service["ShutDownAfterInactivitySeconds"] = idle[service["Name"]]
    return config


class RecipeLmproxy(Lmproxy):
    """A real lmproxy (the C{lmproxy} command, or twistd) whose PATH has the fakes first."""

    def __init__(
        self, test: TestCase, config: dict[str, Any], platform: Platform, twistd: bool = False
    ) -> None:
        super().__init__(test, config, None if twistd else LMPROXY)
        self.platform = platform

    def spawn(self) -> None:
        transport = reactor.spawnProcess(
            self._output, self.argv[0], self.argv, env=self.platform.env(), path=str(self.dir)
        )
        self.pid = transport.pid
        self.test.addCleanup(self._kill)

    def service(self, name: str) -> dict[str, Any]:
        """The service C{name} of the config lmproxy runs."""
        return next(s for s in self.config["Services"] if s["Name"] == name)

    def call(self, name: str, key: str) -> list[str]:
        """The call that the command of C{key} (Command and Args, or KillCommand) makes."""
        service = self.service(name)
        if key == "Command":
            return [service["Command"], *shlex.split(service["Args"])]
        return shlex.split(service[key])

    def url(self, api: str, path: str) -> str:
        return f"http://127.0.0.1:{self.config[api]['ListenPort']}{path}"

    async def status(self, name: str) -> str:
        """The state of service C{name} in C{/status}."""
        code, _, body = await http("GET", self.url("ManagementApi", "/status"), timeout=DEADLINE)
        self.test.assertEqual(code, 200, body)
        services = json.loads(body)["services"]
        return str(next(s for s in services if s["name"] == name)["status"])

    async def chat(self, model: str) -> str:
        """One chat completion through the OpenAI port; the answer's text."""
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})
        code, _, content = await http(
            "POST", self.url("OpenAiApi", "/v1/chat/completions"), body.encode(), DEADLINE
        )
        self.test.assertEqual(code, 200, content)
        return str(json.loads(content)["choices"][0]["message"]["content"])

    async def stopped(self, name: str, workload: str) -> None:
        """Wait until lmproxy says C{name} is stopped and the platform agrees."""

        async def done() -> bool:
            return await self.status(name) == "stopped" and not self.platform.running(workload)

        try:
            await eventually(done, DEADLINE, f"{name} to be stopped")
        except AssertionError as e:
            raise AssertionError(f"{e}; lmproxy's output:\n{self.output}") from None


class DockerRecipeTests(TestCase):
    """C{conf/docker.jsonc}: C{docker run -d}, a C{curl} healthcheck, C{docker stop}."""

    async def _launch(self, twistd: bool = False) -> tuple[Platform, RecipeLmproxy]:
        platform = Platform(self)
        await platform.start()
        # Ports: the OpenAI API, the management API, qwen's ListenPort and
        # target, mistral's target.
        config = recipe("docker.jsonc", free_ports(5), idle={MISTRAL: 1})
        lmproxy = RecipeLmproxy(self, config, platform, twistd)
        await lmproxy.start()
        self.assertEqual(platform.calls(), [])  # listening starts nothing
        return platform, lmproxy

    async def test_start_evict_idle_and_shutdown(self) -> None:
        """
        A request starts its container with the file's C{docker run -d} and is
        answered by it once C{curl} finds it healthy; the service stays running
        after C{docker run -d} exits.  A request for the other model stops the
        first container (C{docker stop}, its VRAM is needed) before it runs
        the second; the idle time stops that one, and the first starts again
        under the same name.  At SIGTERM lmproxy stops the running container,
        exits 0, and no container is left.
        """
        platform, lmproxy = await self._launch()
        run_qwen, stop_qwen = lmproxy.call(QWEN, "Command"), lmproxy.call(QWEN, "KillCommand")
        run_mistral = lmproxy.call(MISTRAL, "Command")
        stop_mistral = lmproxy.call(MISTRAL, "KillCommand")
        self.assertEqual(run_qwen[:2], ["docker", "run"])
        self.assertEqual(stop_qwen[:2], ["docker", "stop"])

        text = await lmproxy.chat("qwen2.5-7b-instruct")
        self.assertEqual(platform.calls(), [run_qwen])
        [qwen] = platform.live()
        self.assertIn(f"pid {qwen}:", text)
        self.assertEqual(await lmproxy.status(QWEN), "running")
        # Its own port too, plain TCP: the container's /v1/models.
        port = lmproxy.service(QWEN)["ListenPort"]
        code, _, body = await http("GET", f"http://127.0.0.1:{port}/v1/models", timeout=DEADLINE)
        self.assertEqual((code, json.loads(body)["data"][0]["id"]), (200, "lmproxy-qwen"))

        text = await lmproxy.chat(MISTRAL_MODEL)
        self.assertLess(platform.index(stop_qwen), platform.index(run_mistral))
        self.assertFalse(pid_alive(qwen))
        self.assertEqual(await lmproxy.status(QWEN), "stopped")
        [mistral] = platform.live()
        self.assertIn(f"pid {mistral}:", text)

        await lmproxy.stopped(MISTRAL, "lmproxy-mistral")
        self.assertEqual(platform.calls()[-1], stop_mistral)
        self.assertEqual(platform.live(), [])

        text = await lmproxy.chat(QWEN)
        self.assertEqual(platform.calls()[-1], run_qwen)
        [again] = platform.live()
        self.assertIn(f"pid {again}:", text)

        self.assertEqual(await lmproxy.stop(), 0)
        self.assertEqual(platform.calls()[-1], stop_qwen)
        self.assertEqual(platform.calls().count(stop_qwen), 2)
        self.assertEqual(platform.live(), [])

    async def test_killed_lmproxy(self) -> None:
        """
        lmproxy killed with SIGKILL (under twistd): its watchdog runs the
        running service's C{docker stop}, so that the container does not
        outlive it.
        """
        platform, lmproxy = await self._launch(twistd=True)
        await lmproxy.chat(QWEN)
        [qwen] = platform.live()
        await lmproxy.stop(signal.SIGKILL)
        await wait_for(lambda: not pid_alive(qwen), DEADLINE, "the watchdog to stop the container")
        self.assertEqual(platform.calls()[-1], lmproxy.call(QWEN, "KillCommand"))
        self.assertFalse(platform.running("lmproxy-qwen"))


class KubernetesRecipeTests(TestCase):
    """
    C{conf/kubernetes.jsonc}: C{kubectl scale --replicas=1}, C{kubectl rollout
    status} as the healthcheck, C{kubectl scale --replicas=0} and C{kubectl
    wait --for=delete}.
    """

    async def test_scale_up_evict_idle_and_shutdown(self) -> None:
        """
        A request scales its Deployment up and is answered once C{rollout
        status} (and the connect that follows) find it ready;
        the service stays running after C{kubectl scale} exits.  A request for
        the other model scales the first down, and waits for its pod to be
        gone, before it scales the second up; the idle time scales that one
        down.  At SIGTERM lmproxy (under twistd) scales the running one down,
        exits 0, and no pod is left.
        """
        platform = Platform(self)
        await platform.start()
        # The Services' address, as lmproxy would reach them: here, 127.0.0.1.
        config = recipe("kubernetes.jsonc", free_ports(5), idle={MISTRAL: 1})
        deployments = {}
        for service in config["Services"]:
            words = shlex.split(service["Args"])
            namespace = words[words.index("--namespace") + 1]
            deployment = next(w for w in words if w.startswith("deployment/"))
            deployments[f"{namespace}/{deployment.split('/')[1]}"] = {
                "port": int(service["ProxyTargetPort"])
            }
        self.assertEqual(sorted(deployments), ["models/mistral", "models/qwen"])
        (platform.state / fake.CLUSTER_NAME).write_text(json.dumps({"deployments": deployments}))
        lmproxy = RecipeLmproxy(self, config, platform, twistd=True)
        await lmproxy.start()
        self.assertEqual(platform.calls(), [])

        scale_up = lmproxy.call(QWEN, "Command")
        rollout = lmproxy.call(QWEN, "HealthcheckCommand")
        self.assertEqual(scale_up[-1], "--replicas=1")
        self.assertEqual(rollout[3:5], ["rollout", "status"])
        # "kubectl ... --replicas=0 && kubectl ... wait ...": two calls.
        kill = lmproxy.service(QWEN)["KillCommand"].split(" && ")
        scale_down, wait = (shlex.split(c) for c in kill)
        self.assertEqual(scale_down[-1], "--replicas=0")
        self.assertEqual(wait[3], "wait")

        text = await lmproxy.chat(QWEN)
        # lmproxy starts the healthcheck with the Command: either may come first.
        calls = platform.calls()
        self.assertEqual(calls.count(scale_up), 1)
        self.assertGreaterEqual(calls.count(rollout), 1)
        self.assertEqual(set(map(tuple, calls)), {tuple(scale_up), tuple(rollout)})
        [qwen] = platform.live()
        self.assertIn(f"pid {qwen}:", text)
        self.assertEqual(await lmproxy.status(QWEN), "running")

        mistral_up = lmproxy.call(MISTRAL, "Command")
        text = await lmproxy.chat(MISTRAL_MODEL)
        self.assertLess(platform.index(scale_down), platform.index(wait))
        self.assertLess(platform.index(wait), platform.index(mistral_up))
        self.assertFalse(pid_alive(qwen))
        [mistral] = platform.live()
        self.assertIn(f"pid {mistral}:", text)

        await lmproxy.stopped(MISTRAL, "models.mistral")
        mistral_kill = [
            shlex.split(c) for c in lmproxy.service(MISTRAL)["KillCommand"].split(" && ")
        ]
        self.assertEqual(platform.calls()[-2:], mistral_kill)
        self.assertEqual(platform.live(), [])

        await lmproxy.chat(QWEN)
        self.assertEqual(platform.calls().count(scale_up), 2)
        self.assertEqual(await lmproxy.stop(), 0)
        self.assertEqual(platform.calls()[-2:], [scale_down, wait])
        self.assertEqual(platform.live(), [])
