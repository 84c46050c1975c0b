"""``GET /ready``: whether this node can serve now, for a load balancer.

``/health`` says the process is alive (liveness: restart it if not).
``/ready`` says whether to send it traffic: every part a request needs
answers, each within :data:`PROBE_TIMEOUT_SECONDS`:

- ``engines``: every backend is ready (the embedded model is loaded; an
  upstream engine answers ``GET /models`` and lists its model);
- ``evidence``: the evidence source makes a quote (the dstack agent
  answers);
- ``store``: the signature store answers a lookup.

The answer names each part and, for a failing one, the error's type or code
only (``{"ok": false, "error": "upstream_error"}``): no address, key or
message of the underlying failure. 200 ``{"status": "ready"}`` or 503
``{"status": "not_ready"}``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from .node import Node

#: Each part gets this long to answer.
PROBE_TIMEOUT_SECONDS = 5.0
#: A request id no answer has: the store's lookup of it is the probe.
_PROBE_ID = "ready-probe"


async def _probe(check: Awaitable[Any]) -> dict[str, Any]:
    try:
        await asyncio.wait_for(check, PROBE_TIMEOUT_SECONDS)
    except TimeoutError:
        return {"ok": False, "error": "timeout"}
    except Exception as exc:  # noqa: BLE001 - any failure is "not ready"; only its kind is told
        return {"ok": False, "error": getattr(exc, "code", None) or type(exc).__name__}
    return {"ok": True}


async def _engines(node: Node) -> None:
    seen: set[int] = set()
    for backend in node.backends.values():
        if id(backend) in seen:
            continue
        seen.add(id(backend))
        probe = getattr(backend, "ready", None)
        if probe is not None:
            await probe()


async def readiness(node: Node) -> tuple[bool, dict[str, Any]]:
    """``(ready, body)`` for ``GET /ready``."""
    engines, evidence, store = await asyncio.gather(
        _probe(_engines(node)),
        _probe(node.evidence.quote(bytes(64))),
        _probe(node.store.get(_PROBE_ID)),
    )
    checks = {"engines": engines, "evidence": evidence, "store": store}
    ready = all(c["ok"] for c in checks.values())
    return ready, {"status": "ready" if ready else "not_ready", "checks": checks}
