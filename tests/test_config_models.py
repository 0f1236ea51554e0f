"""
Tests for the keys that say how a service shows on the OpenAI port:
C{Aliases}, C{UseModelName}, C{Unlisted}, C{Metadata}, and the port's
C{OpenAiApi.LoadingFeedback}.
"""

from __future__ import annotations

from typing import Any

from lmproxy.config import (
    LOADING_FEEDBACK_COMMENTS,
    LOADING_FEEDBACK_OFF,
    LOADING_FEEDBACK_PROGRESS,
)
from tests.test_config import ConfigTestCase, document, parse, service


def _openai(**keys: Any) -> dict[str, Any]:
    return service(OpenAiApi=True, **keys)


class ServiceModelKeysTests(ConfigTestCase):
    """The model keys of a service."""

    def test_defaults(self) -> None:
        """Without them: no aliases, the client's name, listed, no metadata."""
        [entry] = parse(document(_openai())).services
        self.assertEqual(
            (entry.aliases, entry.use_model_name, entry.unlisted, entry.metadata),
            ((), None, False, {}),
        )

    def test_given(self) -> None:
        """Each is read as given; Metadata's objects become dicts, in any depth."""
        metadata = {"description": "small", "sizes": [1, {"ctx": 4096}]}
        [entry] = parse(
            document(
                _openai(
                    Aliases=["b", "c", "b"],
                    UseModelName="org/real",
                    Unlisted=True,
                    Metadata=metadata,
                )
            )
        ).services
        self.assertEqual(entry.aliases, ("b", "c"))
        self.assertEqual(entry.use_model_name, "org/real")
        self.assertTrue(entry.unlisted)
        self.assertEqual(entry.metadata, metadata)

    def test_alias_of_another_service(self) -> None:
        """An alias that is another service's model id is refused, at its key."""
        self.assertProblem(
            document(
                _openai(Name="a", Aliases=["shared"]),
                _openai(Name="b", ListenPort="8081", OpenAiApiModels=["shared"]),
            ),
            'Services[1] ("b").OpenAiApiModels: model "shared" is also served by Services[0] ("a")',
        )

    def test_alias_clash_between_aliases(self) -> None:
        """Two services with one alias: the second is refused."""
        self.assertProblem(
            document(
                _openai(Name="a", Aliases=["x"]),
                _openai(Name="b", ListenPort="8081", Aliases=["x"]),
            ),
            'Services[1] ("b").Aliases: model "x" is also served by Services[0] ("a")',
        )

    def test_only_with_openai(self) -> None:
        """Each needs OpenAiApi: true."""
        for key, value in [
            ("Aliases", ["x"]),
            ("UseModelName", "x"),
            ("Unlisted", True),
            ("Metadata", {}),
        ]:
            self.assertProblem(
                document(service(**{key: value})),
                f'Services[0] ("a").{key}: given, but OpenAiApi is not true:'
                " it is for the OpenAI port",
            )

    def test_bad_values(self) -> None:
        """A wrong type is named with its path."""
        for key, value, problem in [
            ("Metadata", [1], "expected an object, got a list"),
            ("Metadata", 3, "expected an object, got 3"),
            ("Unlisted", "yes", 'expected true or false, got "yes"'),
            ("UseModelName", 5, "expected a string, got 5"),
            ("Aliases", "x", 'expected a list of model ids, got "x"'),
        ]:
            self.assertProblem(
                document(_openai(**{key: value})), f'Services[0] ("a").{key}: {problem}'
            )

    def test_metadata_key_twice(self) -> None:
        """A key given twice inside Metadata is refused with its path."""
        text = (
            '{"Services": [{"Name": "a", "ListenPort": "8080", "ProxyTargetPort": "18080",'
            ' "Command": "server", "OpenAiApi": true, "Metadata": {"x": {"y": 1, "y": 2}}}]}'
        )
        self.assertProblem(text, 'Services[0] ("a").Metadata.x.y: given twice')


class LoadingFeedbackTests(ConfigTestCase):
    """C{OpenAiApi.LoadingFeedback}."""

    def test_values(self) -> None:
        """Absent and false: off; true: progress; "comments": comments only."""
        for given, expected in [
            (..., LOADING_FEEDBACK_OFF),
            (False, LOADING_FEEDBACK_OFF),
            (True, LOADING_FEEDBACK_PROGRESS),
            ("comments", LOADING_FEEDBACK_COMMENTS),
        ]:
            keys = {} if given is ... else {"LoadingFeedback": given}
            config = parse(document(OpenAiApi={"ListenPort": 7070, **keys}))
            self.assertEqual(config.openai_loading_feedback, expected)

    def test_bad(self) -> None:
        """Anything else is refused."""
        self.assertProblem(
            document(OpenAiApi={"ListenPort": 7070, "LoadingFeedback": "yes"}),
            'OpenAiApi.LoadingFeedback: expected true, false or "comments", got "yes"',
        )
