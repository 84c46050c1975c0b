"""Step 6: the engine's stream, and what its failures become.

The first chunk is awaited before any response byte is written
(:func:`first_chunk`), so that a backend that fails at once gets a real
HTTP error status (:func:`backend_http_error`); after that, failures are
SSE error events (:mod:`.stream`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from ...protocol.errors import INVALID_REQUEST, SERVER_ERROR
from ..backends.base import BackendError
from ..errors import HTTPError

__all__ = ["aclose", "backend_http_error", "first_chunk"]


async def first_chunk(stream: AsyncIterator[dict[str, Any]]) -> dict[str, Any] | None:
    """The stream's first chunk, or ``None`` when it ends at once."""
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return None


def backend_http_error(exc: BackendError) -> HTTPError:
    """A backend failure before the first byte: its status, its (content-free) message."""
    status = exc.status if 400 <= exc.status <= 599 else 502
    return HTTPError(
        status, exc.message, code=exc.code, type=INVALID_REQUEST if status < 500 else SERVER_ERROR
    )


async def aclose(stream: AsyncIterator[Any]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()
