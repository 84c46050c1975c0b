"""The server's error documents: OpenAI-style, with stable ``type`` and ``code``.

Every error the server answers is an :class:`HTTPError` raised by route code
and turned into::

    {"error": {"message": "...", "type": "...", "param": null | "...", "code": "..."}}

``type`` and ``code`` are part of the API: clients branch on them, so they
never change once released. The full table (status, type, code, message,
when) is ``docs/errors.md``; keep the two in sync.

Messages never contain prompt or completion content, keys, or internal
exception text.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import Error

# ``type`` values (OpenAI's vocabulary): the protocol's, re-exported for route code.
from ..protocol.errors import AUTHENTICATION, INVALID_REQUEST, NOT_FOUND, SERVER_ERROR

__all__ = [
    "AUTHENTICATION",
    "INVALID_REQUEST",
    "NOT_FOUND",
    "SERVER_ERROR",
    "SHUTTING_DOWN_MESSAGE",
    "HTTPError",
    "internal_error",
    "invalid_parameter",
    "missing_parameter",
    "model_not_found",
    "shutting_down",
]


class HTTPError(Error):
    """An error answered to the client. Route code raises it; the app renders it."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def document(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def body(self) -> bytes:
        return orjson.dumps(self.document())


# -- the catalogue -------------------------------------------------------------
# Small constructors so that a message and its code cannot drift apart.


def model_not_found(model_id: str) -> HTTPError:
    return HTTPError(
        404, f"Model {model_id} not found", code="model_not_found", type=NOT_FOUND, param="model"
    )


def missing_parameter(name: str) -> HTTPError:
    return HTTPError(
        400, f"Missing required parameter: '{name}'", code="missing_required_parameter", param=name
    )


def invalid_parameter(name: str, message: str) -> HTTPError:
    return HTTPError(400, message, code="invalid_parameter", param=name)


#: What a stream cut short by the node's shutdown says (503, or mid-stream the error event).
SHUTTING_DOWN_MESSAGE = "The node is shutting down"


def shutting_down() -> HTTPError:
    return HTTPError(503, SHUTTING_DOWN_MESSAGE, code="shutting_down", type=SERVER_ERROR)


def internal_error() -> HTTPError:
    return HTTPError(500, "Internal server error", code="internal_error", type=SERVER_ERROR)
