"""The chat page (``GET /``): a static app shipped inside the package.

This package holds ``index.html``, ``app.js``, ``app.css`` and
``crypto.js`` (the bundled ``@noble`` code, rebuilt by ``web/build.sh``).
They are read once, when the app is built, and served from memory with a
strict Content-Security-Policy: scripts, styles and connections from this
origin only, no inline script, no frames, no external font, image or CDN.

The same page is served by ``enclaved serve`` (``mode = "node"``: the
browser does the E2EE and checks the attestation and signatures itself)
and by ``enclaved proxy`` (``mode = "proxy"``: the local proxy encrypts
and verifies; the page says so).
"""

from __future__ import annotations

from importlib import resources
from typing import Literal

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

#: Every request the page makes goes to the origin that served it.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "crypto.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
#: The page's placeholder for who serves it.
_MODE_MARK = 'data-mode="node"'


def _read(name: str) -> bytes:
    return resources.files(__name__).joinpath(name).read_bytes()


def web_routes(mode: Literal["node", "proxy"] = "node") -> list[BaseRoute]:
    """``GET /`` (the page) and ``GET /assets/<name>`` (its files)."""
    page = _read("index.html").replace(_MODE_MARK.encode(), f'data-mode="{mode}"'.encode())
    assets = {name: (_read(name), media) for name, media in ASSETS.items()}

    async def index(request: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=HEADERS)

    async def asset(request: Request) -> Response:
        found = assets.get(request.path_params["name"])
        if found is None:
            return Response(b"not found", status_code=404, media_type="text/plain")
        body, media = found
        return Response(body, media_type=media, headers=HEADERS)

    return [
        Route("/", index, methods=["GET"]),
        Route("/assets/{name}", asset, methods=["GET"]),
    ]
