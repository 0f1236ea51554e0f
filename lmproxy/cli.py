"""
The C{lmproxy} console script (and C{python -m lmproxy}): C{lmproxy -c
config.jsonc} runs lmproxy in the foreground, as C{twistd -n lmproxy -c
config.jsonc} does, but listening within milliseconds of the launch.

In this order, each step before the next one's imports:

  1. SIGINT and SIGTERM handled (L{lmproxy.quitsignals}): from here on a quit
     signal ends lmproxy with status 0, whenever it comes;
  2. the ports that the config's text asks for, listening
     (L{lmproxy.launch.ports_in}): clients that connect from now on wait in
     the kernel's accept queue, and are served once the reactor runs;
  3. the config parsed (L{lmproxy.config}, ~100 ms of imports): a bad one
     ends lmproxy with its problems and status 1; then exactly the ports it
     asks for, listening, or a line naming each one that cannot be opened;
  4. Twisted imported, the service tree built around those sockets and that
     config (no second parse), and run (L{lmproxy.tap.run}).

When lmproxy cannot run (or prints its help), it exits without the
interpreter's clean-up: nothing was started yet, and the clean-up of the
parser's modules takes tens of milliseconds.

Arguments other than C{-c PATH} and C{--config PATH} (C{--help}, mistakes) are
parsed by L{lmproxy.tap.Options} after Twisted is imported, as under twistd.
"""

from __future__ import annotations

import os
import sys

from lmproxy.quitsignals import QuitSignals

# Not typing.TYPE_CHECKING: importing typing costs ~10 ms on the way to the
# first listening port.  Type checkers take a TYPE_CHECKING of any origin as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

    from lmproxy.config import Config
    from lmproxy.listen.sockets import ListeningSocket
    from lmproxy.tap import Options


def main(argv: list[str] | None = None) -> int:
    """
    Run lmproxy in the foreground.

    @param argv: the arguments (default: C{sys.argv[1:]}).
    @return: the exit status.
    """
    quit = QuitSignals()
    quit.install()  # before anything slow: see lmproxy.quitsignals
    from lmproxy.launch import keep_tls_out

    keep_tls_out()  # before the reactor: see lmproxy.launch
    try:
        options = prepare(sys.argv[1:] if argv is None else argv, os.getcwd(), quit)
    except SystemExit as e:
        _exit_at_once(e.code)
    from lmproxy.tap import run

    return run(options)


def prepare(args: list[str], cwd: str, quit: QuitSignals) -> Options:
    """
    The steps of the module's docstring, up to the service tree.

    @param args: the command line's arguments.
    @param cwd: lmproxy's working directory.
    @param quit: installed already.
    @return: the options for L{lmproxy.tap.run}: the config, its sockets
        listening, C{quit}.
    @raise SystemExit: lmproxy cannot run (its message is on standard
        error), or it printed what was asked (C{--help}).
    """
    # Imported here, once the quit signals are handled (by main), as every
    # step imports what it needs only when its turn comes.
    from lmproxy.launch import config_file, fail_ports, ports_in, read_text
    from lmproxy.listen.sockets import PortsUnavailable, listen_early, port_keys, take_ports

    understood, path = config_argument(args)
    if not understood:
        return _parse_options(args, quit)
    file = config_file(path, cwd)
    early = listen_early(ports_in(read_text(file))) if file is not None else {}
    config = _parse(path, cwd, early)
    try:
        listening = take_ports(port_keys(config), early)
    except PortsUnavailable as e:
        fail_ports(e.problems)
    return _options(quit, config, listening, path)


def config_argument(args: list[str]) -> tuple[bool, str | None]:
    """
    The config's path, from arguments that only give it.

    @param args: the command line's arguments.
    @return: C{(True, path)} for arguments of the forms C{-c PATH},
        C{-cPATH}, C{--config PATH} and C{--config=PATH} (the last one
        counts; C{path} is C{None} when there are none); C{(False, None)}
        for anything else.
    """
    path = None
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if arg in ("-c", "--config") and rest:
            path = rest.pop(0)
        elif arg.startswith("--config="):
            path = arg.removeprefix("--config=")
        elif arg.startswith("-c") and len(arg) > 2 and not arg.startswith("--"):
            path = arg[2:]
        else:
            return False, None
    return True, path


def _parse(path: str | None, cwd: str, early: dict[int, ListeningSocket | OSError]) -> Config:
    """The config; a bad one ends lmproxy (after closing the sockets opened early)."""
    from lmproxy.config import ConfigError, load_config
    from lmproxy.launch import fail

    try:
        return load_config(path, cwd)
    except ConfigError as e:
        for sock in early.values():
            if not isinstance(sock, OSError):
                sock.close()
        fail("the config cannot be used:", e.problems)


def _options(
    quit: QuitSignals,
    config: Config,
    listening: dict[int, ListeningSocket],
    path: str | None,
) -> Options:
    """The options for a config parsed already from C{path} (this imports Twisted)."""
    from lmproxy.tap import Options

    options = Options()
    options["config"] = path  # read again by a reload
    options.command = "lmproxy"
    options.quit = quit
    options.loaded = config
    options.listening = listening
    return options


def _parse_options(args: list[str], quit: QuitSignals) -> Options:
    """Parse unusual arguments as twistd would: help, mistakes."""
    from twisted.python import usage

    from lmproxy.tap import Options

    options = Options()
    options.command = "lmproxy"
    options.quit = quit
    # twistd shows its own
    options.synopsis = "Usage: lmproxy [-c CONFIG] [--logfile PATH] [--watch-config]"
    try:
        options.parseOptions(args)
    except usage.UsageError as e:
        sys.stderr.write(f"lmproxy: {e} (see lmproxy --help)\n")
        raise SystemExit(1) from None
    return options


def _exit_at_once(code: object) -> NoReturn:
    """
    Exit before anything was started, without the interpreter's clean-up:
    with the config's parser loaded, that takes tens of milliseconds, and
    there is nothing to clean up (the kernel closes the sockets).
    """
    if code is not None and not isinstance(code, int):
        sys.stderr.write(f"{code}\n")
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)
