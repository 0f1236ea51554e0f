"""
Tests for L{lmproxy.listen.modellist} and the OpenAI port's routes that
use it: the state of each model in C{/v1/models}, C{Aliases}, C{Unlisted},
C{Metadata}, C{UseModelName} on both of the port's paths, C{/models} and
C{/health}; and L{lmproxy.listen.multipart.with_field}.
"""

from __future__ import annotations

import json
from typing import Any

from attrs import evolve
from twisted.trial.unittest import SynchronousTestCase

from lmproxy.config import Config, ServiceConfig
from lmproxy.interfaces import ServiceState, StartFailure
from lmproxy.listen.modellist import model_status
from lmproxy.listen.multipart import multipart_field, with_field
from lmproxy.listen.openai import OpenAiApi
from tests.test_front import post
from tests.test_openai import (
    BOUNDARY,
    STARTED_AT,
    ProxyTestCase,
    RecordingBackends,
    SiteTreq,
    Wire,
    forwarded,
    multipart,
)

CONFIG = Config(
    services=(
        ServiceConfig(
            name="qwen",
            command="vllm",
            proxy_target_port=9001,
            openai_api=True,
            openai_api_models=("qwen", "qwen-fast"),
            aliases=("gpt-4o-mini",),
            use_model_name="Qwen/Qwen2.5-7B-Instruct",
            metadata={"description": "a small chat model", "context": 32768},
        ),
        ServiceConfig(
            name="hidden",
            command="llama-server",
            proxy_target_port=9002,
            openai_api=True,
            openai_api_models=("hidden",),
            unlisted=True,
        ),
    )
)


def multipart_body(model: str) -> bytes:
    """An audio upload naming C{model}, its file before its model field."""
    return multipart(
        [("file", b"RIFF\r\n\r\n" + bytes(range(256)), "a.wav"), ("model", model.encode(), None)]
    )


class ModelListTestCase(ProxyTestCase):
    """The port of L{CONFIG} on the twisted.web path."""

    def setUp(self) -> None:
        super().setUp()
        self.backends = RecordingBackends(CONFIG)
        self.rebuild()

    def rebuild(self) -> None:
        self.api = OpenAiApi(self.backends, CONFIG, self.agent, self.clock)
        self.client = SiteTreq(self.api.site())

    def get(self, path: str) -> tuple[int, Any]:
        code, _, body = self.result(self.client.get("http://lmproxy" + path))
        return code, json.loads(body)


class StatusTests(ModelListTestCase):
    """Each entry's C{status} follows its service's state."""

    def statuses(self) -> list[dict[str, Any]]:
        code, document = self.get("/v1/models")
        self.assertEqual(code, 200)
        return [entry["status"] for entry in document["data"]]

    def test_each_state(self) -> None:
        """Stopped, waiting or starting (both "starting"), running, stopping ("stopped")."""
        for state, value in [
            (ServiceState.STOPPED, "stopped"),
            (ServiceState.WAITING_FOR_RESOURCES, "starting"),
            (ServiceState.STARTING, "starting"),
            (ServiceState.RUNNING, "running"),
            (ServiceState.STOPPING, "stopped"),
        ]:
            self.backends.set_state("qwen", state)
            self.assertEqual(self.statuses(), [{"value": value}] * 2)

    def test_failed_while_backing_off(self) -> None:
        """A failed start in back-off shows "failed" and why; once over, "stopped"."""
        failure = StartFailure(at=5.0, reason="exited with status 1", retry_at=10.0)
        self.backends.last_failures["qwen"] = failure
        self.assertEqual(self.statuses()[0], {"value": "failed", "reason": "exited with status 1"})
        self.backends.last_failures["qwen"] = StartFailure(at=5.0, reason="x", retry_at=None)
        self.assertEqual(self.statuses()[0], {"value": "stopped"})

    def test_model_status_of_a_running_service_with_an_old_failure(self) -> None:
        """A failure only shows while the service is stopped."""
        self.backends.set_state("qwen", ServiceState.RUNNING)
        failure = StartFailure(at=5.0, reason="exited", retry_at=10.0)
        status = self.backends.service_status("qwen")
        self.assertEqual(model_status(evolve(status, last_failure=failure)), {"value": "running"})


class EntryTests(ModelListTestCase):
    """Aliases, Unlisted and Metadata."""

    def test_list(self) -> None:
        """Listed ids only, each with the aliases and metadata of its service."""
        _, document = self.get("/v1/models")
        extra = {
            "owned_by": "lmproxy",
            "object": "model",
            "created": STARTED_AT,
            "status": {"value": "stopped"},
            "aliases": ["gpt-4o-mini"],
            "metadata": {"description": "a small chat model", "context": 32768},
        }
        self.assertEqual(
            document,
            {
                "object": "list",
                "data": [{"id": "qwen", **extra}, {"id": "qwen-fast", **extra}],
            },
        )
        self.assertEqual(self.backends.acquired, [])

    def test_models_alias(self) -> None:
        """/models is /v1/models; /models/{id} is /v1/models/{id}."""
        self.assertEqual(self.get("/models"), self.get("/v1/models"))
        self.assertEqual(self.get("/models/qwen"), self.get("/v1/models/qwen"))

    def test_retrieve_unlisted_and_alias(self) -> None:
        """An unlisted model and an alias can be retrieved: they are served."""
        code, entry = self.get("/v1/models/hidden")
        self.assertEqual(
            (code, entry["id"], entry["status"]), (200, "hidden", {"value": "stopped"})
        )
        self.assertNotIn("aliases", entry)
        self.assertNotIn("metadata", entry)
        code, entry = self.get("/v1/models/gpt-4o-mini")
        self.assertEqual((code, entry["id"]), (200, "gpt-4o-mini"))

    def test_reload(self) -> None:
        """A reload changes the listing and the routes at once."""
        qwen, hidden = CONFIG.services
        self.api.reconfigure(
            Config(
                services=(evolve(qwen, unlisted=True, aliases=()), evolve(hidden, unlisted=False))
            )
        )
        _, document = self.get("/v1/models")
        self.assertEqual([entry["id"] for entry in document["data"]], ["hidden"])
        self.assertEqual(self.get("/v1/models/gpt-4o-mini")[0], 404)

    def test_health(self) -> None:
        """lmproxy is up, whatever its models do; nothing starts."""
        self.assertEqual(self.get("/health"), (200, {"status": "ok"}))
        self.assertEqual(self.backends.acquired, [])


class RenameTests(ModelListTestCase):
    """C{UseModelName} on the twisted.web path; an alias and an unlisted model route."""

    def setUp(self) -> None:
        super().setUp()
        self.backends.set_state("qwen", ServiceState.RUNNING)
        self.backends.set_state("hidden", ServiceState.RUNNING)

    def test_json_renamed(self) -> None:
        """The forwarded body names UseModelName, its other members unchanged."""
        for model in ("qwen", "qwen-fast", "gpt-4o-mini"):
            document = {"model": model, "messages": [{"role": "user", "content": "é"}]}
            code, _, _ = self.result(self.post("/v1/chat/completions", document))
            self.assertEqual(code, 200)
            sent = json.loads(self.server.bodies[-1])
            self.assertEqual(
                sent, {"model": "Qwen/Qwen2.5-7B-Instruct", "messages": document["messages"]}
            )
        self.assertEqual(self.backends.acquired, ["qwen"] * 3)

    def test_unlisted_not_renamed(self) -> None:
        """A service without UseModelName gets the body byte for byte."""
        body = b'{"model":  "hidden"}'
        self.result(self.post("/v1/completions", body))
        self.assertEqual(self.server.bodies[-1], body)

    def test_multipart_renamed(self) -> None:
        """The model field of an audio upload is replaced; the file is untouched."""
        body = multipart_body("gpt-4o-mini")
        headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
        code, _, _ = self.result(self.post("/v1/audio/transcriptions", body, headers=headers))
        self.assertEqual(code, 200)
        sent = self.server.bodies[-1]
        self.assertEqual(
            multipart_field(sent, BOUNDARY.encode(), "model"), "Qwen/Qwen2.5-7B-Instruct"
        )
        self.assertEqual(sent.replace(b"Qwen/Qwen2.5-7B-Instruct", b"gpt-4o-mini"), body)


class HotPathRenameTests(SynchronousTestCase):
    """C{UseModelName} on the hot path."""

    def test_renamed(self) -> None:
        backends = RecordingBackends(CONFIG)
        backends.set_state("qwen", ServiceState.RUNNING)
        wire = Wire(backends, config=CONFIG)
        wire.channel.dataReceived(post(b'{"model": "gpt-4o-mini", "n": 1}'))
        _, backend = wire.backend()
        request_line, _, body = forwarded(backend)
        self.assertEqual(request_line, b"POST /v1/chat/completions HTTP/1.1")
        self.assertEqual(json.loads(body), {"model": "Qwen/Qwen2.5-7B-Instruct", "n": 1})
        self.assertEqual(backends.acquired, ["qwen"])


class WithFieldTests(SynchronousTestCase):
    """L{with_field}."""

    def test_replaces_only_that_field(self) -> None:
        body = multipart_body("whisper")
        replaced = with_field(body, BOUNDARY.encode(), "model", "openai/whisper-large-v3")
        self.assertEqual(
            multipart_field(replaced, BOUNDARY.encode(), "model"), "openai/whisper-large-v3"
        )
        self.assertEqual(replaced.replace(b"openai/whisper-large-v3", b"whisper"), body)

    def test_no_such_field(self) -> None:
        """A body without the field is returned as it is."""
        body = multipart_body("whisper")
        self.assertIs(with_field(body, BOUNDARY.encode(), "language", "en"), body)
