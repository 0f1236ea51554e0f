"""
The config of the keys that keep services up and start them early:
C{ShutDownAfterInactivitySeconds: -1}, C{Pinned}, C{StartOnLaunch}, C{Env}
(their behaviour is in C{tests/test_keep.py}).
"""

from __future__ import annotations

from typing import Any

from tests.test_config import ConfigTestCase, document, parse, service

NEVER_OR_SECONDS = "expected -1 (never) or a non-negative number of seconds"


class IdleTimeoutTests(ConfigTestCase):
    """-1 means never; 0 and absent keep large-model-proxy's meaning (the default)."""

    def idle(self, *services: Any, **top: Any) -> list[float | None]:
        return [s.idle_timeout for s in parse(document(*services, **top)).services]

    def test_never(self) -> None:
        """-1, global or per service, is None: never stopped for being idle."""
        a, b = service(Name="a", ListenPort=1), service(Name="b", ListenPort=2)
        b_never = {**b, "ShutDownAfterInactivitySeconds": -1}
        self.assertEqual(self.idle(a, b_never), [120.0, None])
        self.assertEqual(self.idle(a, b, ShutDownAfterInactivitySeconds=-1), [None, None])
        # A service's own value overrides a global -1; its 0 takes the global one.
        b_60 = {**b, "ShutDownAfterInactivitySeconds": 60}
        b_0 = {**b, "ShutDownAfterInactivitySeconds": 0}
        self.assertEqual(self.idle(a, b_60, ShutDownAfterInactivitySeconds=-1), [None, 60.0])
        self.assertEqual(self.idle(a, b_0, ShutDownAfterInactivitySeconds=-1), [None, None])

    def test_zero_is_the_default(self) -> None:
        self.assertEqual(self.idle(ShutDownAfterInactivitySeconds=0), [120.0])
        self.assertEqual(self.idle(service(ShutDownAfterInactivitySeconds=0)), [120.0])

    def test_other_negatives(self) -> None:
        """Any other negative value is refused, with its path."""
        for value, shown in [(-2, "-2"), (-0.5, "-0.5"), (-1.5, "-1.5"), ("-1", '"-1"')]:
            self.assertProblem(
                document(ShutDownAfterInactivitySeconds=value),
                f"ShutDownAfterInactivitySeconds: {NEVER_OR_SECONDS}, got {shown}",
            )
            self.assertProblem(
                document(service(ShutDownAfterInactivitySeconds=value)),
                f'Services[0] ("a").ShutDownAfterInactivitySeconds: {NEVER_OR_SECONDS},'
                f" got {shown}",
            )


class FlagTests(ConfigTestCase):
    """Pinned and StartOnLaunch: booleans, false by default."""

    def test_flags(self) -> None:
        [s] = parse(document(service(Pinned=True, startonlaunch=True))).services
        self.assertEqual((s.pinned, s.start_on_launch), (True, True))
        [s] = parse(document()).services
        self.assertEqual((s.pinned, s.start_on_launch), (False, False))

    def test_not_booleans(self) -> None:
        for key in ("Pinned", "StartOnLaunch"):
            self.assertProblem(
                document(service(**{key: "yes"})),
                f'Services[0] ("a").{key}: expected true or false, got "yes"',
            )


class EnvTests(ConfigTestCase):
    """Env: variable names to strings."""

    def env(self, value: Any) -> dict[str, str]:
        [s] = parse(document(service(Env=value))).services
        return dict(s.env)

    def test_map(self) -> None:
        value = {"CUDA_VISIBLE_DEVICES": "0,1", "lower": "x", "EMPTY": "", "U": "é 😀"}
        self.assertEqual(self.env(value), value)
        self.assertEqual(self.env({}), {})
        self.assertEqual(self.env(None), {})
        [s] = parse(document()).services
        self.assertEqual(dict(s.env), {})

    def test_names_are_case_sensitive(self) -> None:
        self.assertEqual(self.env({"A": "1", "a": "2"}), {"A": "1", "a": "2"})

    def test_problems(self) -> None:
        """Every bad entry is reported, at its path; the config is refused."""
        at = 'Services[0] ("a").Env'
        self.assertEqual(
            self.problems(
                document(
                    service(
                        Env={
                            "": "1",
                            "A=B": "x",
                            "N\u0000": "x",
                            "LMPROXY_MARK": "x",
                            "NUM": 3,
                            "NULL": None,
                            "LIST": ["a"],
                            "NUL": "a\u0000b",
                            "OK": "fine",
                        }
                    )
                )
            ),
            [
                f'{at}[""]: an empty variable name',
                f'{at}["A=B"]: the variable name "A=B" holds \'=\' or NUL: no variable can',
                f'{at}["N\\u0000"]: the variable name "N\\u0000" holds \'=\' or NUL:'
                " no variable can",
                f'{at}["LMPROXY_MARK"]: LMPROXY_MARK is lmproxy\'s own: it marks the'
                " service's processes so that none outlives lmproxy",
                f'{at}["NUM"]: expected a string, got 3',
                f'{at}["NULL"]: expected a string, got null',
                f'{at}["LIST"]: expected a string, got a list',
                f'{at}["NUL"]: contains "\\u0000" at character 1: no variable holds it',
            ],
        )

    def test_not_an_object(self) -> None:
        for value, shown in [(["A=1"], "a list"), ("A=1", '"A=1"'), (1, "1")]:
            self.assertProblem(
                document(service(Env=value)),
                f'Services[0] ("a").Env: expected an object of variable names to strings,'
                f" got {shown}",
            )

    def test_twice(self) -> None:
        text = (
            '{"Services": [{"Name": "a", "ListenPort": 1, "Command": "c",'
            ' "ProxyTargetPort": 2, "Env": {"A": "1", "A": "2"}}]}'
        )
        self.assertProblem(text, 'Services[0] ("a").Env: "A" is given twice')
