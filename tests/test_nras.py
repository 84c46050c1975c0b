"""NRAS, NVIDIA's attestation service: the recorded answers verify, forgeries do not.

Ground truth: each capture holds NRAS's answer for its ``nvidia_payload``
(``0006_*``, a list of ES384 JWTs) and NRAS's JWKS (``0007_*``), recorded at
capture time. The network is a ``httpx.MockTransport`` serving those bodies.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from conftest import REPORT_CAPTURES
from cryptography.hazmat.primitives.asymmetric import ec

from enclaved.attestation.checks import Check, Status
from enclaved.attestation.nvidia import NvidiaPayload, parse_nvidia_payload
from enclaved.attestation.nvidia.nras import (
    NRAS_ATTEST_URL,
    NRAS_JWKS_URL,
    NrasAnswer,
    NrasJwks,
    NrasKey,
    acheck_with_nras,
    check_with_nras,
    fetch_nras_jwks,
    parse_nras_answer,
    parse_nras_jwks,
    post_to_nras,
    verify_nras_answer,
)
from enclaved.errors import EvidenceParseError, NetworkError

CAPTURES = [c / "manifest.json" for c in REPORT_CAPTURES]


@dataclasses.dataclass(frozen=True)
class Capture:
    payload: NvidiaPayload
    nonce: bytes
    now: datetime
    request_body: bytes
    answer_body: bytes
    jwks_body: bytes


def load(manifest: Path) -> Capture:
    responses = manifest.parent / "responses"
    report = json.loads(next(responses.glob("0001_*.body")).read_bytes())
    headers = json.loads(next(responses.glob("0001_*.json")).read_bytes())["headers"]
    request = json.loads(next(responses.glob("0006_*.json")).read_bytes())
    return Capture(
        payload=parse_nvidia_payload(report["nvidia_payload"]),
        nonce=bytes.fromhex(json.loads(manifest.read_bytes())["nonce_hex"]),
        now=parsedate_to_datetime(headers["Date"][0]),
        request_body=base64.b64decode(request["req_body_base64"]),
        answer_body=next(responses.glob("0006_*.body")).read_bytes(),
        jwks_body=next(responses.glob("0007_*.body")).read_bytes(),
    )


@pytest.fixture(scope="module", params=CAPTURES, ids=lambda p: p.parent.name.split("_")[0])
def capture(request: pytest.FixtureRequest) -> Capture:
    return load(request.param)


@pytest.fixture(scope="module")
def venice() -> Capture:
    return load(next(p for p in CAPTURES if p.parent.name.startswith("venice")))


def failed_ids(checks: list[Check]) -> set[str]:
    return {c.id for c in checks if c.status is not Status.PASS}


ALL_GPUS = {f"nvidia.nras.gpu[{i}]" for i in range(8)}
IDS = [f"nvidia.nras.gpu[{i}]" for i in range(8)] + ["nvidia.nras"]


def verify(c: Capture, answer: NrasAnswer | None = None, **kw: Any) -> list[Check]:
    args: dict[str, Any] = {
        "jwks": parse_nras_jwks(c.jwks_body),
        "expected_nonce": c.nonce,
        "now": c.now,
        "payload": c.payload,
    }
    args.update(kw)
    return verify_nras_answer(answer or parse_nras_answer(c.answer_body), **args)


# -- the recorded answers verify ---------------------------------------------


def test_recorded_answer_verifies_at_capture_time(capture: Capture) -> None:
    checks = verify(capture)
    assert [c.id for c in checks] == IDS
    assert failed_ids(checks) == set(), "\n".join(f"{c.id}: {c.reason}" for c in checks)
    assert "overall result true for 8 GPU(s)" in checks[-1].reason
    assert "570.172.08" in checks[0].reason


def test_request_is_the_payload_byte_for_byte(capture: Capture) -> None:
    # What NVIDIA's production verifier posted is exactly the nvidia_payload string.
    assert capture.request_body == capture.payload.raw_json.encode()


class FakeNras:
    """Serves the recorded bodies; records what it was asked."""

    def __init__(self, capture: Capture, *, status: int = 200, fail: bool = False) -> None:
        self.capture, self.status, self.fail = capture, status, fail
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.fail:
            raise httpx.ConnectError("connection refused", request=request)
        if request.method == "POST" and str(request.url) == NRAS_ATTEST_URL:
            return httpx.Response(self.status, content=self.capture.answer_body)
        if request.method == "GET" and str(request.url) == NRAS_JWKS_URL:
            return httpx.Response(self.status, content=self.capture.jwks_body)
        return httpx.Response(404)


def test_online_step_through_a_mock_transport(capture: Capture) -> None:
    nras = FakeNras(capture)
    with httpx.Client(transport=httpx.MockTransport(nras)) as client:
        checks = check_with_nras(
            capture.payload, expected_nonce=capture.nonce, now=capture.now, client=client
        )
    assert failed_ids(checks) == set()
    post, get = nras.requests
    assert post.method == "POST" and post.content == capture.request_body
    assert post.headers["content-type"] == "application/json"
    assert get.method == "GET" and str(get.url) == NRAS_JWKS_URL


def test_online_step_async(venice: Capture) -> None:
    async def run() -> list[Check]:
        transport = httpx.MockTransport(FakeNras(venice))
        async with httpx.AsyncClient(transport=transport) as client:
            return await acheck_with_nras(
                venice.payload, expected_nonce=venice.nonce, now=venice.now, client=client
            )

    assert failed_ids(asyncio.run(run())) == set()


@pytest.mark.parametrize(
    "nras", [{"fail": True}, {"status": 500}, {"status": 400}], ids=["refused", "500", "400"]
)
def test_network_failures_are_network_errors(venice: Capture, nras: dict[str, Any]) -> None:
    with httpx.Client(transport=httpx.MockTransport(FakeNras(venice, **nras))) as client:
        with pytest.raises(NetworkError):
            post_to_nras(venice.payload, client=client)
        with pytest.raises(NetworkError):
            fetch_nras_jwks(client=client)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'[["JWT", 1], {}]',
        b'[["JWS", "x"], {}]',
        b'[["JWT", "x"], {"GPU-0": 5}]',
    ],
)
def test_malformed_answer_is_a_parse_error(body: bytes) -> None:
    with pytest.raises(EvidenceParseError):
        parse_nras_answer(body)


@pytest.mark.parametrize(
    "body", [b"{}", b'{"keys": []}', b'{"keys": [{"kid": "k", "kty": "RSA"}]}', b"nope"]
)
def test_malformed_jwks_is_a_parse_error(body: bytes) -> None:
    with pytest.raises(EvidenceParseError):
        parse_nras_jwks(body)


# -- forgeries and mismatches -------------------------------------------------


def _flip_char(token: str, segment: int, at: int) -> str:
    parts = token.split(".")
    s = parts[segment]
    parts[segment] = s[:at] + ("A" if s[at] != "A" else "B") + s[at + 1 :]
    return ".".join(parts)


def _edit_claims(token: str, **claims: Any) -> str:
    """Change claims without re-signing (the signature no longer covers them)."""
    header, payload, signature = token.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body.update(claims)
    encoded = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    return f"{header}.{encoded}.{signature}"


def _platform(edit: Callable[[str], str]) -> Callable[[NrasAnswer], NrasAnswer]:
    return lambda a: dataclasses.replace(a, platform_token=edit(a.platform_token))


def _gpu(i: int, edit: Callable[[str], str]) -> Callable[[NrasAnswer], NrasAnswer]:
    def mutate(a: NrasAnswer) -> NrasAnswer:
        tokens = [(n, edit(t) if n == f"GPU-{i}" else t) for n, t in a.gpu_tokens]
        return dataclasses.replace(a, gpu_tokens=tuple(tokens))

    return mutate


def _swap(i: int, j: int) -> Callable[[NrasAnswer], NrasAnswer]:
    def mutate(a: NrasAnswer) -> NrasAnswer:
        tokens = dict(a.gpu_tokens)
        tokens[f"GPU-{i}"], tokens[f"GPU-{j}"] = tokens[f"GPU-{j}"], tokens[f"GPU-{i}"]
        return dataclasses.replace(a, gpu_tokens=tuple(tokens.items()))

    return mutate


def _drop(i: int) -> Callable[[NrasAnswer], NrasAnswer]:
    return lambda a: dataclasses.replace(
        a, gpu_tokens=tuple(t for t in a.gpu_tokens if t[0] != f"GPU-{i}")
    )


FORGERIES: list[tuple[str, Callable[[NrasAnswer], NrasAnswer], set[str], str]] = [
    (
        "platform signature",
        _platform(lambda t: _flip_char(t, 2, 40)),
        ALL_GPUS,
        "signature does not verify",
    ),
    ("platform payload", _platform(lambda t: _flip_char(t, 1, 30)), ALL_GPUS, "platform token"),
    (
        "platform overall result false",
        _platform(lambda t: _edit_claims(t, **{"x-nvidia-overall-att-result": False})),
        ALL_GPUS,
        "signature does not verify",
    ),
    ("platform header kid", _platform(lambda t: _flip_char(t, 0, 20)), ALL_GPUS, "platform token"),
    (
        "GPU-3 signature",
        _gpu(3, lambda t: _flip_char(t, 2, 100)),
        {"nvidia.nras.gpu[3]"},
        "signature does not verify",
    ),
    (
        "GPU-3 measres",
        _gpu(3, lambda t: _edit_claims(t, measres="fail")),
        {"nvidia.nras.gpu[3]"},
        "signature",
    ),
    (
        "GPU-1 and GPU-2 swapped",
        _swap(1, 2),
        {"nvidia.nras.gpu[1]", "nvidia.nras.gpu[2]"},
        "SHA-256",
    ),
    ("GPU-7 missing", _drop(7), {"nvidia.nras.gpu[7]"}, "no GPU-7 token"),
]


@pytest.mark.parametrize(
    ("name", "mutate", "gpus", "reason"), FORGERIES, ids=[f[0] for f in FORGERIES]
)
def test_forgery_fails_the_right_rows(
    venice: Capture,
    name: str,
    mutate: Callable[[NrasAnswer], NrasAnswer],
    gpus: set[str],
    reason: str,
) -> None:
    checks = verify(venice, mutate(parse_nras_answer(venice.answer_body)))
    assert failed_ids(checks) == gpus | {"nvidia.nras"}
    assert reason in " ".join(c.reason for c in checks if c.status is Status.FAIL)


def test_wrong_nonce_fails_every_token(venice: Capture) -> None:
    checks = verify(venice, expected_nonce=bytes(32))
    assert failed_ids(checks) == set(IDS)
    assert "eat_nonce" in checks[0].reason


def test_long_after_capture_the_tokens_have_expired(venice: Capture) -> None:
    # NRAS tokens live an hour: well past that, but before the JWKS key certificate expires.
    checks = verify(venice, now=venice.now + timedelta(hours=3))
    assert failed_ids(checks) == set(IDS)
    assert "expired at" in checks[-1].reason and "expired at" in checks[0].reason


def test_long_after_capture_the_signing_key_certificate_has_expired_too(venice: Capture) -> None:
    answer = parse_nras_answer(venice.answer_body)
    later = venice.now + timedelta(days=30)
    # Even with an eternal token the key's x5c certificate is out of date.
    checks = verify(venice, answer, now=later, leeway=timedelta(days=60))
    assert failed_ids(checks) == set(IDS)
    assert "certificate valid" in checks[-1].reason


def test_before_the_tokens_were_issued(venice: Capture) -> None:
    checks = verify(venice, now=venice.now - timedelta(hours=1))
    assert failed_ids(checks) == set(IDS)
    assert "not valid before" in checks[-1].reason


def test_unknown_key(venice: Capture) -> None:
    keys = parse_nras_jwks(venice.jwks_body).keys
    kid = jwt.get_unverified_header(parse_nras_answer(venice.answer_body).platform_token)["kid"]
    checks = verify(venice, jwks=NrasJwks({k: v for k, v in keys.items() if k != kid}))
    assert failed_ids(checks) == set(IDS)
    assert "is not in NRAS's JWKS" in checks[-1].reason


def test_answer_for_other_gpus_fails_the_ueid_binding(venice: Capture) -> None:
    # The same GPUs, listed in another order: every token names another GPU.
    reordered = dataclasses.replace(venice.payload, gpus=venice.payload.gpus[::-1])
    checks = verify(venice, payload=reordered)
    assert failed_ids(checks) == set(IDS)
    assert "ueid" in checks[0].reason


# -- semantic checks, with tokens signed by a key we control -------------------


@pytest.fixture(scope="module")
def attacker() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def _resign(
    c: Capture, key: ec.EllipticCurvePrivateKey, platform: dict[str, Any], gpu: dict[str, Any]
) -> tuple[NrasAnswer, NrasJwks]:
    """Re-sign the recorded claims (with edits) under our own JWKS, keeping every binding."""
    original = parse_nras_answer(c.answer_body)
    tokens = []
    for name, token in original.gpu_tokens:
        claims = jwt.decode(token, options={"verify_signature": False})
        claims.update(gpu.get(name, {}))
        tokens.append((name, jwt.encode(claims, key, algorithm="ES384", headers={"kid": "test"})))
    claims = jwt.decode(original.platform_token, options={"verify_signature": False})
    claims["submods"] = {
        n: ["DIGEST", ["SHA-256", hashlib.sha256(t.encode()).hexdigest()]] for n, t in tokens
    }
    claims.update(platform)
    answer = NrasAnswer(
        jwt.encode(claims, key, algorithm="ES384", headers={"kid": "test"}), tuple(tokens)
    )
    return answer, NrasJwks({"test": NrasKey("test", key.public_key(), ())})


def test_resigned_answer_verifies_under_its_own_jwks(
    venice: Capture, attacker: ec.EllipticCurvePrivateKey
) -> None:
    answer, jwks = _resign(venice, attacker, {}, {})
    assert failed_ids(verify(venice, answer, jwks=jwks)) == set()
    # ...and not under NRAS's keys.
    assert failed_ids(verify(venice, answer)) == set(IDS)


@pytest.mark.parametrize(
    ("platform", "gpu", "failed", "reason"),
    [
        ({"x-nvidia-overall-att-result": False}, {}, set(), "x-nvidia-overall-att-result is False"),
        (
            {"x-nvidia-overall-att-result": "true"},
            {},
            set(),
            "x-nvidia-overall-att-result is 'true'",
        ),
        ({"iss": "https://evil.example"}, {}, ALL_GPUS, "Invalid issuer"),
        ({}, {"GPU-4": {"measres": "fail"}}, {"nvidia.nras.gpu[4]"}, "measres is 'fail'"),
        ({}, {"GPU-4": {"eat_nonce": "00" * 32}}, {"nvidia.nras.gpu[4]"}, "eat_nonce"),
        ({}, {"GPU-4": {"ueid": "1"}}, {"nvidia.nras.gpu[4]"}, "ueid 1"),
        ({"submods": {}}, {}, ALL_GPUS, "SHA-256"),
    ],
    ids=[
        "overall false",
        "overall not a boolean",
        "issuer",
        "measres",
        "gpu nonce",
        "ueid",
        "no submods",
    ],
)
def test_claims_are_checked(
    venice: Capture,
    attacker: ec.EllipticCurvePrivateKey,
    platform: dict[str, Any],
    gpu: dict[str, Any],
    failed: set[str],
    reason: str,
) -> None:
    answer, jwks = _resign(venice, attacker, platform, gpu)
    checks = verify(venice, answer, jwks=jwks)
    assert failed_ids(checks) == failed | {"nvidia.nras"}
    assert reason in " ".join(c.reason for c in checks if c.status is Status.FAIL)


def test_only_es384_is_accepted(venice: Capture) -> None:
    answer = parse_nras_answer(venice.answer_body)
    claims = jwt.decode(answer.platform_token, options={"verify_signature": False})
    kid = jwt.get_unverified_header(answer.platform_token)["kid"]
    forged = jwt.encode(claims, "s" * 48, algorithm="HS384", headers={"kid": kid})
    checks = verify(venice, dataclasses.replace(answer, platform_token=forged))
    assert "alg 'HS384' is not ES384" in checks[-1].reason


def test_jwk_whose_certificate_holds_another_key(
    venice: Capture, attacker: ec.EllipticCurvePrivateKey
) -> None:
    # Tokens signed by our key, published under our kid with NRAS's certificate chain.
    answer, _ = _resign(venice, attacker, {}, {})
    kid = jwt.get_unverified_header(parse_nras_answer(venice.answer_body).platform_token)["kid"]
    nras_certs = parse_nras_jwks(venice.jwks_body).keys[kid].certificates
    jwks = NrasJwks({"test": NrasKey("test", attacker.public_key(), nras_certs)})
    checks = verify(venice, answer, jwks=jwks)
    assert failed_ids(checks) == set(IDS)
    assert "x5c certificate does not hold the JWK's key" in checks[-1].reason
