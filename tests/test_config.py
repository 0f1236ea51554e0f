"""
Tests for L{lmproxy.config}: loading, defaults, and every problem it reports.
"""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from lmproxy.config import (
    DEFAULT_CHECK_INTERVAL_SECONDS,
    DEFAULT_CLIENT_BUFFER_LIMIT,
    DEFAULT_HEALTHCHECK_INTERVAL_SECONDS,
    DEFAULT_IDLE_TIMEOUT_SECONDS,
    DEFAULT_MAX_WAIT_SECONDS,
    DEFAULT_STARTUP_TIMEOUT_SECONDS,
    Config,
    ConfigError,
    ResourceConfig,
    ServiceConfig,
    load_config,
    parse_config,
)

CWD = "/srv/lmproxy"

TOP_LEVEL_KEYS = [
    "Services",
    "ResourcesAvailable",
    "OpenAiApi",
    "ManagementApi",
    "DefaultServiceUrl",
    "ShutDownAfterInactivitySeconds",
    "MaxTimeToWaitForServiceToCloseConnectionBeforeGivingUpSeconds",
    "ClientRequestBufferLimitBytes",
    "OutputServiceLogs",
    "LogLevel",
]

SERVICE_KEYS = [
    "Name",
    "ListenPort",
    "ProxyTargetHost",
    "ProxyTargetPort",
    "TargetPort",
    "Command",
    "Args",
    "WorkDir",
    "LogFilePath",
    "HealthcheckCommand",
    "HealthcheckIntervalMilliseconds",
    "StartupTimeoutMilliseconds",
    "ShutDownAfterInactivitySeconds",
    "RestartOnConnectionFailure",
    "KillCommand",
    "ConsiderStoppedOnProcessExit",
    "OpenAiApi",
    "OpenAiApiModels",
    "ServiceUrl",
    "ResourceRequirements",
]

EXAMPLE_FILE = os.path.join(os.path.dirname(__file__), os.pardir, "conf", "config.example.jsonc")

# The example config of large-model-proxy's README, verbatim (TargetPort included).
README_EXAMPLE = r"""
{
  "DefaultServiceUrl": "http://localhost:{{.PORT}}/",
  "OpenAiApi": {
    "ListenPort": "7070"
  },
  "ManagementApi": {
    "ListenPort": "7071"
  },
  "MaxTimeToWaitForServiceToCloseConnectionBeforeGivingUpSeconds": 1200,
  "ShutDownAfterInactivitySeconds": 120,
  "ResourcesAvailable": {
    "VRAM-GPU-1": 24000,
    "RAM": 32000
  },
  "Services": [
    {
      "Name": "automatic1111",
      "ListenPort": "7860",
      "ProxyTargetHost": "localhost",
      "ProxyTargetPort": "17860",
      "Command": "/opt/stable-diffusion-webui/webui.sh",
      "Args": "--port 17860",
      "WorkDir": "/opt/stable-diffusion-webui",
      "ShutDownAfterInactivitySeconds": 600,
      "RestartOnConnectionFailure": true,
      "ResourceRequirements": {
        "VRAM-GPU-1": 2000,
        "RAM": 30000
      }
    },
    {
      "Name": "Gemma-27B",
      "OpenAiApi": true,
      "ListenPort": "8081",
      "ProxyTargetHost": "localhost",
      "ProxyTargetPort": "18081",
      "Command": "/opt/llama.cpp/llama-server",
      "Args": "-m /opt/Gemma-27B-v1_Q4km.gguf -c 8192 -ngl 100 -t 4 --port 18081",
      "ServiceUrl": "http://gemma-proxy-server/",
      "HealthcheckCommand": "curl --fail http://localhost:18081/health",
      "HealthcheckIntervalMilliseconds": 200,
      "RestartOnConnectionFailure": false,
      "ResourceRequirements": {
        "VRAM-GPU-1": 20000,
        "RAM": 3000
      }
    },
    {
      "Name": "Qwen/Qwen2.5-7B-Instruct",
      "OpenAiApi": true,
      "ProxyTargetHost": "localhost",
      "ProxyTargetPort": "18082",
      "Command": "/home/user/.conda/envs/vllm/bin/vllm",
      "LogFilePath": "/var/log/Qwen2.5-7B.log",
      "Args": "serve Qwen/Qwen2.5-7B-Instruct --port 18082",
      "ServiceUrl": null,
      "ResourceRequirements": {
        "VRAM-GPU-1": 17916
      }
    },
    {
      "Name": "ComfyUI",
      "ListenPort": "8188",
      "TargetPort": "18188",
      "Command": "docker",
      "Args": "run --rm --name comfyui --device nvidia.com/gpu=all -v /opt/comfyui:/workspace -p 18188:8188 pytorch/pytorch:2.6.0-cuda12.6-cudnn9-devel /bin/bash -c 'cd /workspace && source .venv/bin/activate && apt update && apt install -y git && pip install -r requirements.txt && python main.py --listen'",
      "KillCommand": "docker kill comfyui",
      "RestartOnConnectionFailure": true,
      "ShutDownAfterInactivitySeconds": 600,
      "ResourceRequirements": {
        "VRAM-GPU-1": 20000,
        "RAM": 16000
      }
    }
  ]
}
"""  # noqa: E501 (verbatim)


def service(**keys: Any) -> dict[str, Any]:
    """A valid service, with C{keys} added or replaced (a value of C{...} removes the key)."""
    entry: dict[str, Any] = {
        "Name": "a",
        "ListenPort": "8080",
        "ProxyTargetPort": "18080",
        "Command": "server",
    }
    entry.update(keys)
    return {k: v for k, v in entry.items() if v is not ...}


def document(*services: Any, **keys: Any) -> dict[str, Any]:
    """A config with these services (default: one valid service) and top-level C{keys}."""
    return {"Services": list(services) if services else [service()], **keys}


def parse(config: dict[str, Any] | str) -> Config:
    text = config if isinstance(config, str) else json.dumps(config)
    return parse_config(text, "config.jsonc", CWD)


class ConfigTestCase(SynchronousTestCase):
    """Helpers to assert which problems a bad config reports."""

    def problems(self, config: dict[str, Any] | str) -> list[str]:
        with self.assertRaises(ConfigError) as raised:
            parse(config)
        return raised.exception.problems

    def assertProblem(self, config: dict[str, Any] | str, expected: str) -> None:
        """C{config} is refused with C{expected} as its only problem."""
        self.assertEqual(self.problems(config), [expected])


class ExampleTests(SynchronousTestCase):
    """The upstream README's example, and our commented version of it, load."""

    def test_readme_example(self) -> None:
        config = parse(README_EXAMPLE)
        self.assertEqual(config.openai_listen_port, 7070)
        self.assertEqual(config.management_listen_port, 7071)
        self.assertEqual(config.max_wait, 1200.0)
        self.assertEqual(config.default_service_url, "http://localhost:{{.PORT}}/")
        self.assertEqual(
            config.resources,
            (ResourceConfig("VRAM-GPU-1", 24000), ResourceConfig("RAM", 32000)),
        )
        a1111, gemma, qwen, comfy = config.services
        self.assertEqual(
            a1111,
            ServiceConfig(
                name="automatic1111",
                command="/opt/stable-diffusion-webui/webui.sh",
                proxy_target_port=17860,
                listen_port=7860,
                args="--port 17860",
                work_dir="/opt/stable-diffusion-webui",
                log_file_path="/srv/lmproxy/logs/automatic1111.log",
                idle_timeout=600.0,
                restart_on_connection_failure=True,
                service_url="http://localhost:7860/",
                resource_requirements={"VRAM-GPU-1": 2000, "RAM": 30000},
            ),
        )
        self.assertEqual(gemma.openai_api_models, ("Gemma-27B",))
        self.assertEqual(gemma.service_url, "http://gemma-proxy-server/")
        self.assertEqual(gemma.healthcheck_command, "curl --fail http://localhost:18081/health")
        self.assertEqual(gemma.healthcheck_interval, 0.2)
        self.assertEqual(gemma.idle_timeout, 120.0)
        self.assertIsNone(qwen.listen_port)
        self.assertIsNone(qwen.service_url)
        self.assertEqual(qwen.log_file_path, "/var/log/Qwen2.5-7B.log")
        self.assertEqual(qwen.openai_api_models, ("Qwen/Qwen2.5-7B-Instruct",))
        self.assertEqual(comfy.proxy_target_port, 18188)
        self.assertEqual(comfy.kill_command, "docker kill comfyui")
        self.assertEqual(comfy.service_url, "http://localhost:8188/")
        self.assertTrue(comfy.args.endswith("python main.py --listen'"))

    def test_example_file(self) -> None:
        """conf/config.example.jsonc is the README example with comments."""
        self.assertEqual(load_config(EXAMPLE_FILE, CWD), parse(README_EXAMPLE))


class DefaultsTests(SynchronousTestCase):
    """What a minimal config gets."""

    def test_top_level(self) -> None:
        config = parse({"Services": []})
        self.assertEqual(config, Config(services=()))
        self.assertEqual(config.resources, ())
        self.assertIsNone(config.openai_listen_port)
        self.assertIsNone(config.management_listen_port)
        self.assertEqual(config.max_wait, DEFAULT_MAX_WAIT_SECONDS)
        self.assertEqual(config.client_buffer_limit, DEFAULT_CLIENT_BUFFER_LIMIT)
        self.assertEqual(config.openai_max_body_bytes, 64 * 1024 * 1024)
        self.assertTrue(config.output_service_logs)
        self.assertEqual(config.log_level, "Normal")
        self.assertIsNone(config.default_service_url)

    def test_service(self) -> None:
        (s,) = parse(document()).services
        self.assertEqual(s.proxy_target_host, "localhost")
        self.assertEqual(s.args, "")
        self.assertIsNone(s.work_dir)
        self.assertEqual(s.log_file_path, "/srv/lmproxy/logs/a.log")
        self.assertIsNone(s.healthcheck_command)
        self.assertEqual(s.healthcheck_interval, DEFAULT_HEALTHCHECK_INTERVAL_SECONDS)
        self.assertEqual(s.startup_timeout, DEFAULT_STARTUP_TIMEOUT_SECONDS)
        self.assertEqual(s.idle_timeout, DEFAULT_IDLE_TIMEOUT_SECONDS)
        self.assertFalse(s.restart_on_connection_failure)
        self.assertIsNone(s.kill_command)
        self.assertTrue(s.consider_stopped_on_process_exit)
        self.assertFalse(s.openai_api)
        self.assertEqual(s.openai_api_models, ())
        self.assertIsNone(s.service_url)
        self.assertEqual(s.resource_requirements, {})

    def test_global_idle_timeout(self) -> None:
        """A service without its own ShutDownAfterInactivitySeconds gets the global one."""
        config = parse(
            document(
                service(Name="a", ListenPort=1),
                service(Name="b", ListenPort=2, ShutDownAfterInactivitySeconds=5),
                ShutDownAfterInactivitySeconds=30,
            )
        )
        self.assertEqual([s.idle_timeout for s in config.services], [30.0, 5.0])

    def test_durations(self) -> None:
        """Milliseconds and seconds become float seconds; fractions are fine."""
        config = parse(
            document(
                service(
                    HealthcheckCommand="true",
                    HealthcheckIntervalMilliseconds=250,
                    StartupTimeoutMilliseconds=1500,
                    ShutDownAfterInactivitySeconds=0.5,
                ),
                MaxTimeToWaitForServiceToCloseConnectionBeforeGivingUpSeconds=3,
            )
        )
        (s,) = config.services
        self.assertEqual(
            (s.healthcheck_interval, s.startup_timeout, s.idle_timeout, config.max_wait),
            (0.25, 1.5, 0.5, 3.0),
        )

    def test_paths(self) -> None:
        """LogFilePath and WorkDir are made absolute against lmproxy's working directory."""
        (s,) = parse(document(service(LogFilePath="x/../out.log", WorkDir="models"))).services
        self.assertEqual(s.log_file_path, "/srv/lmproxy/out.log")
        self.assertEqual(s.work_dir, "/srv/lmproxy/models")

    def test_name_with_slash(self) -> None:
        """The default log file of a service named like a Hugging Face model: one file in logs/."""
        (s,) = parse(document(service(Name="Qwen/Qwen2.5-7B"))).services
        self.assertEqual(s.log_file_path, "/srv/lmproxy/logs/Qwen_Qwen2.5-7B.log")

    def test_top_level_values(self) -> None:
        config = parse(
            document(
                ClientRequestBufferLimitBytes=0,
                OutputServiceLogs=False,
                LogLevel="dEbUg",
            )
        )
        self.assertEqual(config.client_buffer_limit, 0)
        self.assertFalse(config.output_service_logs)
        self.assertEqual(config.log_level, "Debug")

    def test_openai_models(self) -> None:
        (s,) = parse(document(service(OpenAiApi=True, OpenAiApiModels=["m1", "m2", "m1"]))).services
        self.assertEqual(s.openai_api_models, ("m1", "m2"))


class KeyTests(ConfigTestCase):
    """Keys ignore case; unknown and repeated keys are reported."""

    def test_case_insensitive(self) -> None:
        config = parse(
            {
                "services": [
                    {
                        "NAME": "a",
                        "listenport": 8080,
                        "proxyTargetPort": 18080,
                        "command": "x",
                        "Workdir": "/w",
                        "OpenAiAPi": True,
                        "resourcerequirements": {"GPU": 1},
                    }
                ],
                "openaiapi": {"listenPORT": "7070"},
                "RESOURCESAVAILABLE": {"GPU": {"amount": 2}},
            }
        )
        (s,) = config.services
        self.assertEqual((s.work_dir, s.openai_api), ("/w", True))
        self.assertEqual(config.openai_listen_port, 7070)
        self.assertEqual(config.resources, (ResourceConfig("GPU", 2),))

    def test_resource_names_keep_case(self) -> None:
        """Resource names are names, not keys: "gpu" is not "GPU"."""
        self.assertProblem(
            document(service(ResourceRequirements={"gpu": 1}), ResourcesAvailable={"GPU": 1}),
            'Services[0] ("a").ResourceRequirements: resource "gpu" is not in ResourcesAvailable',
        )

    def test_unknown_keys(self) -> None:
        problems = self.problems(
            {
                "Servics": [],
                "Services": [service(Workdirr="/")],
                "OpenAiApi": {"Port": 1},
                "ResourcesAvailable": {"GPU": {"Amount": 1, "Check": "x"}},
            }
        )
        self.assertEqual(
            problems,
            [
                'Servics: unknown key (did you mean "Services"?)',
                "OpenAiApi.Port: unknown key",
                'ResourcesAvailable["GPU"].Check: unknown key',
                'Services[0] ("a").Workdirr: unknown key (did you mean "WorkDir"?)',
            ],
        )

    def test_same_key_twice(self) -> None:
        self.assertProblem(
            '{"Services": [], "services": []}',
            'Services: given twice (as "Services" and "services": keys ignore case)',
        )
        self.assertProblem(
            '{"Services": [], "LogLevel": "Debug", "LogLevel": "Normal"}',
            "LogLevel: given twice",
        )

    def test_resource_twice(self) -> None:
        self.assertProblem(
            '{"Services": [], "ResourcesAvailable": {"RAM": 1, "RAM": 2}}',
            'ResourcesAvailable: "RAM" is given twice',
        )


class PortTests(ConfigTestCase):
    """Ports are strings, as upstream writes them, or integers."""

    def test_string_and_integer(self) -> None:
        config = parse(
            document(
                service(ListenPort="8080", ProxyTargetPort=18080),
                OpenAiApi={"ListenPort": 7070},
                ManagementApi={"ListenPort": "7071"},
            )
        )
        self.assertEqual(config.services[0].listen_port, 8080)
        self.assertEqual(config.services[0].proxy_target_port, 18080)
        self.assertEqual((config.openai_listen_port, config.management_listen_port), (7070, 7071))

    def test_bad_ports(self) -> None:
        for value, shown in [
            ("70000", '"70000"'),
            (70000, "70000"),
            ("0", '"0"'),
            (0, "0"),
            (-1, "-1"),
            ("80a", '"80a"'),
            (" 80", '" 80"'),
            ("+80", '"+80"'),
            (80.0, "80.0"),
            (True, "true"),
            ([80], "a list"),
        ]:
            self.assertProblem(
                document(service(ListenPort=value)),
                f'Services[0] ("a").ListenPort: {shown} is not a port number (1-65535)',
            )

    def test_target_port_outside_the_range_loads_with_a_warning(self) -> None:
        """
        large-model-proxy loads a ProxyTargetPort outside 1-65535 (only that
        service's starts fail): so does lmproxy, with a warning at its place.
        """
        for value, shown in [("70000", '"70000"'), (0, "0"), (-1, "-1"), ("0", '"0"')]:
            config = parse(document(service(ProxyTargetPort=value)))
            self.assertEqual(config.services[0].proxy_target_port, int(value))
            self.assertEqual(
                config.warnings,
                (
                    f'Services[0] ("a").ProxyTargetPort: {shown} is not a port number'
                    " (1-65535): every start of it will fail",
                ),
            )
        config = parse(document(service(ProxyTargetPort=None, TargetPort=99999)))
        self.assertEqual(config.services[0].proxy_target_port, 99999)
        self.assertEqual(len(config.warnings), 1)
        self.assertIn("TargetPort: 99999", config.warnings[0])

    def test_target_port_that_is_no_number_is_refused(self) -> None:
        """What writes no integer at all could never be a port: still refused."""
        for value, shown in [("http", '"http"'), (80.5, "80.5"), (True, "true"), ("", None)]:
            if shown is None:
                self.assertProblem(
                    document(service(ProxyTargetPort=value)),
                    'Services[0] ("a").ProxyTargetPort: missing (required): the port the'
                    " service itself listens on",
                )
                continue
            self.assertProblem(
                document(service(ProxyTargetPort=value)),
                f'Services[0] ("a").ProxyTargetPort: {shown} is not a port number (1-65535)',
            )

    def test_good_config_has_no_warnings(self) -> None:
        self.assertEqual(parse(document(service())).warnings, ())

    def test_api_ports(self) -> None:
        self.assertEqual(
            self.problems(
                document(OpenAiApi={"ListenPort": "http"}, ManagementApi={"ListenPort": 1e9})
            ),
            [
                'OpenAiApi.ListenPort: "http" is not a port number (1-65535)',
                "ManagementApi.ListenPort: 1000000000.0 is not a port number (1-65535)",
            ],
        )

    def test_openai_body_limit(self) -> None:
        """OpenAiApi.MaxRequestBodyBytes: a byte count; 0 (a dumped struct) is the default."""
        config = parse(document(OpenAiApi={"ListenPort": 7070, "maxrequestbodybytes": 1000}))
        self.assertEqual(config.openai_max_body_bytes, 1000)
        config = parse(document(OpenAiApi={"ListenPort": 7070, "MaxRequestBodyBytes": 0}))
        self.assertEqual(config.openai_max_body_bytes, 64 * 1024 * 1024)
        self.assertProblem(
            document(OpenAiApi={"ListenPort": 7070, "MaxRequestBodyBytes": "1M"}),
            'OpenAiApi.MaxRequestBodyBytes: expected a non-negative integer, got "1M"',
        )

    def test_api_not_an_object(self) -> None:
        self.assertProblem(document(OpenAiApi=True), "OpenAiApi: expected an object, got true")

    def test_target_port_alias(self) -> None:
        (s,) = parse(document(service(ProxyTargetPort=..., TargetPort="9000"))).services
        self.assertEqual(s.proxy_target_port, 9000)

    def test_both_target_ports(self) -> None:
        self.assertProblem(
            document(service(TargetPort="9000")),
            'Services[0] ("a").TargetPort: is another name for ProxyTargetPort:'
            " give only one of them",
        )

    def test_target_port_required(self) -> None:
        self.assertProblem(
            document(service(ProxyTargetPort=...)),
            'Services[0] ("a").ProxyTargetPort: missing (required):'
            " the port the service itself listens on",
        )

    def test_one_listener_per_port(self) -> None:
        problems = self.problems(
            document(
                service(Name="a", ListenPort=7070),
                service(Name="b", ListenPort="8080"),
                service(Name="c", ListenPort=8080),
                OpenAiApi={"ListenPort": "7070"},
                ManagementApi={"ListenPort": 7070},
            )
        )
        self.assertEqual(
            problems,
            [
                "ManagementApi.ListenPort: port 7070 is also the port of OpenAiApi.ListenPort",
                'Services[0] ("a").ListenPort: port 7070 is also the port of OpenAiApi.ListenPort',
                'Services[2] ("c").ListenPort: port 8080 is also the port of'
                ' Services[1] ("b").ListenPort',
            ],
        )

    def test_target_port_may_repeat(self) -> None:
        """Backends may share a target port: only one of them runs at a time."""
        parse(document(service(Name="a", ListenPort=1), service(Name="b", ListenPort=2)))


class NotSetTests(SynchronousTestCase):
    """null, "", 0 and [] mean "not set", as tools that dump Go structs write them."""

    def test_struct_dump(self) -> None:
        dumped = {
            "Services": [
                {
                    "Name": "m",
                    "ListenPort": "",
                    "ProxyTargetHost": "",
                    "ProxyTargetPort": "9000",
                    "Command": "srv",
                    "Args": "",
                    "WorkDir": "",
                    "LogFilePath": "",
                    "HealthcheckCommand": "",
                    "HealthcheckIntervalMilliseconds": 0,
                    "StartupTimeoutMilliseconds": 0,
                    "ShutDownAfterInactivitySeconds": 0,
                    "RestartOnConnectionFailure": False,
                    "KillCommand": "",
                    "ConsiderStoppedOnProcessExit": None,
                    "OpenAiApi": True,
                    "OpenAiApiModels": None,
                    "ResourceRequirements": None,
                }
            ],
            "ResourcesAvailable": None,
            "OpenAiApi": {"ListenPort": "7070"},
            "ManagementApi": {"ListenPort": ""},
            "DefaultServiceUrl": "",
            "ShutDownAfterInactivitySeconds": 0,
            "MaxTimeToWaitForServiceToCloseConnectionBeforeGivingUpSeconds": 0,
            "ClientRequestBufferLimitBytes": None,
            "OutputServiceLogs": None,
            "LogLevel": "",
        }
        config = parse(dumped)
        self.assertEqual(
            config,
            Config(
                services=(
                    ServiceConfig(
                        name="m",
                        command="srv",
                        proxy_target_port=9000,
                        log_file_path="/srv/lmproxy/logs/m.log",
                        openai_api=True,
                        openai_api_models=("m",),
                    ),
                ),
                openai_listen_port=7070,
            ),
        )

    def test_null_objects(self) -> None:
        config = parse(document(OpenAiApi=None, ManagementApi={}))
        self.assertIsNone(config.openai_listen_port)
        self.assertIsNone(config.management_listen_port)

    def test_empty_models_list(self) -> None:
        """[] is "not set" even when OpenAiApi is false."""
        (s,) = parse(document(service(OpenAiApiModels=[]))).services
        self.assertEqual(s.openai_api_models, ())

    def test_false_is_kept(self) -> None:
        (s,) = parse(document(service(ConsiderStoppedOnProcessExit=False))).services
        self.assertFalse(s.consider_stopped_on_process_exit)


class ServiceUrlTests(ConfigTestCase):
    """DefaultServiceUrl and ServiceUrl: templates rendered at load."""

    def url(self, default: str | None = None, **keys: Any) -> str | None:
        top = {} if default is None else {"DefaultServiceUrl": default}
        return parse(document(service(**keys), **top)).services[0].service_url

    def test_default(self) -> None:
        self.assertEqual(self.url("http://h:{{.PORT}}/x"), "http://h:8080/x")

    def test_spaces_inside(self) -> None:
        self.assertEqual(self.url("http://h:{{ .PORT }}/{{.PORT}}"), "http://h:8080/8080")

    def test_own_url_wins(self) -> None:
        self.assertEqual(self.url("http://d/", ServiceUrl="http://s:{{.PORT}}"), "http://s:8080")

    def test_null_means_no_url(self) -> None:
        self.assertIsNone(self.url("http://d/", ServiceUrl=None))

    def test_empty_means_default(self) -> None:
        self.assertEqual(self.url("http://d/", ServiceUrl=""), "http://d/")

    def test_nothing(self) -> None:
        self.assertIsNone(self.url())

    def test_no_port(self) -> None:
        """A template needing {{.PORT}} gives no URL for a service without a ListenPort."""
        self.assertIsNone(self.url("http://h:{{.PORT}}/", ListenPort=..., OpenAiApi=True))
        self.assertEqual(self.url("http://h/", ListenPort=..., OpenAiApi=True), "http://h/")

    def test_bad_templates(self) -> None:
        for template, message in [
            ("http://{{.HOST}}/", 'unsupported template action "{{.HOST}}"'),
            ("http://{{.port}}/", 'unsupported template action "{{.port}}"'),
            ("http://{{.PORT}/", 'unbalanced "{{" or "}}"'),
            ("http://.PORT}}/", 'unbalanced "{{" or "}}"'),
        ]:
            problems = self.problems(document(service(ServiceUrl=template)))
            self.assertEqual(len(problems), 1)
            self.assertTrue(
                problems[0].startswith(f'Services[0] ("a").ServiceUrl: {message}'), problems
            )
            problems = self.problems(document(DefaultServiceUrl=template))
            self.assertEqual(len(problems), 1)
            self.assertTrue(problems[0].startswith(f"DefaultServiceUrl: {message}"), problems)


class ResourceTests(ConfigTestCase):
    """ResourcesAvailable and ResourceRequirements."""

    def test_forms(self) -> None:
        config = parse(
            document(
                ResourcesAvailable={
                    "RAM": 32000,
                    "VRAM": {"Amount": 24000, "CheckCommand": "free-vram"},
                    "Measured": {
                        "CheckCommand": "free-x",
                        "CheckWhenNotEnoughIntervalMilliseconds": 250,
                    },
                    "Dumped": {"Amount": 0, "CheckCommand": "free-y"},
                    "Zero": {"Amount": 0},
                }
            )
        )
        self.assertEqual(
            config.resources,
            (
                ResourceConfig("RAM", 32000),
                ResourceConfig("VRAM", 24000, "free-vram", DEFAULT_CHECK_INTERVAL_SECONDS),
                ResourceConfig("Measured", None, "free-x", 0.25),
                ResourceConfig("Dumped", None, "free-y"),
                ResourceConfig("Zero", 0),
            ),
        )

    def test_bad_values(self) -> None:
        problems = self.problems(
            document(
                ResourcesAvailable={
                    "A": -1,
                    "B": "10",
                    "C": {},
                    "D": {"Amount": 1.5},
                    "E": {"CheckCommand": ""},
                }
            )
        )
        self.assertEqual(
            problems,
            [
                'ResourcesAvailable["A"]: expected a non-negative integer, got -1',
                'ResourcesAvailable["B"]: expected a non-negative integer, or an object with'
                ' Amount and/or CheckCommand, got "10"',
                'ResourcesAvailable["C"]: needs an Amount, a CheckCommand, or both',
                'ResourcesAvailable["D"].Amount: expected a non-negative integer, got 1.5',
                'ResourcesAvailable["E"]: needs an Amount, a CheckCommand, or both',
            ],
        )

    def test_not_an_object(self) -> None:
        self.assertProblem(
            document(ResourcesAvailable=[1]),
            "ResourcesAvailable: expected an object, got a list",
        )

    def test_unknown_resource(self) -> None:
        self.assertProblem(
            document(service(Name="Gemma-27B", ResourceRequirements={"VRAM": 1})),
            'Services[0] ("Gemma-27B").ResourceRequirements: resource "VRAM" is not in'
            " ResourcesAvailable",
        )

    def test_bad_resource_reported_once(self) -> None:
        """A requirement on a resource that is itself bad adds no second problem."""
        self.assertProblem(
            document(service(ResourceRequirements={"X": 1}), ResourcesAvailable={"X": -1}),
            'ResourcesAvailable["X"]: expected a non-negative integer, got -1',
        )

    def test_more_than_total(self) -> None:
        self.assertProblem(
            document(
                service(ResourceRequirements={"RAM": 40000, "VRAM": 10}),
                ResourcesAvailable={"RAM": 32000, "VRAM": {"CheckCommand": "x"}},
            ),
            'Services[0] ("a").ResourceRequirements: needs 40000 of "RAM", but'
            " ResourcesAvailable has only 32000: it could never start",
        )

    def test_more_than_amount_of_a_measured_resource_loads_with_a_warning(self) -> None:
        """
        With a CheckCommand the measurement decides (as upstream, which loads
        this): a requirement above the Amount is a warning, not an error.
        """
        config = parse(
            document(
                service(ResourceRequirements={"VRAM": 30}),
                ResourcesAvailable={"VRAM": {"Amount": 24, "CheckCommand": "x"}},
            )
        )
        self.assertEqual(config.services[0].resource_requirements, {"VRAM": 30})
        self.assertEqual(
            config.warnings,
            (
                'Services[0] ("a").ResourceRequirements: needs 30 of "VRAM", more than its'
                " Amount 24; its CheckCommand's measurement decides when it may start",
            ),
        )

    def test_bad_requirement(self) -> None:
        self.assertProblem(
            document(service(ResourceRequirements={"RAM": -5}), ResourcesAvailable={"RAM": 1}),
            'Services[0] ("a").ResourceRequirements["RAM"]: expected a non-negative integer,'
            " got -5",
        )


class ServiceProblemTests(ConfigTestCase):
    """Each problem a service can have, with its path."""

    def test_types(self) -> None:
        for key, value, expected in [
            ("RestartOnConnectionFailure", "yes", 'expected true or false, got "yes"'),
            ("OpenAiApi", 1, "expected true or false, got 1"),
            ("Command", ["a"], "expected a string, got a list"),
            ("Args", 5, "expected a string, got 5"),
            (
                "StartupTimeoutMilliseconds",
                "10",
                'expected a non-negative number of milliseconds, got "10"',
            ),
            (
                "ShutDownAfterInactivitySeconds",
                -2,
                "expected -1 (never) or a non-negative number of seconds, got -2",
            ),
            (
                "ShutDownAfterInactivitySeconds",
                True,
                "expected -1 (never) or a non-negative number of seconds, got true",
            ),
            ("OpenAiApiModels", "m", 'expected a list of model ids, got "m"'),
            ("ResourceRequirements", [], "expected an object, got a list"),
        ]:
            self.assertProblem(
                document(service(**{key: value})), f'Services[0] ("a").{key}: {expected}'
            )

    def test_name(self) -> None:
        self.assertProblem(
            document(service(Name=...)), "Services[0].Name: missing or empty (required)"
        )
        self.assertProblem(
            document(service(Name="")), "Services[0].Name: missing or empty (required)"
        )
        self.assertProblem(document(service(Name=5)), "Services[0].Name: expected a string, got 5")

    def test_duplicate_name(self) -> None:
        self.assertProblem(
            document(service(ListenPort=1), service(ListenPort=2)),
            'Services[1] ("a").Name: another service has this name: Services[0] ("a")',
        )

    def test_command(self) -> None:
        self.assertProblem(
            document(service(Command="")),
            'Services[0] ("a").Command: missing or empty (required)',
        )

    def test_unreachable(self) -> None:
        self.assertProblem(
            document(service(ListenPort=...)),
            'Services[0] ("a").ListenPort: missing: a service needs a ListenPort,'
            " or OpenAiApi: true, or both",
        )

    def test_healthcheck_interval_without_command(self) -> None:
        self.assertProblem(
            document(service(HealthcheckIntervalMilliseconds=200)),
            'Services[0] ("a").HealthcheckIntervalMilliseconds: given,'
            " but there is no HealthcheckCommand",
        )

    def test_models_without_openai(self) -> None:
        self.assertProblem(
            document(service(OpenAiApiModels=["m"])),
            'Services[0] ("a").OpenAiApiModels: given, but OpenAiApi is not true',
        )

    def test_bad_model_id(self) -> None:
        self.assertProblem(
            document(service(OpenAiApi=True, OpenAiApiModels=["m", ""])),
            'Services[0] ("a").OpenAiApiModels[1]: expected a non-empty string, got ""',
        )

    def test_model_claimed_twice(self) -> None:
        self.assertProblem(
            document(
                service(Name="m", OpenAiApi=True, ListenPort=...),
                service(Name="b", OpenAiApi=True, OpenAiApiModels=["x", "m"]),
            ),
            'Services[1] ("b").OpenAiApiModels: model "m" is also served by Services[0] ("m")',
        )

    def test_not_an_object(self) -> None:
        self.assertProblem(document(service(), "a"), 'Services[1]: expected an object, got "a"')

    def test_log_level(self) -> None:
        self.assertProblem(
            document(LogLevel="Verbose"), 'LogLevel: expected "Normal" or "Debug", got "Verbose"'
        )

    def test_services_required(self) -> None:
        self.assertProblem({}, "Services: missing (required): the list of services")
        self.assertProblem({"Services": {}}, "Services: expected a list of services, got an object")

    def test_many_problems_at_once(self) -> None:
        """Every problem is reported, each service's together, in file order."""
        problems = self.problems(
            {
                "Services": [
                    service(Name="x", ListenPort="70000", Command=...),
                    service(Name="y", RestartOnConnectionFailure="yes", ListenPort=9),
                ],
                "LogLevel": 3,
                "OpenAiApi": {"ListenPort": 0},
            }
        )
        self.assertEqual(
            problems,
            [
                "LogLevel: expected a string, got 3",
                "OpenAiApi.ListenPort: 0 is not a port number (1-65535)",
                'Services[0] ("x").ListenPort: "70000" is not a port number (1-65535)',
                'Services[0] ("x").Command: missing or empty (required)',
                'Services[1] ("y").RestartOnConnectionFailure: expected true or false, got "yes"',
            ],
        )
        self.assertEqual(str(ConfigError(problems)), "\n".join(problems))


class SyntaxTests(ConfigTestCase):
    """JSONC syntax, and what is not JSON at all."""

    def test_comments_and_trailing_commas(self) -> None:
        config = parse(
            """
            // a comment
            {
              /* block
                 comment */
              "Services": [],  // trailing comma next
            }
            """
        )
        self.assertEqual(config.services, ())

    def test_syntax_error(self) -> None:
        self.assertProblem(
            '{\n  "Services": [],\n  "LogLevel": ,\n}',
            'config.jsonc: line 3, column 15: syntax error: unexpected ","',
        )

    def test_unfinished(self) -> None:
        self.assertProblem(
            '{"Services": [',
            "config.jsonc: line 1, column 15: syntax error: unexpected end of input",
        )

    def test_empty(self) -> None:
        self.assertProblem("  \n", "config.jsonc: the file is empty")

    def test_not_an_object(self) -> None:
        self.assertProblem("[]", "config.jsonc: the top level must be an object, got a list")

    def test_deep_nesting(self) -> None:
        self.assertProblem("[" * 100_000, "config.jsonc: nested too deeply")


class LoadTests(SynchronousTestCase):
    """Finding and reading the file."""

    def setUp(self) -> None:
        self.cwd = os.path.abspath(self.mktemp())
        os.makedirs(self.cwd)

    def write(self, name: str, text: str) -> str:
        path = os.path.join(self.cwd, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def services(self, config: Config) -> list[str]:
        return [s.name for s in config.services]

    def load_error(self, path: str | None) -> list[str]:
        with self.assertRaises(ConfigError) as raised:
            load_config(path, self.cwd)
        return raised.exception.problems

    def test_json_before_jsonc(self) -> None:
        self.write("config.jsonc", json.dumps(document(service(Name="from-jsonc"))))
        self.assertEqual(self.services(load_config(None, self.cwd)), ["from-jsonc"])
        self.write("config.json", json.dumps(document(service(Name="from-json"))))
        self.assertEqual(self.services(load_config(None, self.cwd)), ["from-json"])

    def test_explicit_path(self) -> None:
        """A relative path is relative to cwd; LogFilePath defaults under cwd."""
        os.mkdir(os.path.join(self.cwd, "conf"))
        self.write("conf/mine.jsonc", "// mine\n" + json.dumps(document()))
        config = load_config("conf/mine.jsonc", self.cwd)
        self.assertEqual(config.services[0].log_file_path, os.path.join(self.cwd, "logs", "a.log"))

    def test_byte_order_mark(self) -> None:
        self.write("config.json", "\ufeff" + json.dumps(document()))
        self.assertEqual(self.services(load_config(None, self.cwd)), ["a"])

    def test_none_found(self) -> None:
        json_path = os.path.join(self.cwd, "config.json")
        self.assertEqual(
            self.load_error(None),
            [
                f"no config file: neither {json_path} nor {json_path}c exists"
                " (give one with -c PATH)"
            ],
        )

    def test_missing(self) -> None:
        self.assertEqual(self.load_error("nope.json"), ["nope.json: no such config file"])

    def test_directory(self) -> None:
        os.mkdir(os.path.join(self.cwd, "config.json"))
        self.assertEqual(
            self.load_error("config.json"), ["config.json: is a directory, not a config file"]
        )

    def test_not_utf8(self) -> None:
        with open(os.path.join(self.cwd, "config.json"), "wb") as f:
            f.write(b'{"Services": [], "LogLevel": "\xff"}')
        self.assertEqual(
            self.load_error("config.json"),
            ["config.json: not UTF-8 text (bad byte at offset 30)"],
        )

    def test_syntax_error_names_file(self) -> None:
        path = self.write("config.json", '{\n  "Services": []\n  "LogLevel": "Debug"\n}')
        self.assertEqual(
            self.load_error(None),
            [f'{path}: line 3, column 3: syntax error: unexpected "\\""'],
        )

    def test_syntax_error_newline(self) -> None:
        """A character in a syntax error is shown escaped, on one line."""
        path = self.write("config.json", '{"LogLevel": "a\nb"}')
        self.assertEqual(
            self.load_error(None),
            [f'{path}: line 1, column 16: syntax error: unexpected "\\n"'],
        )


def _json_values() -> st.SearchStrategy[Any]:
    """Any JSON value, biased towards the values configs hold."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(),
        st.sampled_from(["", "0", "7070", "70000", "{{.PORT}}", "{{", "Debug", "RAM"]),
        st.text(max_size=4),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3),
            st.dictionaries(st.sampled_from(["Amount", "CheckCommand", "ListenPort"]), inner),
        ),
        max_leaves=8,
    )


def _fuzz_configs() -> st.SearchStrategy[dict[str, Any]]:
    """Configs with the right shape and random values, so that every check is reached."""
    value = _json_values()
    services = st.lists(
        st.dictionaries(st.sampled_from([*SERVICE_KEYS, "name", "Nope"]), value, max_size=10),
        max_size=3,
    )
    resources = st.dictionaries(st.sampled_from(["RAM", "GPU"]), value, max_size=2)
    optional: dict[str, st.SearchStrategy[Any]] = {key: value for key in TOP_LEVEL_KEYS}
    optional.update(Services=st.one_of(services, value), ResourcesAvailable=resources)
    return st.fixed_dictionaries({}, optional=optional)


class FuzzTests(SynchronousTestCase):
    """Whatever the JSON, the result is a Config or a ConfigError: never a traceback."""

    @settings(max_examples=100, deadline=None)
    @given(_fuzz_configs())
    def test_no_crash(self, config: dict[str, Any]) -> None:
        try:
            parse(config)
        except ConfigError as e:
            self.assertTrue(e.problems)
            for problem in e.problems:
                self.assertIsInstance(problem, str)
