"""
Errors in OpenAI's shape, C{{"error": {"message", "type", "param", "code"}}},
as the OpenAI port and the demo model server answer them (OpenAI's SDKs read
C{message} and C{code} from there).
"""

from __future__ import annotations

from typing import Any


def error_document(
    message: str,
    kind: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """An OpenAI error body: C{kind} is its C{type}."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
