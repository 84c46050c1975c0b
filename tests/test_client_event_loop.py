"""The async client never stalls its event loop while it attests a node.

A first request through :class:`AsyncEnclavedTransport` (and so through
``enclaved.AsyncOpenAI`` and the proxy) has to fetch Intel's collateral for
the node's platform, and with ``require_nras`` NVIDIA's verdict on its GPUs.
Those services can be slow; while they answer, every other task on the loop
(other users' streams, in the proxy) must keep running.

The node and the services are one real HTTP server on 127.0.0.1 (uvicorn in
a thread, with its own loop): the production attestation captured from
Venice, and Intel PCS / NRAS answering with the bodies and headers recorded
in the same capture - after a delay. A ticker task on the client's loop
measures how late it wakes up while the first request runs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import json
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import CAPTURES, running_server
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from enclaved.attestation import AttestationReport, Policy, Status, Verifier
from enclaved.attestation.tdx import PcsCollateral
from enclaved.client import AsyncEnclavedTransport, EnclavedTransport
from enclaved.client.proxy import create_proxy_app
from enclaved.errors import ConfigError, NetworkError

CAPTURE = CAPTURES / "venice_e2ee-qwen3-5-122b-a10b_20260424_015841"
RESPONSES = CAPTURE / "responses"
CAPTURED_AT = datetime.datetime(2026, 4, 24, 1, 58, 32, tzinfo=datetime.UTC)
MODEL = "e2ee-qwen3-5-122b-a10b"
#: How long the slow service takes to answer, and how late the loop may wake
#: up meanwhile: the verification's own CPU work is tens of milliseconds.
DELAY = 1.5
MAX_LAG = 0.2

pytestmark = pytest.mark.skipif(not CAPTURE.is_dir(), reason="shared/testdata/captures missing")


def _recorded(prefix: str) -> tuple[bytes, dict[str, Any]]:
    body = next(RESPONSES.glob(f"{prefix}_*.body")).read_bytes()
    meta = json.loads(next(RESPONSES.glob(f"{prefix}_*.json")).read_text())
    return body, meta


class RecordedServices:
    """The node, Intel PCS and NRAS, as the capture recorded them; ``slow`` paths wait ``DELAY``."""

    def __init__(self, slow: set[str]) -> None:
        self.slow = slow
        self.failing: set[str] = set()  # paths that answer 503
        self.paths: list[str] = []
        doc, _ = _recorded("0001")
        self.attestation = json.loads(doc)
        self.nonce = bytes.fromhex(json.loads((CAPTURE / "manifest.json").read_text())["nonce_hex"])
        self.routes: dict[str, tuple[bytes, dict[str, str]]] = {}
        for prefix in ("0002", "0003", "0004", "0005", "0006", "0007"):
            body, meta = _recorded(prefix)
            path = urllib.parse.urlsplit(meta["url"]).path
            headers = {k: v[0] for k, v in meta["headers"].items() if "chain" in k.lower()}
            self.routes[path] = (body, headers)

    async def handle(self, request: Request) -> Response:
        path = request.url.path
        self.paths.append(path)
        if path in self.slow:
            await asyncio.sleep(DELAY)
        if path in self.failing:
            return Response(b"busy", status_code=503)
        if path == "/api/v1/tee/attestation":
            assert request.query_params["nonce"] == self.nonce.hex()
            return JSONResponse(self.attestation)
        if path == "/api/v1/models":
            return JSONResponse({"object": "list", "data": [{"id": MODEL, "object": "model"}]})
        if path == "/api/v1/chat/completions":
            return JSONResponse(
                {"error": {"message": "recorded node is offline", "type": "server_error"}}, 503
            )
        if path not in self.routes:
            return Response(status_code=404)
        body, headers = self.routes[path]
        return Response(body, headers=headers)

    def app(self) -> Starlette:
        paths = [
            "/api/v1/tee/attestation",
            "/api/v1/chat/completions",
            "/api/v1/models",
            *self.routes,
        ]
        return Starlette(routes=[Route(p, self.handle, methods=["GET", "POST"]) for p in paths])


@pytest.fixture
def services(request: pytest.FixtureRequest) -> Iterator[tuple[RecordedServices, str]]:
    slow = getattr(request, "param", {"/tdx/certification/v4/tcb"})
    services = RecordedServices(slow)
    with running_server(services.app()) as base:
        yield services, base


def _pcs(base: str, cache_dir: Path | None = None) -> PcsCollateral:
    return PcsCollateral(
        base,
        root_ca_crl_url=f"{base}/IntelSGXRootCA.der",
        clock=lambda: CAPTURED_AT,
        cache_dir=cache_dir,
    )


def _nras(base: str) -> Any:
    from enclaved.attestation.verifier import online_nras

    return online_nras(attest_url=f"{base}/v3/attest/gpu", jwks_url=f"{base}/.well-known/jwks.json")


async def _first_request_with_a_ticker(
    transport: AsyncEnclavedTransport, base: str
) -> tuple[httpx.Response, float, float]:
    """(the answer, the loop's worst lag, the request's duration), both in seconds."""
    worst = 0.0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal worst
        while not done.is_set():
            before = time.monotonic()
            await asyncio.sleep(0.01)
            worst = max(worst, time.monotonic() - before - 0.01)

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)  # the ticker is running
    started = time.monotonic()
    try:
        async with httpx.AsyncClient(transport=transport) as client:
            answer = await client.post(
                f"{base}/api/v1/chat/completions",
                json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
            )
    finally:
        took = time.monotonic() - started
        done.set()
        await tick
        print(f"\nfirst request {took * 1000:.0f} ms, worst event-loop lag {worst * 1000:.0f} ms")
    return answer, worst, took


def _assert_attested_with_collateral(transport: AsyncEnclavedTransport | EnclavedTransport) -> None:
    node = transport.last_attestation
    assert (
        node is not None
        and node.describe() == "intel-tdx, 0x6525e128afcffebf7eed05d485d7be983cdae934"
    )
    for cid in ("tdx.collateral.tcb_info.signature", "tdx.collateral.pck_crl", "tdx.tcb.status"):
        row = node.verdict.get(cid)
        assert row is not None and row.status is Status.PASS, (cid, row)


def test_a_slow_intel_pcs_does_not_stall_the_async_clients_loop(
    services: tuple[RecordedServices, str],
) -> None:
    recorded, base = services
    verifier = Verifier(Policy.strict(), collateral=_pcs(base), now=lambda: CAPTURED_AT)
    transport = AsyncEnclavedTransport(
        httpx.AsyncHTTPTransport(), verifier=verifier, random=lambda n: recorded.nonce
    )
    answer, worst, took = asyncio.run(_first_request_with_a_ticker(transport, base))
    # The request went all the way: attested with Intel's collateral, then sent.
    assert answer.status_code == 503
    _assert_attested_with_collateral(transport)
    assert "/tdx/certification/v4/tcb" in recorded.paths
    assert took >= DELAY
    # ...and meanwhile the loop kept ticking.
    assert worst < MAX_LAG, (
        f"the event loop stalled {worst * 1000:.0f} ms during a {took:.2f} s request"
    )


@pytest.mark.parametrize("services", [{"/v3/attest/gpu"}], indirect=True)
def test_a_slow_nras_does_not_stall_the_async_clients_loop(
    services: tuple[RecordedServices, str],
) -> None:
    recorded, base = services
    verifier = Verifier(
        Policy.strict().__class__(require_nras=True),
        collateral=_pcs(base),
        nras=_nras(base),
        now=lambda: CAPTURED_AT,
    )
    transport = AsyncEnclavedTransport(
        httpx.AsyncHTTPTransport(), verifier=verifier, random=lambda n: recorded.nonce
    )
    answer, worst, took = asyncio.run(_first_request_with_a_ticker(transport, base))
    assert answer.status_code == 503
    node = transport.last_attestation
    assert node is not None
    assert [r.status for r in node.verdict if r.id.startswith("nvidia.nras")] == [Status.PASS] * 9
    assert took >= DELAY
    assert worst < MAX_LAG, (
        f"the event loop stalled {worst * 1000:.0f} ms during a {took:.2f} s request"
    )


@pytest.mark.parametrize("services", [set()], indirect=True)
def test_the_sync_client_fetches_the_same_collateral_and_caches_it_on_disk(
    services: tuple[RecordedServices, str], tmp_path: Path
) -> None:
    recorded, base = services
    for _ in range(2):  # the second transport (a new process, say) reads the disk cache
        verifier = Verifier(
            Policy.strict(), collateral=_pcs(base, tmp_path), now=lambda: CAPTURED_AT
        )
        transport = EnclavedTransport(
            httpx.HTTPTransport(), verifier=verifier, random=lambda n: recorded.nonce
        )
        with httpx.Client(transport=transport) as client:
            answer = client.post(
                f"{base}/api/v1/chat/completions",
                json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
            )
        assert answer.status_code == 503
        _assert_attested_with_collateral(transport)
    assert recorded.paths.count("/tdx/certification/v4/tcb") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["tdx-collateral-90c06f000000-platform.json"]


@pytest.mark.parametrize("services", [set()], indirect=True)
def test_an_unreachable_pcs_is_a_network_error_for_the_async_client_too(
    services: tuple[RecordedServices, str],
) -> None:
    recorded, base = services
    recorded.failing.add("/tdx/certification/v4/qe/identity")
    verifier = Verifier(Policy.strict(), collateral=_pcs(base), now=lambda: CAPTURED_AT)
    transport = AsyncEnclavedTransport(
        httpx.AsyncHTTPTransport(), verifier=verifier, random=lambda n: recorded.nonce
    )
    with pytest.raises(NetworkError, match="HTTP 503"):
        asyncio.run(_first_request_with_a_ticker(transport, base))
    # Never "invalid", and nothing was sent to the node it could not check.
    assert transport.last_attestation is None
    assert "/api/v1/chat/completions" not in recorded.paths
    # The PCS requests stopped at the first failure.
    assert "/sgx/certification/v4/pckcrl" not in recorded.paths


@pytest.mark.parametrize("services", [set()], indirect=True)
def test_verify_opens_no_socket_and_both_getters_fetch_the_same_verdict(
    services: tuple[RecordedServices, str],
) -> None:
    recorded, base = services
    report = AttestationReport.from_json(json.dumps(recorded.attestation))
    verifier = Verifier(Policy.strict(), collateral=_pcs(base), now=lambda: CAPTURED_AT)
    with pytest.raises(ConfigError, match="fetched="):
        verifier.verify(report, nonce=recorded.nonce)
    assert recorded.paths == []
    by_sync = verifier.verify(report, nonce=recorded.nonce, fetched=verifier.fetch(report))
    fresh = Verifier(Policy.strict(), collateral=_pcs(base), now=lambda: CAPTURED_AT)
    fetched = asyncio.run(fresh.afetch(report))
    asked = len(recorded.paths)
    by_async = fresh.verify(report, nonce=recorded.nonce, fetched=fetched)
    assert len(recorded.paths) == asked == 8  # four PCS requests per fetch, none while verifying
    assert by_sync.ok and by_async.ok
    assert [(c.id, c.status) for c in by_sync] == [(c.id, c.status) for c in by_async]


@pytest.mark.parametrize("services", [set()], indirect=True)
def test_the_async_getter_shares_the_disk_cache_and_its_fallback(
    services: tuple[RecordedServices, str], tmp_path: Path
) -> None:
    recorded, base = services
    report = AttestationReport.from_json(json.dumps(recorded.attestation))
    fmspc, ca = bytes.fromhex("90c06f000000"), "platform"
    first = asyncio.run(_pcs(base, tmp_path).aget(fmspc, ca))
    assert recorded.paths.count("/tdx/certification/v4/tcb") == 1
    # A sync source over the same directory reads what the async one stored.
    assert _pcs(base, tmp_path).get(fmspc, ca) == first
    assert recorded.paths.count("/tdx/certification/v4/tcb") == 1
    # Two days on (past max_age, before Intel's nextUpdate) PCS fails: the
    # cached copy is still Intel's current collateral, and is used.
    later = CAPTURED_AT + datetime.timedelta(days=2)
    recorded.failing.add("/tdx/certification/v4/tcb")
    stale = PcsCollateral(
        base, root_ca_crl_url=f"{base}/IntelSGXRootCA.der", clock=lambda: later, cache_dir=tmp_path
    )
    assert asyncio.run(stale.aget(fmspc, ca)) == first
    assert recorded.paths.count("/tdx/certification/v4/tcb") == 2
    # Past nextUpdate there is nothing current to fall back on: a NetworkError.
    gone = PcsCollateral(
        base,
        root_ca_crl_url=f"{base}/IntelSGXRootCA.der",
        clock=lambda: datetime.datetime(2026, 5, 25, tzinfo=datetime.UTC),
        cache_dir=tmp_path,
    )
    with pytest.raises(NetworkError, match="HTTP 503"):
        asyncio.run(gone.aget(fmspc, ca))
    verifier = Verifier(Policy.strict(), collateral=stale, now=lambda: CAPTURED_AT)
    assert verifier.verify(
        report, nonce=recorded.nonce, fetched=asyncio.run(verifier.afetch(report))
    ).ok


def test_the_proxy_serves_other_callers_while_a_first_request_waits_on_intel(
    services: tuple[RecordedServices, str],
) -> None:
    """``enclaved proxy`` runs one loop for every local caller: one caller's
    first attestation (Intel PCS answering in 1.5 s) must not hold up another's
    request."""
    recorded, base = services
    verifier = Verifier(Policy.strict(), collateral=_pcs(base), now=lambda: CAPTURED_AT)
    transport = AsyncEnclavedTransport(
        httpx.AsyncHTTPTransport(), verifier=verifier, random=lambda n: recorded.nonce
    )
    app = create_proxy_app(f"{base}/api/v1", transport=transport)
    with running_server(app) as proxy, concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(
            httpx.post,
            f"{proxy}/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        )
        while "/tdx/certification/v4/tcb" not in recorded.paths:  # it is waiting on Intel now
            time.sleep(0.01)
        started = time.monotonic()
        other = httpx.get(f"{proxy}/v1/models", timeout=30)
        other_took = time.monotonic() - started
        first_was_done = first.done()
        answer = first.result()
    print(f"\nanother caller's request took {other_took * 1000:.0f} ms during the attestation")
    assert other_took < MAX_LAG + 0.3, f"the proxy made another caller wait {other_took:.2f} s"
    assert not first_was_done
    assert other.status_code == 200 and other.json()["data"][0]["id"] == MODEL
    assert answer.status_code == 503  # attested, sent, and the node's own error handed on
    assert transport.last_attestation is not None
