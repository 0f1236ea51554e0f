"""
What the demo "model" answers on Anthropic's Messages API, as llama.cpp
serves it: C{POST /v1/messages} (a message whose content is one text block,
or with C{"stream": true} Anthropic's event sequence) and C{POST
/v1/messages/count_tokens}.  The text is the demo's usual one
(L{lmproxy.demo.answers.Completions.tokens}); like the rest of the demo, it
knows nothing of HTTP or time.
"""

from __future__ import annotations

from attrs import frozen

from lmproxy.demo.answers import (
    BadRequest,
    Completions,
    JSONObject,
    Reply,
    StreamedReply,
    count_words,
    message_text,
    optional_bool,
)

# Anthropic's stop reasons for the demo's finish reasons.
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens"}


def _messages(body: JSONObject) -> list[JSONObject]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise BadRequest("'messages' must be a list of message objects", "messages")
    return messages


def input_tokens(body: JSONObject) -> int:
    """
    How many "tokens" the C{system} prompt and the C{messages} of C{body} count for.

    @raise BadRequest: if C{messages} is not a list of message objects.
    """
    texts = [
        message_text(body.get("system")),
        *(message_text(m.get("content")) for m in _messages(body)),
    ]
    return sum(count_words(text) for text in texts)


@frozen
class Messages:
    """
    The demo model's Messages API.

    @ivar completions: gives the text and the ids of every answer.
    """

    completions: Completions

    def create(self, body: JSONObject) -> Reply | StreamedReply:
        """
        The answer to C{POST /v1/messages} with the (parsed) C{body}.

        @raise BadRequest: if C{body} is not a Messages request.
        """
        counted = input_tokens(body)
        user = [m.get("content") for m in _messages(body) if m.get("role") == "user"]
        tokens, finish = self.completions.tokens(body, message_text(user[-1]) if user else "")
        stop_reason = _STOP_REASONS[finish]
        message = {
            "id": self.completions.next_id("msg"),
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [{"type": "text", "text": "".join(tokens)}],
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {"input_tokens": counted, "output_tokens": len(tokens)},
        }
        if not optional_bool(body, "stream"):
            return Reply(message)
        started = {
            **message,
            "content": [],
            "stop_reason": None,
            "usage": {"input_tokens": counted, "output_tokens": 0},
        }
        block: JSONObject = {"type": "text", "text": ""}
        events: list[JSONObject] = [
            {"type": "message_start", "message": started},
            {"type": "content_block_start", "index": 0, "content_block": block},
            *(
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": token},
                }
                for token in tokens
            ),
            {"type": "content_block_stop", "index": 0},
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": len(tokens)},
            },
            {"type": "message_stop"},
        ]
        return StreamedReply(events, named=True)

    def count_tokens(self, body: JSONObject) -> Reply:
        """
        The answer to C{POST /v1/messages/count_tokens}: C{{"input_tokens": n}}.

        @raise BadRequest: if C{body} is not a Messages request.
        """
        return Reply({"input_tokens": input_tokens(body)})
