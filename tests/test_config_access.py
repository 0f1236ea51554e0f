"""
Tests for the config keys that say who may reach lmproxy: C{ListenAddress},
C{ApiKeys}, C{ManagementApi.AllowedHosts}, C{OpenAiApi.CorsAllowedOrigins},
and the warning about a management API open to the network without a key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from lmproxy.config import DEFAULT_LISTEN_ADDRESS, ConfigError, Secret, parse_config
from lmproxy.config.access import MAX_KEY_FILE_BYTES
from lmproxy.listen.sockets import DEFAULT_ADDRESS
from tests.test_config import ConfigTestCase, document, parse, service

SECRET = "sk-very-secret-0123456789"
ENV = "LMPROXY_TEST_API_KEY"


def _management(**keys: Any) -> dict[str, Any]:
    return document(ManagementApi={"ListenPort": 7071, **keys})


class ListenAddressTests(ConfigTestCase):
    """C{ListenAddress}: top level, per service, per API."""

    def test_default_is_every_ipv4_interface(self) -> None:
        config = parse(document(OpenAiApi={"ListenPort": 7070}))
        self.assertEqual(config.services[0].listen_address, "0.0.0.0")
        self.assertEqual(config.openai_listen_address, "0.0.0.0")
        self.assertEqual(config.management_listen_address, "0.0.0.0")

    def test_the_two_defaults_agree(self) -> None:
        """The sockets module cannot import the config's (it is on the way to listening)."""
        self.assertEqual(DEFAULT_ADDRESS, DEFAULT_LISTEN_ADDRESS)

    def test_top_level_is_the_default_of_every_port(self) -> None:
        config = parse(document(ListenAddress="127.0.0.1", OpenAiApi={"ListenPort": 7070}))
        self.assertEqual(config.services[0].listen_address, "127.0.0.1")
        self.assertEqual(config.openai_listen_address, "127.0.0.1")
        self.assertEqual(config.management_listen_address, "127.0.0.1")

    def test_each_port_its_own(self) -> None:
        config = parse(
            document(
                service(ListenAddress="::1"),
                ListenAddress="127.0.0.1",
                OpenAiApi={"ListenPort": 7070, "ListenAddress": "0:0::0"},
                ManagementApi={"ListenPort": 7071, "ListenAddress": "192.168.1.10"},
            )
        )
        self.assertEqual(config.services[0].listen_address, "::1")
        self.assertEqual(config.openai_listen_address, "::")  # normalized
        self.assertEqual(config.management_listen_address, "192.168.1.10")

    def test_host_name_refused(self) -> None:
        [problem] = self.problems(document(service(ListenAddress="localhost")))
        self.assertTrue(
            problem.startswith('Services[0] ("a").ListenAddress: expected an IP address'), problem
        )
        self.assertIn('got "localhost"', problem)

    def test_bad_values(self) -> None:
        for value in ["[::1]", "127.0.0.1:80", "300.1.1.1", "1.2.3"]:
            [problem] = self.problems(document(OpenAiApi={"ListenAddress": value}))
            self.assertTrue(problem.startswith("OpenAiApi.ListenAddress: expected an IP"), problem)
        self.assertProblem(
            document(OpenAiApi={"ListenAddress": 7}),
            "OpenAiApi.ListenAddress: expected a string, got 7",
        )
        [problem] = self.problems(document(ListenAddress="::g"))
        self.assertTrue(problem.startswith("ListenAddress: expected an IP address"), problem)

    def test_empty_is_not_set(self) -> None:
        self.assertEqual(parse(document(ListenAddress="")).services[0].listen_address, "0.0.0.0")


class ApiKeysTests(ConfigTestCase):
    """C{ApiKeys}: literals, files and environment variables; never shown."""

    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).absolute()
        self.dir.mkdir()
        self.addCleanup(os.environ.pop, ENV, None)

    def load(self, config: dict[str, Any]) -> Any:
        import json

        return parse_config(json.dumps(config), "config.jsonc", str(self.dir))

    def problems_of(self, config: dict[str, Any]) -> list[str]:
        import json

        with self.assertRaises(ConfigError) as raised:
            parse_config(json.dumps(config), "config.jsonc", str(self.dir))
        for problem in raised.exception.problems:
            self.assertNotIn(SECRET, problem)
        return raised.exception.problems

    def test_literal_file_and_env(self) -> None:
        (self.dir / "key.txt").write_text(f"  {SECRET}-file\n\n")
        os.environ[ENV] = f"{SECRET}-env\n"
        config = self.load(
            document(
                OpenAiApi={"ApiKeys": [SECRET, {"File": "key.txt"}, {"env": ENV}]},
                ManagementApi={"ApiKeys": [{"File": str(self.dir / "key.txt")}]},
            )
        )
        self.assertEqual(
            config.openai_api_keys,
            (Secret(SECRET), Secret(f"{SECRET}-file"), Secret(f"{SECRET}-env")),
        )
        self.assertEqual(config.management_api_keys, (Secret(f"{SECRET}-file"),))

    def test_repr_hides_them(self) -> None:
        config = self.load(_management(ApiKeys=[SECRET]))
        self.assertNotIn(SECRET, repr(config))
        self.assertNotIn(SECRET, str(config.management_api_keys))

    def test_default_none(self) -> None:
        config = parse(document())
        self.assertEqual((config.openai_api_keys, config.management_api_keys), ((), ()))
        self.assertEqual(parse(document(OpenAiApi={"ApiKeys": []})).openai_api_keys, ())

    def test_missing_file(self) -> None:
        path = self.dir / "nope.txt"
        self.assertEqual(
            self.problems_of(document(OpenAiApi={"ApiKeys": [{"File": "nope.txt"}]})),
            [
                f"OpenAiApi.ApiKeys[0].File: cannot read the key file {path}:"
                " No such file or directory"
            ],
        )

    def test_empty_file(self) -> None:
        (self.dir / "key.txt").write_text(" \n")
        self.assertEqual(
            self.problems_of(_management(ApiKeys=["ok-key", {"File": "key.txt"}])),
            [f"ManagementApi.ApiKeys[1].File: the key file {self.dir / 'key.txt'} is empty"],
        )

    def test_not_a_regular_file(self) -> None:
        """A FIFO (which would block the load) or a device is refused without reading it."""
        os.mkfifo(self.dir / "fifo")
        problems = self.problems_of(_management(ApiKeys=[{"File": "fifo"}, {"File": "/dev/zero"}]))
        self.assertEqual(
            problems,
            [
                f"ManagementApi.ApiKeys[0].File: the key file {self.dir / 'fifo'}"
                " is not a regular file",
                "ManagementApi.ApiKeys[1].File: the key file /dev/zero is not a regular file",
            ],
        )

    def test_file_too_long(self) -> None:
        (self.dir / "key.txt").write_text("k" * (MAX_KEY_FILE_BYTES + 1))
        self.assertEqual(
            self.problems_of(_management(ApiKeys=[{"File": "key.txt"}])),
            [
                f"ManagementApi.ApiKeys[0].File: the key file {self.dir / 'key.txt'}"
                f" is over {MAX_KEY_FILE_BYTES} bytes: it holds no key"
            ],
        )

    def test_unset_and_empty_variable(self) -> None:
        expected = [
            f"OpenAiApi.ApiKeys[0].Env: the environment variable {ENV} is not set, or empty"
        ]
        self.assertEqual(
            self.problems_of(document(OpenAiApi={"ApiKeys": [{"Env": ENV}]})), expected
        )
        os.environ[ENV] = "  "
        self.assertEqual(
            self.problems_of(document(OpenAiApi={"ApiKeys": [{"Env": ENV}]})), expected
        )

    def test_keys_that_cannot_be_sent(self) -> None:
        (self.dir / "key.txt").write_text(f"{SECRET} two words\n")
        problems = self.problems_of(
            document(OpenAiApi={"ApiKeys": ["", f"{SECRET} x", f"{SECRET}é", {"File": "key.txt"}]})
        )
        self.assertEqual(
            problems,
            [
                "OpenAiApi.ApiKeys[0]: the key is empty",
                "OpenAiApi.ApiKeys[1]: the key has characters that cannot be sent in a header"
                " (spaces, non-ASCII)",
                "OpenAiApi.ApiKeys[2]: the key has characters that cannot be sent in a header"
                " (spaces, non-ASCII)",
                "OpenAiApi.ApiKeys[3].File: the key has characters that cannot be sent in a header"
                " (spaces, non-ASCII)",
            ],
        )

    def test_bad_entries(self) -> None:
        problems = self.problems_of(
            document(
                OpenAiApi={
                    "ApiKeys": [
                        7,
                        {"File": "a", "Env": "B"},
                        {},
                        {"Key": SECRET},
                        {"File": 3},
                    ]
                }
            )
        )
        self.assertEqual(
            problems,
            [
                'OpenAiApi.ApiKeys[0]: expected a string, {"File": path} or {"Env": NAME},'
                " got a number",
                "OpenAiApi.ApiKeys[1]: expected either File or Env",
                "OpenAiApi.ApiKeys[2]: expected either File or Env",
                "OpenAiApi.ApiKeys[3].Key: unknown key",
                "OpenAiApi.ApiKeys[3]: expected either File or Env",
                "OpenAiApi.ApiKeys[4].File: expected a string, got 3",
            ],
        )

    def test_not_a_list_is_not_shown(self) -> None:
        """A key given as a string instead of a list is not printed back."""
        self.assertEqual(
            self.problems_of(document(OpenAiApi={"ApiKeys": SECRET})),
            [
                'OpenAiApi.ApiKeys: expected a list of keys (each a string, {"File": path} or'
                ' {"Env": NAME}), got a string'
            ],
        )


class AllowedHostsTests(ConfigTestCase):
    def test_lowercase(self) -> None:
        config = parse(_management(AllowedHosts=["GPU-Box.lan", "gpu-box.lan", "box"]))
        self.assertEqual(config.management_allowed_hosts, ("gpu-box.lan", "box"))

    def test_bad_names(self) -> None:
        problems = self.problems(_management(AllowedHosts=["box:7071", "http://box", "", 3]))
        self.assertEqual(
            problems,
            [
                'ManagementApi.AllowedHosts[2]: expected a non-empty string, got ""',
                "ManagementApi.AllowedHosts[3]: expected a non-empty string, got 3",
                'ManagementApi.AllowedHosts[0]: expected a host name such as "gpu-box.lan"'
                ' (no port), got "box:7071"',
                'ManagementApi.AllowedHosts[1]: expected a host name such as "gpu-box.lan"'
                ' (no port), got "http://box"',
            ],
        )


class CorsAllowedOriginsTests(ConfigTestCase):
    def test_normalized(self) -> None:
        config = parse(
            document(
                OpenAiApi={
                    "CorsAllowedOrigins": [
                        "HTTP://LocalHost:3000/",
                        "https://chat.example:443",
                        "http://[::1]:8080",
                        "*",
                    ]
                }
            )
        )
        self.assertEqual(
            config.openai_allowed_origins,
            ("http://localhost:3000", "https://chat.example", "http://[::1]:8080", "*"),
        )

    def test_default_none(self) -> None:
        self.assertEqual(parse(document()).openai_allowed_origins, ())

    def test_bad_origins(self) -> None:
        bad = ["localhost:3000", "http://a/path", "http://[", "http://a:99999", "http://a?q"]
        problems = self.problems(document(OpenAiApi={"CorsAllowedOrigins": bad}))
        self.assertEqual(len(problems), len(bad))
        for index, problem in enumerate(problems):
            self.assertTrue(
                problem.startswith(
                    f"OpenAiApi.CorsAllowedOrigins[{index}]: expected an origin such as"
                ),
                problem,
            )


class OpenManagementWarningTests(SynchronousTestCase):
    """A management API beyond loopback without a key loads, with a warning."""

    def test_default_address_without_key(self) -> None:
        self.assertEqual(
            parse(_management()).warnings,
            (
                "ManagementApi: listens on 0.0.0.0, beyond this machine, without ApiKeys:"
                " whoever can reach its port can start and stop services; give it ApiKeys, or"
                ' ListenAddress "127.0.0.1"',
            ),
        )

    def test_everywhere_ipv6(self) -> None:
        [warning] = parse(_management(ListenAddress="::")).warnings
        self.assertTrue(warning.startswith("ManagementApi: listens on ::, beyond"), warning)

    def test_no_warning(self) -> None:
        for config in [
            _management(ListenAddress="127.0.0.1"),
            _management(ListenAddress="::1"),
            document(ListenAddress="127.0.0.2", ManagementApi={"ListenPort": 7071}),
            _management(ApiKeys=["key"]),
            document(ManagementApi={"ApiKeys": []}),  # no port: no API
            document(),
        ]:
            self.assertEqual(parse(config).warnings, (), config)
