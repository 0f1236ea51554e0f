"""
Integration test of what the OpenAI port says about its models, through
the official C{openai} client against a real C{twistd -n lmproxy} and demo
model servers: each model's C{status}, C{Aliases}, C{Unlisted},
C{Metadata}, C{UseModelName}, C{/health}, C{/models} and one of llama.cpp's
own endpoints.
"""

from __future__ import annotations

import json

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.harness import Lmproxy, demo_service, free_ports, http, openai_client, user_message


class ModelsTests(TestCase):
    """The model list and routing by alias, as a real client sees them."""

    timeout = 60

    async def test_models(self) -> None:
        """
        The list shows the listed ids with their state, aliases and
        metadata; an alias starts the service, whose server gets the
        service's UseModelName.
        """
        api, target, hidden = free_ports(3)
        lmproxy = Lmproxy(
            self,
            {
                "OpenAiApi": {"ListenPort": api},
                "Services": [
                    demo_service(
                        "served",
                        None,
                        target,
                        OpenAiApi=True,
                        OpenAiApiModels=["small"],
                        Aliases=["gpt-4o-mini"],
                        UseModelName="org/served-name",
                        Metadata={"description": "the demo"},
                    ),
                    demo_service("hidden", None, hidden, OpenAiApi=True, Unlisted=True),
                ],
            },
        )
        await lmproxy.start()
        client = openai_client(api, 30)
        self.addCleanup(client.close)

        def listing() -> list[tuple[str, object, object, object]]:
            return [
                (
                    m.id,
                    (m.model_extra or {}).get("status"),
                    m.model_extra.get("aliases"),
                    m.model_extra.get("metadata"),
                )
                for m in client.models.list()
            ]

        self.assertEqual(
            await deferToThread(listing),
            [("small", {"value": "stopped"}, ["gpt-4o-mini"], {"description": "the demo"})],
        )
        answer = await deferToThread(
            client.chat.completions.create, model="gpt-4o-mini", messages=user_message("hi")
        )
        self.assertEqual(answer.model, "org/served-name")  # the demo echoes the name it got
        self.assertEqual((await deferToThread(listing))[0][1], {"value": "running"})

        entry = await deferToThread(client.models.retrieve, "hidden")
        self.assertEqual(
            (entry.id, (entry.model_extra or {})["status"]), ("hidden", {"value": "stopped"})
        )

        status, _, body = await http("GET", f"http://127.0.0.1:{api}/health")
        self.assertEqual((status, json.loads(body)), (200, {"status": "ok"}))
        status, _, body = await http("GET", f"http://127.0.0.1:{api}/models")
        self.assertEqual([m["id"] for m in json.loads(body)["data"]], ["small"])
        self.assertEqual(await lmproxy.stop(), 0)
