"""
Tests for hostile or broken strings in a config: NUL bytes and lone
surrogates wherever a string may reach a path, an exec or a shell; control
characters in names; and default log files that stay in their folder.
"""

from __future__ import annotations

import os
from typing import Any

from tests.test_config import CWD, ConfigTestCase, document, parse, service

NUL_AT_1 = 'contains "\\u0000" at character 1: no program, path or command can take it'

# Every service key whose string reaches a path, an exec or a shell.
SERVICE_STRING_KEYS = [
    "Command",
    "Args",
    "WorkDir",
    "LogFilePath",
    "HealthcheckCommand",
    "KillCommand",
    "ProxyTargetHost",
    "ServiceUrl",
]


class NulTests(ConfigTestCase):
    """A NUL byte is refused at load, with its path, wherever a string is read."""

    def test_service_keys(self) -> None:
        for key in SERVICE_STRING_KEYS:
            with self.subTest(key=key):
                self.assertProblem(
                    document(service(**{key: "a\x00b"})), f'Services[0] ("a").{key}: {NUL_AT_1}'
                )

    def test_name(self) -> None:
        self.assertProblem(
            document(service(Name="a\x00/../b")),
            'Services[0] ("a\\u0000/../b").Name: ' + NUL_AT_1,
        )

    def test_check_command(self) -> None:
        self.assertProblem(
            document(ResourcesAvailable={"GPU": {"Amount": 1, "CheckCommand": "x\x00"}}),
            f'ResourcesAvailable["GPU"].CheckCommand: {NUL_AT_1}',
        )

    def test_top_level_text(self) -> None:
        self.assertProblem(document(DefaultServiceUrl="h\x00"), f"DefaultServiceUrl: {NUL_AT_1}")

    def test_model_id(self) -> None:
        self.assertProblem(
            document(service(OpenAiApi=True, OpenAiApiModels=["m", "m\x00"])),
            f'Services[0] ("a").OpenAiApiModels[1]: {NUL_AT_1}',
        )

    def test_lone_surrogate(self) -> None:
        """JSON can write half of a UTF-16 pair, which no file name or argv can hold."""
        self.assertProblem(
            '{"Services": [{"Name": "a", "ListenPort": 1, "ProxyTargetPort": 2,'
            ' "Command": "x\\ud800"}]}',
            'Services[0] ("a").Command: contains "\\ud800" at character 1:'
            " no program, path or command can take it",
        )

    def test_other_controls_in_commands(self) -> None:
        """Newlines and tabs are fine in a shell command or in Args: only NUL is refused."""
        (s,) = parse(document(service(Args="a\n\tb", KillCommand="x\ny"))).services
        self.assertEqual((s.args, s.kill_command), ("a\n\tb", "x\ny"))


class NameTests(ConfigTestCase):
    """A name is shown on one line in logs, the dashboard and URLs."""

    def test_control_characters_refused(self) -> None:
        for char, shown in [
            ("\n", "\\n"),
            ("\x1b", "\\u001b"),
            ("\x7f", "\\u007f"),
            ("\x85", "\\u0085"),
            ("\u2028", "\\u2028"),
        ]:
            with self.subTest(char=char):
                self.assertProblem(
                    document(service(Name=f"a{char}")),
                    f'Services[0] ("a{shown}").Name: contains the control character "{shown}"'
                    " at character 1: a name is shown in logs, the dashboard and URLs",
                )

    def test_model_id_control_character(self) -> None:
        self.assertProblem(
            document(service(OpenAiApi=True, OpenAiApiModels=["m\t"])),
            'Services[0] ("a").OpenAiApiModels[0]: contains the control character "\\t"'
            " at character 1: a name is shown in logs, the dashboard and URLs",
        )

    def test_allowed(self) -> None:
        """Slashes, dots, spaces and any letters stay allowed."""
        for name in ["Qwen/Qwen2.5-7B", "..", "a b", "Модель", "模型:7b", "😀"]:
            with self.subTest(name=name):
                (s,) = parse(document(service(Name=name))).services
                self.assertEqual(s.name, name)

    def test_surrogate_pair_is_one_character(self) -> None:
        """JSON writes a character beyond U+FFFF as a pair of escapes: it is read as one."""
        text = (
            '{"ResourcesAvailable": {"\\ud83d\\ude00": 1}, "Services": [{"Name": "\\ud83d\\ude00",'
            ' "ListenPort": 1, "ProxyTargetPort": 2, "Command": "x", "Args": 3,'
            ' "ResourceRequirements": {"\\ud83d\\ude00": 1}}]}'
        )
        self.assertEqual(self.problems(text), ['Services[0] ("😀").Args: expected a string, got 3'])
        config = parse(text.replace('"Args": 3', '"Args": "\\ud83d\\ude00"'))
        (s,) = config.services
        self.assertEqual((s.name, s.args, config.resources[0].name), ("😀", "😀", "😀"))
        self.assertEqual(s.resource_requirements, {"😀": 1})

    def test_resource_name(self) -> None:
        """A resource's name is a name too."""
        self.assertEqual(
            self.problems(document(ResourcesAvailable={"G\x00PU": 1, "R\nAM": 2})),
            [
                'ResourcesAvailable["G\\u0000PU"]: the name ' + NUL_AT_1,
                'ResourcesAvailable["R\\nAM"]: the name contains the control character "\\n"'
                " at character 1: a name is shown in logs, the dashboard and URLs",
            ],
        )

    def test_unknown_key_quoted(self) -> None:
        """An unknown key that cannot be shown as it is, is quoted in its path."""
        self.assertProblem(document(**{"\x1b[31mred": 1}), '"\\u001b[31mred": unknown key')

    def test_problems_one_a_line(self) -> None:
        """A bad value with a line separator in it is shown escaped."""
        self.assertProblem(
            document(LogLevel="\x85\u2028"),
            'LogLevel: expected "Normal" or "Debug", got "\\u0085\\u2028"',
        )


class DefaultLogFileTests(ConfigTestCase):
    """The default log file is logs/<Name>.log, the name made one safe file name."""

    def log_file(self, name: str) -> str:
        (s,) = parse(document(service(Name=name))).services
        return s.log_file_path

    def test_names(self) -> None:
        for name, expected in [
            ("Qwen/Qwen2.5-7B", "Qwen_Qwen2.5-7B.log"),
            ("../../etc/passwd", "___.._etc_passwd.log"),
            ("..", "__.log"),
            (".hidden", "_hidden.log"),
            ("a\\b", "a_b.log"),
            ("/abs", "_abs.log"),
            ("a..b c", "a..b c.log"),
            ("Модель", "Модель.log"),
        ]:
            with self.subTest(name=name):
                self.assertEqual(self.log_file(name), os.path.join(CWD, "logs", expected))

    def test_long_name(self) -> None:
        """A name too long for a file name is cut, and keeps a file of its own."""
        first, second = self.log_file("x" * 300 + "1"), self.log_file("x" * 300 + "2")
        self.assertNotEqual(first, second)
        for path in first, second:
            self.assertEqual(os.path.dirname(path), os.path.join(CWD, "logs"))
            self.assertLessEqual(len(os.path.basename(path).encode()), 255)

    def test_explicit_path_kept(self) -> None:
        """An explicit LogFilePath is the user's choice, even outside logs/."""
        (s,) = parse(document(service(Name="a/b", LogFilePath="../x/a/b.log"))).services
        self.assertEqual(s.log_file_path, "/srv/x/a/b.log")

    def test_defaults_clash(self) -> None:
        """Two names that make the same file name: a problem, not a shared file."""
        self.assertProblem(
            document(service(Name="a/b"), service(Name="a_b", ListenPort="8081")),
            'Services[1] ("a_b").Name: its default log file "/srv/lmproxy/logs/a_b.log"'
            ' is also the log file of Services[0] ("a/b"): give one of them a LogFilePath',
        )

    def test_default_clashes_with_given(self) -> None:
        self.assertProblem(
            document(
                service(Name="a/b"),
                service(Name="c", ListenPort="8081", LogFilePath="logs/a_b.log"),
            ),
            'Services[0] ("a/b").Name: its default log file "/srv/lmproxy/logs/a_b.log"'
            ' is also the log file of Services[1] ("c"): give one of them a LogFilePath',
        )

    def test_clash_resolved(self) -> None:
        """A LogFilePath for one of them, or the same explicit LogFilePath for both, loads."""
        configs: list[dict[str, Any]] = [
            document(
                service(Name="a/b"),
                service(Name="a_b", ListenPort="8081", LogFilePath="logs/other.log"),
            ),
            document(
                service(Name="a/b", LogFilePath="shared.log"),
                service(Name="a_b", ListenPort="8081", LogFilePath="shared.log"),
            ),
        ]
        for config in configs:
            self.assertEqual(len(parse(config).services), 2)

    def test_bad_log_file_path_reported_once(self) -> None:
        """A bad LogFilePath is the problem: there is no default log file to clash."""
        self.assertProblem(
            document(service(Name="a/b"), service(Name="a_b", ListenPort="8081", LogFilePath=3)),
            'Services[1] ("a_b").LogFilePath: expected a string, got 3',
        )

    def test_same_name_reported_once(self) -> None:
        """Two services of one name: that is the problem, not their log file."""
        self.assertProblem(
            document(service(), service(ListenPort="8081")),
            'Services[1] ("a").Name: another service has this name: Services[0] ("a")',
        )
