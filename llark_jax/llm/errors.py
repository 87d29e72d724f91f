"""Errors a reply parser raises; `llark_jax.llm.client.ChatClient` retries the request on both.

Kept apart from the client so parsers (instruction replies, judge choices) import them without
`openai`.
"""

from __future__ import annotations


class ReplyParseError(ValueError):
    """The reply holds no usable value (no JSON, no option label, ...)."""


class ReplySchemaError(ValueError):
    """The reply parsed but does not have the required shape."""
