"""
Tests of the C{lmproxy} command's start (L{lmproxy.cli}, L{lmproxy.launch}).

Unit tests first: its arguments, the ports read from a config's text, and
each step in turn with a quit signal delivered while it runs (recorded
handlers, a fake exit: deterministic).  Then integration tests that launch
the real command (and C{twistd -n lmproxy}) on ports the OS chose: a
connection made before the reactor runs is served, quit signals at several
moments of the start-up give exit 0, a bad config and a port in use give
exit 1 and their message, never a traceback.  No test measures how long
anything takes: that is C{bench/bench_launch.py}'s job.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from twisted.internet.error import ConnectionRefusedError
from twisted.python import usage
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

import lmproxy.cli
import lmproxy.config
import lmproxy.launch
import lmproxy.listen.sockets
from lmproxy.cli import config_argument, prepare
from lmproxy.launch import config_file, ports_in
from lmproxy.tap import Options
from tests.harness import (
    TWISTD,
    Lmproxy,
    RawClient,
    child_env,
    demo_service,
    free_ports,
    listening_ports,
    port_open,
    raw_connect,
    wait_for,
)
from tests.test_shutdown import Exited, FakeSignals

LMPROXY = [sys.executable, "-m", "lmproxy", "-c", "config.json"]


class EarlyImportsTests(SynchronousTestCase):
    def test_nothing_slow_before_the_ports_listen(self) -> None:
        """
        What the command imports before its ports listen is the standard
        library's cheapest part: no Twisted, no parser (attrs, json5), not
        even typing, socket or json (milliseconds each).  A check of what is
        imported, not of how long it takes.
        """
        modules = "lmproxy.cli, lmproxy.launch, lmproxy.quitsignals, lmproxy.listen.sockets"

        def imported(statement: str) -> set[str]:
            script = f"import sys; {statement}; print(' '.join(sys.modules))"
            result = subprocess.run(
                [sys.executable, "-c", script], capture_output=True, text=True, env=child_env()
            )
            self.assertEqual(result.returncode, 0, result.stderr)
            return set(result.stdout.split())

        # What the interpreter's own start loads (its site, .pth files) is not ours.
        loaded = imported(f"import {modules}") - imported("pass")
        slow = {"twisted", "zope", "attr", "attrs", "json5", "typing", "socket", "json"}
        self.assertEqual({name.split(".")[0] for name in loaded} & slow, set())
        self.assertNotIn("lmproxy.config", loaded)


class ConfigArgumentTests(SynchronousTestCase):
    """The arguments that the fast path understands; anything else goes to Options."""

    def test_forms(self) -> None:
        for args, path in [
            ([], None),
            (["-c", "a.jsonc"], "a.jsonc"),
            (["-ca.jsonc"], "a.jsonc"),
            (["--config", "a.jsonc"], "a.jsonc"),
            (["--config=a.jsonc"], "a.jsonc"),
            (["--config="], ""),
            (["-c", "a", "-c", "b"], "b"),
            (["-c", "--help"], "--help"),
        ]:
            self.assertEqual(config_argument(args), (True, path), args)

    def test_anything_else(self) -> None:
        for args in (["--help"], ["-c"], ["x"], ["--conf", "a"], ["-c", "a", "--version"]):
            self.assertEqual(config_argument(args), (False, None), args)


class PortsInTests(SynchronousTestCase):
    """L{ports_in}: what the fast path opens before the parser runs."""

    def test_jsonc(self) -> None:
        text = """{
          // "ListenPort": "1111" (commented out)
          /* "ListenPort": 2222 */
          "Services": [
            {"Name": "a", "listenport": "8081", "Args": "--ListenPort: 3333",},
            {"Name": "b", "ListenPort": 8082, "ProxyTargetPort": "9000"},
            {Name: 'c', ListenPort: '8083'},
            {"Name": "d", "ListenPort": "8081"},
          ],
          "OpenAiApi": {"ListenPort": "7070"},
          "ManagementApi": {"ListenPort" : 7071},
        }"""
        self.assertEqual(ports_in(text), [8081, 8082, 8083, 7070, 7071])

    def test_not_ports(self) -> None:
        text = '{"a": {"ListenPort": "0"}, "b": {"ListenPort": 70000}, "c": {"ListenPort": ""}}'
        self.assertEqual(ports_in(text), [])
        self.assertEqual(ports_in(""), [])
        self.assertEqual(ports_in('{"ListenPort": "80'), [])

    def test_a_string_with_a_quote(self) -> None:
        text = r'{"Args": "say \"ListenPort\": 1", "ListenPort": "2"}'
        self.assertEqual(ports_in(text), [2])


class ConfigFileTests(SynchronousTestCase):
    def test_lookup(self) -> None:
        cwd = Path(self.mktemp())
        cwd.mkdir()
        self.assertEqual(config_file("x.json", str(cwd)), str(cwd / "x.json"))
        self.assertIsNone(config_file(None, str(cwd)))
        (cwd / "config.jsonc").write_text("{}")
        self.assertEqual(config_file(None, str(cwd)), str(cwd / "config.jsonc"))
        (cwd / "config.json").write_text("{}")
        self.assertEqual(config_file(None, str(cwd)), str(cwd / "config.json"))


class PrepareTests(SynchronousTestCase):
    """
    L{prepare}, step by step, with a quit signal delivered during each step
    before the service tree exists: each ends lmproxy at once with status 0,
    from the handler (L{Exited} stands for C{os._exit}), whatever the step
    was doing.
    """

    def setUp(self) -> None:
        self.signals = FakeSignals()
        self.quit = self.signals.quit_signals()
        self.quit.install()
        self.cwd = Path(self.mktemp())
        self.cwd.mkdir()
        self.ports = free_ports(3)
        a, b, api = self.ports
        self.config: dict[str, Any] = {
            "Services": [
                {"Name": "a", "ListenPort": a, "ProxyTargetPort": 1, "Command": "true"},
                {"Name": "b", "ListenPort": str(b), "ProxyTargetPort": 2, "Command": "true"},
            ],
            "ManagementApi": {"ListenPort": api},
        }
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)

    def write(self, config: dict[str, Any] | str) -> None:
        text = config if isinstance(config, str) else json.dumps(config)
        (self.cwd / "config.json").write_text(text)

    def prepare(self, args: tuple[str, ...] = ("-c", "config.json")) -> Options:
        options = prepare(list(args), str(self.cwd), self.quit)
        for sock in options.listening.values():
            self.addCleanup(sock.close)
        return options

    def signal_during(self, owner: object, name: str) -> None:
        """Make C{owner.name} deliver SIGTERM after it has done its work."""
        original = getattr(owner, name)

        def wrapper(*args: Any) -> Any:
            result = original(*args)
            self.signals.deliver(signal.SIGTERM)
            return result

        self.patch(owner, name, wrapper)

    def assertExited0(self) -> None:
        exited = self.assertRaises(Exited, self.prepare)
        self.assertEqual(exited.status, 0)
        self.assertEqual(
            self.signals.written, ["lmproxy: SIGTERM before anything was started: exiting\n"]
        )

    def test_the_config_and_every_port_listening(self) -> None:
        """The options hold the parsed config, its sockets, and the quit signals."""
        self.write(self.config)
        options = self.prepare()
        self.assertEqual([s.name for s in options.loaded.services], ["a", "b"])
        self.assertIs(options.quit, self.quit)
        self.assertEqual(sorted(options.listening), sorted(self.ports))
        self.assertEqual([port_open(port) for port in self.ports], [True, True, True])

    def test_signal_while_reading_the_config(self) -> None:
        self.write(self.config)
        self.signal_during(lmproxy.launch, "read_text")
        self.assertExited0()

    def test_signal_while_binding(self) -> None:
        self.write(self.config)
        self.signal_during(lmproxy.listen.sockets, "listen_early")
        self.assertExited0()
        # What the exit would have closed.
        for port in self.ports:
            self.assertTrue(port_open(port))

    def test_signal_while_parsing(self) -> None:
        self.write(self.config)
        self.signal_during(lmproxy.config, "load_config")
        self.assertExited0()

    def test_signal_while_twisted_loads(self) -> None:
        """The last step imports Twisted (lmproxy.tap): until the tree is built, exit at once."""
        self.write(self.config)
        self.signal_during(lmproxy.cli, "_options")
        self.assertExited0()

    def test_bad_config(self) -> None:
        """Exit 1 with every problem, and the sockets opened early are closed."""
        del self.config["Services"][1]["Command"]
        self.write(self.config)
        error = self.assertRaises(SystemExit, self.prepare)
        self.assertEqual(error.code, 1)
        self.assertEqual(
            self.stderr.getvalue(),
            "lmproxy: the config cannot be used:\n"
            '  Services[1] ("b").Command: missing or empty (required)\n',
        )
        self.assertEqual([port_open(port) for port in self.ports], [False, False, False])

    def test_no_config(self) -> None:
        error = self.assertRaises(SystemExit, self.prepare, ())
        self.assertEqual(error.code, 1)
        self.assertIn("no config file: neither", self.stderr.getvalue())

    def test_port_in_use(self) -> None:
        """One line, naming the key in the config's own style; nothing left open."""
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("", self.ports[1]))
        busy.listen()
        self.write(self.config)
        error = self.assertRaises(SystemExit, self.prepare)
        self.assertEqual(error.code, 1)
        self.assertEqual(
            self.stderr.getvalue(),
            f'lmproxy: Services[1] ("b").ListenPort {self.ports[1]}: address already in use\n',
        )
        self.assertEqual((port_open(self.ports[0]), port_open(self.ports[2])), (False, False))

    def test_port_that_the_text_hides(self) -> None:
        """A port the quick read misses (JSON5's hexadecimal) is opened after the parse."""
        text = json.dumps(self.config)
        text = text.replace(f'"ListenPort": {self.ports[0]}', f'"ListenPort": {self.ports[0]:#x}')
        self.write(text)
        self.assertEqual(ports_in(text), self.ports[1:])
        self.assertEqual(sorted(self.prepare().listening), sorted(self.ports))

    def test_help(self) -> None:
        stdout = io.StringIO()
        self.patch(sys, "stdout", stdout)
        error = self.assertRaises(SystemExit, self.prepare, ("--help",))
        self.assertEqual(error.code, 0)
        self.assertIn("Usage: lmproxy [-c CONFIG]", stdout.getvalue())
        self.assertIn("-c, --config=", stdout.getvalue())

    def test_version(self) -> None:
        """lmproxy's own version, then Twisted's and Python's."""
        stdout = io.StringIO()
        self.patch(sys, "stdout", stdout)
        error = self.assertRaises(SystemExit, self.prepare, ("--version",))
        self.assertEqual(error.code, 0)
        self.assertRegex(stdout.getvalue(), r"^lmproxy \S+ \(Twisted \S+, Python \S+\)\n$")

    def test_logfile(self) -> None:
        """The lmproxy command takes --logfile; twistd's own is twistd's."""
        self.write(self.config)
        path = str((self.cwd / "config.json").resolve())
        options = self.prepare(("-c", path, "--logfile", "lmproxy.log"))
        self.assertEqual(options["logfile"], "lmproxy.log")
        twistd = Options()
        twistd.quit = self.quit
        error = self.assertRaises(
            usage.UsageError, twistd.parseOptions, ["-c", "x.json", "--logfile", "y.log"]
        )
        self.assertIn("twistd -n --logfile=PATH lmproxy", str(error))

    def test_unusual_arguments(self) -> None:
        """Parsed by the twistd plugin's options, which load the config as usual."""
        self.write(self.config)
        options = self.prepare(("--conf", str((self.cwd / "config.json").resolve())))
        self.assertEqual([s.name for s in options.loaded.services], ["a", "b"])
        self.assertEqual(options.listening, {})  # makeService opens them

    def test_wrong_arguments(self) -> None:
        error = self.assertRaises(SystemExit, self.prepare, ("--bogus",))
        self.assertEqual(error.code, 1)
        self.assertEqual(
            self.stderr.getvalue(), "lmproxy: option --bogus not recognized (see lmproxy --help)\n"
        )


ECHO_SERVER = """
import socket, sys, threading

def serve(connection):
    while data := connection.recv(65536):
        connection.sendall(data)
    connection.close()

server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(sys.argv[1])))
server.listen()
while True:
    threading.Thread(target=serve, args=(server.accept()[0],), daemon=True).start()
"""


def _caught(pid: int) -> set[int]:
    """The signals that process C{pid} has a handler for (from /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return set()
    mask = int(
        next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt")), 16
    )
    return {signum for signum in range(1, 65) if mask & (1 << (signum - 1))}


def _execed(pid: int, word: str) -> bool:
    """Has process C{pid} exec'd the command whose argv has C{word}?"""
    try:
        return word.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


class CommandTests(TestCase):
    """The real C{lmproxy} command, C{python -m lmproxy}, and C{twistd -n lmproxy}."""

    timeout = 120

    def two_services(self, command: list[str] = LMPROXY) -> Lmproxy:
        """Two demo services and the management API (nothing connects: none starts)."""
        la, ta, lb, tb, management = free_ports(5)
        config = {
            "Services": [demo_service("a", la, ta), demo_service("b", lb, tb)],
            "ManagementApi": {"ListenPort": management},
        }
        return Lmproxy(self, config, command)

    async def assertQuitsWith0(self, lmproxy: Lmproxy, signum: int) -> None:
        assert lmproxy.pid is not None
        os.kill(lmproxy.pid, signum)
        self.assertEqual(await lmproxy.exited(30), 0, lmproxy.output)
        self.assertNotIn("Traceback", lmproxy.output)
        for port in lmproxy.ports():
            self.assertFalse(port_open(port))

    async def test_connection_before_the_reactor_runs_is_served(self) -> None:
        """
        A client that connects as soon as the port listens (typically before
        Twisted is even imported) waits in the kernel's queue and is served
        normally once lmproxy runs: here by a TCP echo server that lmproxy
        starts for it.
        """
        listen, target = free_ports(2)
        lmproxy = Lmproxy(self, {"Services": []}, LMPROXY)
        echo = (lmproxy.dir / "echo.py").resolve()
        echo.write_text(ECHO_SERVER)
        service = {
            "Name": "echo",
            "ListenPort": listen,
            "ProxyTargetHost": "127.0.0.1",
            "ProxyTargetPort": target,
            "Command": sys.executable,
            "Args": f"{echo} {target}",
        }
        lmproxy.config = {"Services": [service]}
        lmproxy.config_path.write_text(json.dumps(lmproxy.config))
        lmproxy.spawn()
        clients: list[RawClient] = []

        async def connected() -> bool:
            try:
                clients.append(await raw_connect(listen))
            except ConnectionRefusedError:
                return False
            return True

        while not await connected():
            self.assertFalse(lmproxy.has_exited(), lmproxy.output)
        [client] = clients
        client.send(b"hello, early\n")
        try:
            await wait_for(lambda: bytes(client.received) == b"hello, early\n", 60, "the echo")
        except AssertionError as e:
            raise AssertionError(f"{e}; lmproxy's output:\n{lmproxy.output}") from None
        client.close()
        await client.closed
        await self.assertQuitsWith0(lmproxy, signal.SIGTERM)

    async def test_sigterm_as_soon_as_the_process_runs(self) -> None:
        """
        Right after the exec, before lmproxy's first line of Python may have
        run: the one window no handler covers (the interpreter's own start),
        so lmproxy exits 0 or dies of the signal, but it never runs on and
        never prints a traceback.
        """
        lmproxy = self.two_services()
        lmproxy.spawn()
        assert lmproxy.pid is not None
        pid = lmproxy.pid
        await wait_for(lambda: _execed(pid, "lmproxy") or lmproxy.has_exited(), 30, "the exec")
        os.kill(pid, signal.SIGTERM)
        self.assertIn(await lmproxy.exited(30), (0, None), lmproxy.output)
        self.assertNotIn("Traceback", lmproxy.output)

    async def signal_once_handled(self, command: list[str], signum: int) -> None:
        """Send C{signum} as soon as lmproxy's handler is in place: exit 0."""
        lmproxy = self.two_services(command)
        lmproxy.spawn()
        assert lmproxy.pid is not None
        pid = lmproxy.pid
        # Python itself catches SIGINT from its start, SIGTERM only lmproxy does;
        # before the exec, the forked child still has the test's own handlers.
        await wait_for(
            lambda: (
                (_execed(pid, "lmproxy") and signal.SIGTERM in _caught(pid)) or lmproxy.has_exited()
            ),
            30,
            "the handler",
        )
        await self.assertQuitsWith0(lmproxy, signum)

    async def test_sigint_once_handled(self) -> None:
        await self.signal_once_handled(LMPROXY, signal.SIGINT)

    async def test_sigterm_once_handled(self) -> None:
        await self.signal_once_handled(LMPROXY, signal.SIGTERM)

    async def test_twistd_sigint_once_handled(self) -> None:
        """Under twistd, from the moment lmproxy's options are parsed."""
        await self.signal_once_handled([TWISTD, "-n", "--pidfile=", "lmproxy"], signal.SIGINT)

    async def signal_once_listening(self, command: list[str], signum: int) -> None:
        lmproxy = self.two_services(command)
        await lmproxy.start(timeout=60)
        await self.assertQuitsWith0(lmproxy, signum)

    async def test_sigint_once_listening(self) -> None:
        """The ports listen; Twisted may still be loading, or the tree starting."""
        await self.signal_once_listening(LMPROXY, signal.SIGINT)

    async def test_sigterm_once_listening(self) -> None:
        await self.signal_once_listening(LMPROXY, signal.SIGTERM)

    async def test_twistd_sigterm_once_listening(self) -> None:
        """Under twistd the ports listen once the tree is built: held, then a graceful stop."""
        await self.signal_once_listening(
            [TWISTD, "-n", "--pidfile=", "lmproxy", "-c", "config.json"], signal.SIGTERM
        )

    async def test_sigterm_once_running(self) -> None:
        lmproxy = self.two_services()
        lmproxy.spawn()
        await wait_for(lambda: "starting up (Python" in lmproxy.output, 60, "the log")
        await self.assertQuitsWith0(lmproxy, signal.SIGTERM)
        self.assertIn("SIGTERM: stopping every service", lmproxy.output)

    async def test_bad_config(self) -> None:
        lmproxy = Lmproxy(self, {"Services": [{"Name": "x", "ListenPort": "1"}]}, LMPROXY)
        lmproxy.spawn()
        self.assertEqual(await lmproxy.exited(30), 1)
        self.assertIn("lmproxy: the config cannot be used:\n", lmproxy.output)
        self.assertIn('  Services[0] ("x").Command: missing or empty (required)\n', lmproxy.output)
        self.assertNotIn("Traceback", lmproxy.output)

    async def port_in_use(self, command: list[str]) -> None:
        lmproxy = self.two_services(command)
        busy_port = lmproxy.config["Services"][1]["ListenPort"]
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("", int(busy_port)))
        busy.listen()
        lmproxy.spawn()
        self.assertEqual(await lmproxy.exited(60), 1)
        line = f'lmproxy: Services[1] ("b").ListenPort {busy_port}: address already in use\n'
        self.assertIn(line, lmproxy.output)
        self.assertNotIn("Traceback", lmproxy.output)

    async def test_port_in_use(self) -> None:
        await self.port_in_use(LMPROXY)

    async def test_twistd_port_in_use(self) -> None:
        await self.port_in_use([TWISTD, "-n", "--pidfile=", "lmproxy", "-c", "config.json"])

    async def test_console_script(self) -> None:
        """The installed C{lmproxy} script, end to end."""
        script = os.path.join(os.path.dirname(sys.executable), "lmproxy")
        if not os.path.exists(script):
            raise SkipTest("no lmproxy script next to this Python (pip install .)")
        lmproxy = self.two_services([script, "-c", "config.json"])
        await lmproxy.start(timeout=60)
        assert lmproxy.pid is not None
        self.assertLessEqual(set(lmproxy.ports()), listening_ports(lmproxy.pid))
        await self.assertQuitsWith0(lmproxy, signal.SIGINT)
