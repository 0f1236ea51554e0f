"""
A fake container platform for the recipe tests (L{tests.test_recipes}): no
tests here, only the program behind the fake C{docker} and C{kubectl}.

Real containers and pods are not lmproxy's children: they run under a
daemon (dockerd and containerd, the kubelet) that lmproxy's process groups,
marks and watchdog never reach, so only C{docker stop} or C{kubectl scale
--replicas=0} ends them.  This fake keeps that property.  The test starts
one I{platform daemon}::

    python test_recipes_fake.py daemon STATE_DIR

which serves on a port of 127.0.0.1 that it writes to C{STATE_DIR} and runs each "container" (a demo
model server, C{python -m lmproxy.demo}) as its own child, in a session of
its own, without lmproxy's mark in its environment.  The fake clients::

    python test_recipes_fake.py docker STATE_DIR ARGS...
    python test_recipes_fake.py kubectl STATE_DIR ARGS...

(the test puts a C{docker} and a C{kubectl} script that run these first on
C{PATH}) append their command line to C{STATE_DIR/calls.jsonl}, parse it as
their real namesakes would the subset used by C{conf/docker.jsonc} and
C{conf/kubernetes.jsonc}, ask the daemon, print what the real tool prints and
exit with its status.  C{kubectl} finds its deployments (name to port and
model) in C{STATE_DIR/cluster.json}, written by the test.

Every pid the daemon starts is appended to C{STATE_DIR/pids}, so that the
test can end them even if the daemon itself died.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

PORT_NAME = "daemon.port"
"""The daemon's port on 127.0.0.1 (the OS chose it), in the state directory."""

CALLS_NAME = "calls.jsonl"
"""The clients' calls, one JSON list of words a line (the tool's name first)."""

PIDS_NAME = "pids"
"""Every pid the daemon started, one a line."""

CLUSTER_NAME = "cluster.json"
"""C{{"deployments": {"NAMESPACE/NAME": {"port": PORT, "model": MODEL}}}}."""

STARTUP_DELAY = "0.5"
"""How long a demo server "loads its model" before it listens: readiness must be waited for."""

STOP_GRACE = 10.0
"""Seconds from SIGTERM to SIGKILL, as C{docker stop} and a pod's default grace period."""


# -- the daemon ---------------------------------------------------------------


class Platform:
    """
    The daemon's state: the running workloads, by name.

    @ivar state: the state directory.
    @ivar workloads: name to the process of each running workload.
    """

    def __init__(self, state: Path) -> None:
        self.state = state
        self.workloads: dict[str, subprocess.Popen[bytes]] = {}
        self.lock = threading.Lock()

    def start(self, name: str, port: int, model: str) -> bool:
        """Start workload C{name} serving C{model} on C{port}; C{False} if it runs already."""
        with self.lock:
            if self.running(name):
                return False
            env = {k: v for k, v in os.environ.items() if not k.startswith("LMPROXY_")}
            log = open(self.state / f"{name}.log", "ab")  # noqa: SIM115 (the child keeps it)
            process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "lmproxy.demo", "--port", str(port)),
                    *("--model", model, "--startup-delay", STARTUP_DELAY),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
            log.close()
            with open(self.state / PIDS_NAME, "a") as pids:
                pids.write(f"{process.pid}\n")
            self.workloads[name] = process
            return True

    def running(self, name: str) -> bool:
        """Does workload C{name} run?"""
        process = self.workloads.get(name)
        return process is not None and process.poll() is None

    def stop(self, name: str) -> bool:
        """Stop workload C{name} (SIGTERM, SIGKILL after a grace); C{False} if none ran."""
        process = self.workloads.get(name)
        if process is None or process.poll() is not None:
            return False
        process.terminate()
        try:
            process.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        # Only now is it gone: until then it runs, for "running" and a second "start".
        with self.lock:
            if self.workloads.get(name) is process:
                del self.workloads[name]
        return True

    def stop_all(self) -> None:
        """Stop every workload (the daemon is told to exit)."""
        for name in list(self.workloads):
            self.stop(name)

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        """Carry out one request of a client."""
        op, name = request["op"], request["name"]
        if op == "start":
            return {"started": self.start(name, request["port"], request["model"])}
        if op == "stop":
            return {"stopped": self.stop(name)}
        if op == "stop_later":  # as the API server: the pod stops after the answer
            threading.Thread(target=self.stop, args=(name,), daemon=True).start()
            return {}
        if op == "running":
            return {"running": self.running(name)}
        raise ValueError(f"unknown op {op!r}")


def serve(state: Path) -> None:
    """Run the daemon until SIGTERM or SIGINT; then stop every workload and exit."""
    platform = Platform(state)

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            request = json.loads(self.rfile.readline())
            self.wfile.write(json.dumps(platform.answer(request)).encode() + b"\n")

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    path = state / PORT_NAME
    path.with_suffix(".new").write_text(str(server.server_address[1]))
    os.rename(path.with_suffix(".new"), path)  # clients find it only once it listens
    stopping = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stopping.wait()
    server.shutdown()
    platform.stop_all()


def ask(state: Path, **request: Any) -> dict[str, Any]:
    """One request to the daemon; its answer."""
    port = int((state / PORT_NAME).read_text())
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(json.dumps(request).encode() + b"\n")
        reply = sock.makefile("rb").readline()
    answer: dict[str, Any] = json.loads(reply)
    return answer


def healthy(port: int) -> bool:
    """Does the demo server on C{port} answer C{/health} with 200?"""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


# -- docker -------------------------------------------------------------------

_DOCKER_FLAGS = {"-d", "--detach", "--rm", "-i", "-t", "-it", "--init", "--privileged"}
_DOCKER_VALUED = {
    "--name",
    "-p",
    "--publish",
    "-e",
    "--env",
    "-v",
    "--volume",
    "--gpus",
    "--device",
    "--ipc",
    "--shm-size",
    "--network",
    "--pull",
    "--restart",
    "-w",
    "--workdir",
    "--entrypoint",
    "-u",
    "--user",
    "--label",
}


def _docker_run(state: Path, args: list[str]) -> int:
    options: dict[str, list[str]] = {}
    flags: set[str] = set()
    rest = list(args)
    while rest and rest[0].startswith("-"):
        word = rest.pop(0)
        if "=" in word and word.split("=", 1)[0] in _DOCKER_VALUED:
            key, value = word.split("=", 1)
        elif word in _DOCKER_VALUED:
            key, value = word, rest.pop(0)
        elif word in _DOCKER_FLAGS:
            flags.add(word)
            continue
        else:
            print(f"unknown flag: {word}", file=sys.stderr)
            return 125
        options.setdefault({"-p": "--publish"}.get(key, key), []).append(value)
    if not rest:
        print('"docker run" requires at least 1 argument.', file=sys.stderr)
        return 125
    if not flags & {"-d", "--detach"}:
        print("fake docker: only detached runs (run -d) are supported", file=sys.stderr)
        return 125
    name = options.get("--name", [""])[-1]
    published = options.get("--publish", [])
    if not name or len(published) != 1:
        print("fake docker: run needs --name and one -p [IP:]PORT:PORT", file=sys.stderr)
        return 125
    host_port = int(published[0].split(":")[-2])
    if not ask(state, op="start", name=name, port=host_port, model=name)["started"]:
        print(
            f'docker: Error response from daemon: Conflict. The container name "/{name}"'
            " is already in use.",
            file=sys.stderr,
        )
        return 125
    print(os.urandom(32).hex())
    return 0


def _docker_stop(state: Path, args: list[str]) -> int:
    names = [a for a in args if not a.startswith("-") and not a.isdigit()]
    status = 0
    for name in names:
        if ask(state, op="stop", name=name)["stopped"]:
            print(name)
        else:
            print(f"Error response from daemon: No such container: {name}", file=sys.stderr)
            status = 1
    return status


def docker(state: Path, args: list[str]) -> int:
    """C{docker run -d ...}, C{docker stop NAME...} and C{docker rm -f NAME...}."""
    if args[:1] == ["run"]:
        return _docker_run(state, args[1:])
    if args[:1] == ["stop"]:
        return _docker_stop(state, args[1:])
    if args[:2] == ["rm", "-f"]:
        for name in args[2:]:
            ask(state, op="stop", name=name)
        return 0
    print(f"fake docker: not supported: {' '.join(args)}", file=sys.stderr)
    return 1


# -- kubectl ------------------------------------------------------------------


def _duration(text: str) -> float:
    """A kubectl duration such as C{90s}, C{5m} or C{1m30s}, in seconds."""
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    if not parts or not text:
        raise ValueError(f"invalid duration {text!r}")
    hours, minutes, seconds = (int(p or 0) for p in parts.groups())
    return hours * 3600 + minutes * 60 + seconds


def kubectl(state: Path, args: list[str]) -> int:
    """
    C{kubectl [-n NS] scale deployment/NAME --replicas=0|1} and
    C{kubectl [-n NS] rollout status deployment/NAME [--timeout=DURATION]}.
    """
    namespace = "default"
    options: dict[str, str] = {}
    words: list[str] = []
    rest = list(args)
    while rest:
        word = rest.pop(0)
        if word in ("-n", "--namespace"):
            namespace = rest.pop(0)
        elif word.startswith("--namespace="):
            namespace = word.split("=", 1)[1]
        elif word.startswith("--") and "=" in word:
            key, value = word[2:].split("=", 1)
            options[key] = value
        elif word in ("--replicas", "--timeout", "--context", "--selector", "-l"):
            options[{"-l": "selector"}.get(word, word[2:])] = rest.pop(0)
        elif word in ("-w", "--watch"):
            continue
        else:
            words.append(word)
    if words[:1] == ["rollout"] and words[1:2] == ["status"]:
        verb, target = "rollout status", words[2:]
    elif words[:1] == ["wait"] and words[1:2] == ["pod"] and options.get("for") == "delete":
        # The pods of deployment NAME carry the label app=NAME.
        selector = options.get("selector", "")
        verb, target = "wait", ["deployment/" + selector.removeprefix("app=")]
    elif words[:1] == ["scale"]:
        verb, target = "scale", words[1:]
    else:
        print(f"fake kubectl: not supported: {' '.join(args)}", file=sys.stderr)
        return 1
    if len(target) == 2:  # "deployment NAME"
        target = ["/".join(target)]
    kind, _, name = target[0].partition("/") if target else ("", "", "")
    if kind not in ("deployment", "deployments", "deploy", "deployment.apps"):
        print(f"fake kubectl: only deployments: {' '.join(args)}", file=sys.stderr)
        return 1
    deployments = json.loads((state / CLUSTER_NAME).read_text())["deployments"]
    deployment = deployments.get(f"{namespace}/{name}")
    if deployment is None:
        print(f'Error from server (NotFound): deployments.apps "{name}" not found', file=sys.stderr)
        return 1
    workload = f"{namespace}.{name}"
    if verb == "scale":
        replicas = options.get("replicas")
        if replicas == "1":
            ask(state, op="start", name=workload, port=deployment["port"], model=name)
        elif replicas == "0":
            ask(state, op="stop_later", name=workload)
        else:
            print("fake kubectl: --replicas must be 0 or 1", file=sys.stderr)
            return 1
        print(f"deployment.apps/{name} scaled")
        return 0
    timeout = _duration(options.get("timeout", "0s"))  # 0: wait for ever, as kubectl
    deadline = time.monotonic() + timeout if timeout else float("inf")
    if verb == "wait":
        pod = ask(state, op="running", name=workload)["running"]
        while ask(state, op="running", name=workload)["running"]:
            if time.monotonic() > deadline:
                print("error: timed out waiting for the condition", file=sys.stderr)
                return 1
            time.sleep(0.05)
        if pod:
            print(f"pod/{name}-7d4b9c6f5-x2x9q condition met")
        return 0
    if ask(state, op="running", name=workload)["running"]:
        print(
            f'Waiting for deployment "{name}" rollout to finish:'
            " 0 of 1 updated replicas are available...",
            flush=True,
        )
        while not healthy(deployment["port"]):
            if time.monotonic() > deadline:
                print("error: timed out waiting for the condition", file=sys.stderr)
                return 1
            time.sleep(0.05)
    print(f'deployment "{name}" successfully rolled out')
    return 0


def main(argv: list[str]) -> int:
    """C{daemon STATE_DIR}, C{docker STATE_DIR ARGS...} or C{kubectl STATE_DIR ARGS...}."""
    tool, state, args = argv[0], Path(argv[1]), argv[2:]
    if tool == "daemon":
        serve(state)
        return 0
    with open(state / CALLS_NAME, "a") as calls:
        calls.write(json.dumps([tool, *args]) + "\n")
    return {"docker": docker, "kubectl": kubectl}[tool](state, args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
