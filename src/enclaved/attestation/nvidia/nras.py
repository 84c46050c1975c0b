"""Ask NVIDIA's Remote Attestation Service (NRAS) about the GPUs, and check its answer.

This is the optional *online* step beside :mod:`.verify`. Local verification
authenticates the evidence; NRAS also *judges* it: it checks revocation
(OCSP) of the device certificates and compares the 64 measurements with the
golden values of NVIDIA's signed reference manifests (RIMs) for the driver
and VBIOS the GPU runs - things an offline verifier cannot do.

The exchange (as NVIDIA's production verifier does it, see the captures'
``0006_nras.attestation.nvidia.com_v3_attest_gpu``):

1. ``POST https://nras.attestation.nvidia.com/v3/attest/gpu`` with the
   ``nvidia_payload`` JSON, byte for byte, as the body.
2. The answer is ``[["JWT", <platform token>], {"GPU-0": <token>, ...}]``:
   one *platform* token with the overall result and, under ``submods``, the
   SHA-256 of each per-GPU token; one token per GPU with its claims
   (``measres``, ``ueid``, driver and VBIOS versions...). All are ES384
   JWTs signed by a key of NRAS's JWKS
   (``https://nras.attestation.nvidia.com/.well-known/jwks.json``).

Then :func:`verify_nras_answer` checks, for every token: the ``kid`` is in
the JWKS, the JWS signature (ES384, via PyJWT), ``iss``, ``nbf``/``iat``/``exp``
at ``now`` (with :data:`DEFAULT_LEEWAY` for clock skew), and ``eat_nonce`` is
the client's nonce. When the JWK carries an ``x5c`` chain, its first
certificate must hold the JWK's key and be valid at ``now``.

Check ids:

=======================  =====================================================
``nvidia.nras.gpu[i]``   GPU ``i``'s token verifies, is listed (by digest) in
                         the platform token, names the GPU of ``evidence_list[i]``
                         (``ueid`` = its leaf certificate serial) and says
                         ``measres: success``
``nvidia.nras``          the platform token verifies, ``x-nvidia-overall-att-result``
                         is ``true``, it lists exactly the GPU tokens received,
                         one per GPU of the payload, and every GPU row passed
=======================  =====================================================

What this does NOT do: trust NRAS's *keys* beyond where they came from. The
JWKS is trusted because it was fetched over TLS from NVIDIA's host (or
recorded from it, in tests); the ``x5c`` chain of its keys ends in an NVIDIA
attestation CA that is not pinned here.

Network and HTTP failures raise :class:`~enclaved.errors.NetworkError`; they
are never reported as a failed verification. A malformed answer or JWKS
raises :class:`~enclaved.errors.EvidenceParseError`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import hashlib
import json
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ...errors import EvidenceParseError, NetworkError
from .._x509 import DECODE_ERRORS, decoded_certificate
from ..checks import Check, CheckId, nras_gpu_check_id
from .parse import NvidiaPayload

NRAS_ATTEST_URL = "https://nras.attestation.nvidia.com/v3/attest/gpu"
NRAS_JWKS_URL = "https://nras.attestation.nvidia.com/.well-known/jwks.json"
#: The ``iss`` of every NRAS token.
NRAS_ISSUER = "https://nras.attestation.nvidia.com"
#: Allowed clock skew between NRAS and ``now`` for ``nbf``, ``iat`` and ``exp``.
DEFAULT_LEEWAY = timedelta(seconds=60)
DEFAULT_TIMEOUT = 30.0
#: The only signature algorithm NRAS uses, and the only one accepted.
ALGORITHM = "ES384"
#: The claim with NRAS's overall verdict in the platform token.
OVERALL_RESULT_CLAIM = "x-nvidia-overall-att-result"


@dataclasses.dataclass(frozen=True)
class NrasAnswer:
    """NRAS's answer, as received: the platform token, then one token per GPU."""

    platform_token: str
    #: ``("GPU-0", token), ("GPU-1", token), ...`` in NRAS's order.
    gpu_tokens: tuple[tuple[str, str], ...]


@dataclasses.dataclass(frozen=True)
class NrasKey:
    """One key of NRAS's JWKS."""

    kid: str
    key: ec.EllipticCurvePublicKey
    #: The ``x5c`` chain, leaf first (may be empty).
    certificates: tuple[x509.Certificate, ...]


@dataclasses.dataclass(frozen=True)
class NrasJwks:
    """NRAS's signing keys, by ``kid``."""

    keys: Mapping[str, NrasKey]


# -- parsing ---------------------------------------------------------------


def parse_nras_answer(body: bytes | str | Sequence[Any]) -> NrasAnswer:
    """Parse NRAS's ``/v3/attest/gpu`` answer: ``[["JWT", token], {"GPU-0": token, ...}]``."""
    doc = _json(body, "NRAS answer")
    if (
        not isinstance(doc, list)
        or len(doc) != 2
        or not isinstance(doc[0], list)
        or len(doc[0]) != 2
        or doc[0][0] != "JWT"
        or not isinstance(doc[0][1], str)
        or not isinstance(doc[1], Mapping)
    ):
        raise EvidenceParseError('NRAS answer is not [["JWT", token], {"GPU-0": token, ...}]')
    gpu_tokens = []
    for name, token in doc[1].items():
        if not isinstance(name, str) or not isinstance(token, str):
            raise EvidenceParseError("NRAS answer: a GPU token is not a string")
        gpu_tokens.append((name, token))
    return NrasAnswer(platform_token=doc[0][1], gpu_tokens=tuple(gpu_tokens))


def parse_nras_jwks(body: bytes | str | Mapping[str, Any]) -> NrasJwks:
    """Parse NRAS's JWKS. Keys that are not EC P-384 are left out; none usable is an error."""
    doc = _json(body, "NRAS JWKS")
    entries = doc.get("keys") if isinstance(doc, Mapping) else None
    if not isinstance(entries, list):
        raise EvidenceParseError("NRAS JWKS has no 'keys' list")
    keys: dict[str, NrasKey] = {}
    for entry in entries:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("kid"), str):
            continue
        try:
            key = jwt.PyJWK.from_dict(dict(entry), algorithm=ALGORITHM).key
        except jwt.PyJWTError:
            continue
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(
            key.curve, ec.SECP384R1
        ):
            continue
        try:
            certificates = tuple(
                decoded_certificate(
                    x509.load_der_x509_certificate(base64.b64decode(c, validate=True))
                )
                for c in entry.get("x5c", [])
            )
        except (*DECODE_ERRORS, binascii.Error, EvidenceParseError) as exc:
            raise EvidenceParseError(f"NRAS JWKS key {entry['kid']}: bad x5c") from exc
        keys[entry["kid"]] = NrasKey(kid=entry["kid"], key=key, certificates=certificates)
    if not keys:
        raise EvidenceParseError("NRAS JWKS holds no usable EC P-384 key")
    return NrasJwks(keys=keys)


# -- network ---------------------------------------------------------------


def post_to_nras(
    payload: NvidiaPayload | str,
    *,
    client: httpx.Client | None = None,
    url: str = NRAS_ATTEST_URL,
    timeout: float = DEFAULT_TIMEOUT,
) -> NrasAnswer:
    """Send the ``nvidia_payload`` to NRAS and parse its answer (not verified yet)."""
    body = payload.raw_json if isinstance(payload, NvidiaPayload) else payload
    with _client(client, timeout) as http:
        response = _send(http, "POST", url, content=body.encode("utf-8"), headers=_JSON)
    return parse_nras_answer(response.content)


def fetch_nras_jwks(
    *,
    client: httpx.Client | None = None,
    url: str = NRAS_JWKS_URL,
    timeout: float = DEFAULT_TIMEOUT,
) -> NrasJwks:
    """Fetch and parse NRAS's signing keys."""
    with _client(client, timeout) as http:
        response = _send(http, "GET", url, headers={"Accept": "application/json"})
    return parse_nras_jwks(response.content)


async def apost_to_nras(
    payload: NvidiaPayload | str,
    *,
    client: httpx.AsyncClient | None = None,
    url: str = NRAS_ATTEST_URL,
    timeout: float = DEFAULT_TIMEOUT,
) -> NrasAnswer:
    """Async twin of :func:`post_to_nras`."""
    body = payload.raw_json if isinstance(payload, NvidiaPayload) else payload
    async with _aclient(client, timeout) as http:
        response = await _asend(http, "POST", url, content=body.encode("utf-8"), headers=_JSON)
    return parse_nras_answer(response.content)


async def afetch_nras_jwks(
    *,
    client: httpx.AsyncClient | None = None,
    url: str = NRAS_JWKS_URL,
    timeout: float = DEFAULT_TIMEOUT,
) -> NrasJwks:
    """Async twin of :func:`fetch_nras_jwks`."""
    async with _aclient(client, timeout) as http:
        response = await _asend(http, "GET", url, headers={"Accept": "application/json"})
    return parse_nras_jwks(response.content)


@dataclasses.dataclass(frozen=True)
class NrasEvidence:
    """What NRAS said about a payload, as received: its answer and the keys to check it.

    What :class:`NrasService` and :class:`RecordedNras` fetch, and what the
    pure :func:`verify_nras_answer` checks.
    """

    answer: NrasAnswer
    jwks: NrasJwks


class NrasService:
    """The live NRAS, behind a sync getter (``client``) and an async one (``async_client``).

    :meth:`fetch` posts the payload and fetches the JWKS (unless ``jwks`` is
    given) with an :class:`httpx.Client`, :meth:`afetch` the same with an
    :class:`httpx.AsyncClient`. Without a client, each call opens its own
    and closes it. Network and HTTP failures raise
    :class:`~enclaved.errors.NetworkError`.
    """

    def __init__(
        self,
        *,
        client: httpx.Client | None = None,
        async_client: httpx.AsyncClient | None = None,
        attest_url: str = NRAS_ATTEST_URL,
        jwks_url: str = NRAS_JWKS_URL,
        timeout: float = DEFAULT_TIMEOUT,
        jwks: NrasJwks | None = None,
    ) -> None:
        self._client = client
        self._async_client = async_client
        self.attest_url = attest_url
        self.jwks_url = jwks_url
        self.timeout = timeout
        self.jwks = jwks

    def fetch(self, payload: NvidiaPayload) -> NrasEvidence:
        with _client(self._client, self.timeout) as http:
            answer = post_to_nras(payload, client=http, url=self.attest_url)
            keys = self.jwks or fetch_nras_jwks(client=http, url=self.jwks_url)
        return NrasEvidence(answer=answer, jwks=keys)

    async def afetch(self, payload: NvidiaPayload) -> NrasEvidence:
        async with _aclient(self._async_client, self.timeout) as http:
            answer = await apost_to_nras(payload, client=http, url=self.attest_url)
            keys = self.jwks or await afetch_nras_jwks(client=http, url=self.jwks_url)
        return NrasEvidence(answer=answer, jwks=keys)


def check_with_nras(
    payload: NvidiaPayload,
    *,
    expected_nonce: bytes,
    now: datetime,
    client: httpx.Client | None = None,
    jwks: NrasJwks | None = None,
) -> list[Check]:
    """The whole online step: post the payload, fetch the JWKS (unless given), verify."""
    got = NrasService(client=client, jwks=jwks).fetch(payload)
    return verify_nras_answer(
        got.answer, jwks=got.jwks, expected_nonce=expected_nonce, now=now, payload=payload
    )


async def acheck_with_nras(
    payload: NvidiaPayload,
    *,
    expected_nonce: bytes,
    now: datetime,
    client: httpx.AsyncClient | None = None,
    jwks: NrasJwks | None = None,
) -> list[Check]:
    """Async twin of :func:`check_with_nras`."""
    got = await NrasService(async_client=client, jwks=jwks).afetch(payload)
    return verify_nras_answer(
        got.answer, jwks=got.jwks, expected_nonce=expected_nonce, now=now, payload=payload
    )


# -- verification ----------------------------------------------------------


def verify_nras_answer(
    answer: NrasAnswer,
    *,
    jwks: NrasJwks,
    expected_nonce: bytes,
    now: datetime,
    payload: NvidiaPayload | None = None,
    leeway: timedelta = DEFAULT_LEEWAY,
    issuer: str = NRAS_ISSUER,
) -> list[Check]:
    """Verify NRAS's tokens; rows ``nvidia.nras.gpu[i]`` then ``nvidia.nras``.

    ``payload``, when given, binds the answer to it: one GPU token per GPU,
    each naming that GPU (``ueid``). Never raises for a failed check.
    """
    if now.tzinfo is None:
        raise ValueError("now must be a timezone-aware datetime")
    verifier = _TokenVerifier(jwks, expected_nonce, now, leeway, issuer)
    platform, platform_problem = verifier.verify(answer.platform_token)
    submods = _submods(platform) if platform is not None else {}

    # One token per GPU, named GPU-0, GPU-1... after the payload's evidence_list.
    tokens = dict(answer.gpu_tokens)
    count = len(payload.gpus) if payload is not None else len(tokens)
    rows = [
        _check_gpu_token(i, tokens.get(f"GPU-{i}"), verifier, platform, submods, payload)
        for i in range(count)
    ]

    problems = []
    if platform_problem:
        problems.append(f"platform token: {platform_problem}")
    elif platform is not None:
        if platform.get(OVERALL_RESULT_CLAIM) is not True:
            problems.append(f"{OVERALL_RESULT_CLAIM} is {platform.get(OVERALL_RESULT_CLAIM)!r}")
        if sorted(submods) != sorted(tokens):
            problems.append(f"platform token lists {sorted(submods)}, answer has {sorted(tokens)}")
    expected_names = {f"GPU-{i}" for i in range(count)}
    if set(tokens) != expected_names:
        problems.append(f"GPU tokens {sorted(tokens)} for {count} GPU(s)")
    if count == 0:
        problems.append("no GPU tokens")
    failed = [row.id for row in rows if not row.ok]
    if failed:
        problems.append(f"failed: {', '.join(failed)}")
    if problems:
        rows.append(Check.failed(CheckId.NVIDIA_NRAS, "; ".join(problems)))
    else:
        kid = jwt.get_unverified_header(answer.platform_token).get("kid")
        rows.append(
            Check.passed(
                CheckId.NVIDIA_NRAS,
                f"NRAS overall result true for {count} GPU(s), "
                f"nonce {expected_nonce.hex()}, key {kid}",
            )
        )
    return rows


def _check_gpu_token(
    position: int,
    token: str | None,
    verifier: _TokenVerifier,
    platform: Mapping[str, Any] | None,
    submods: Mapping[str, str],
    payload: NvidiaPayload | None,
) -> Check:
    check_id = nras_gpu_check_id(position)
    name = f"GPU-{position}"
    if token is None:
        return Check.failed(check_id, f"NRAS answered no {name} token")
    claims, problem = verifier.verify(token)
    if problem or claims is None:
        return Check.failed(check_id, f"{name} token: {problem}")
    if platform is None:
        return Check.failed(
            check_id, "the platform token did not verify, so it cannot vouch for this one"
        )
    digest = hashlib.sha256(token.encode("utf-8")).hexdigest()
    if submods.get(name, "").lower() != digest:
        return Check.failed(
            check_id, f"{name} token's SHA-256 is not the one in the platform token"
        )
    expected_ueid = payload.gpus[position].ueid if payload is not None else None
    if expected_ueid is not None and str(claims.get("ueid")) != expected_ueid:
        return Check.failed(
            check_id, f"ueid {claims.get('ueid')} is not GPU {position}'s ({expected_ueid})"
        )
    if claims.get("measres") != "success":
        return Check.failed(check_id, f"measres is {claims.get('measres')!r}, not 'success'")
    return Check.passed(
        check_id,
        f"measres success, {claims.get('hwmodel')}, driver {claims.get('x-nvidia-gpu-driver-version')}, "
        f"VBIOS {claims.get('x-nvidia-gpu-vbios-version')}, dbgstat {claims.get('dbgstat')}",
    )


def _submods(platform: Mapping[str, Any]) -> dict[str, str]:
    """``{"GPU-0": sha256 hex, ...}`` from ``submods: {"GPU-0": ["DIGEST", ["SHA-256", hex]]}``."""
    result: dict[str, str] = {}
    submods = platform.get("submods")
    if not isinstance(submods, Mapping):
        return result
    for name, entry in submods.items():
        if (
            isinstance(entry, list)
            and len(entry) == 2
            and entry[0] == "DIGEST"
            and isinstance(entry[1], list)
            and len(entry[1]) == 2
            and entry[1][0] == "SHA-256"
            and isinstance(entry[1][1], str)
        ):
            result[name] = entry[1][1]
    return result


class _TokenVerifier:
    """Verifies one NRAS JWT: key, signature, issuer, times, nonce."""

    def __init__(
        self, jwks: NrasJwks, nonce: bytes, now: datetime, leeway: timedelta, issuer: str
    ) -> None:
        self._jwks = jwks
        self._nonce = nonce
        self._now = now.astimezone(UTC)
        self._leeway = leeway
        self._issuer = issuer

    def verify(self, token: str) -> tuple[dict[str, Any] | None, str | None]:
        """``(claims, None)`` when the token holds, else ``(None, why)``."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            return None, f"malformed JWT ({exc})"
        if header.get("alg") != ALGORITHM:
            return None, f"alg {header.get('alg')!r} is not {ALGORITHM}"
        kid = header.get("kid")
        nras_key = self._jwks.keys.get(kid) if isinstance(kid, str) else None
        if nras_key is None:
            return None, f"kid {kid!r} is not in NRAS's JWKS"
        try:
            # PyJWT checks the signature, alg and iss; times are checked below
            # against the injected clock (PyJWT only knows the system clock).
            claims: dict[str, Any] = jwt.decode(
                token,
                key=nras_key.key,
                algorithms=[ALGORITHM],
                issuer=self._issuer,
                options={
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": False,
                    "require": ["iss", "iat", "nbf", "exp", "eat_nonce"],
                },
            )
        except jwt.InvalidSignatureError:
            return None, "signature does not verify"
        except jwt.PyJWTError as exc:
            return None, str(exc)
        problem = (
            self._time_problem(claims) or self._nonce_problem(claims) or self._key_problem(nras_key)
        )
        if problem:
            return None, problem
        return claims, None

    def _key_problem(self, nras_key: NrasKey) -> str | None:
        if not nras_key.certificates:
            return None
        leaf = nras_key.certificates[0]
        if leaf.public_key().public_bytes(*_SPKI) != nras_key.key.public_bytes(*_SPKI):
            return f"key {nras_key.kid}: x5c certificate does not hold the JWK's key"
        if not leaf.not_valid_before_utc <= self._now <= leaf.not_valid_after_utc:
            return (
                f"key {nras_key.kid}: certificate valid {leaf.not_valid_before_utc} to "
                f"{leaf.not_valid_after_utc}, not at {self._now.isoformat()}"
            )
        return None

    def _time_problem(self, claims: Mapping[str, Any]) -> str | None:
        times = {}
        for claim in ("nbf", "iat", "exp"):
            value = claims.get(claim)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f"{claim} is not a number"
            times[claim] = datetime.fromtimestamp(value, UTC)
        if times["nbf"] > self._now + self._leeway:
            return f"not valid before {times['nbf'].isoformat()} (now {self._now.isoformat()})"
        if times["iat"] > self._now + self._leeway:
            return f"issued in the future, {times['iat'].isoformat()} (now {self._now.isoformat()})"
        if times["exp"] <= self._now - self._leeway:
            return f"expired at {times['exp'].isoformat()} (now {self._now.isoformat()})"
        return None

    def _nonce_problem(self, claims: Mapping[str, Any]) -> str | None:
        nonce = claims.get("eat_nonce")
        try:
            matches = isinstance(nonce, str) and bytes.fromhex(nonce) == self._nonce
        except ValueError:
            matches = False
        if not matches:
            return f"eat_nonce {nonce!r} is not the client's nonce {self._nonce.hex()}"
        return None


# -- helpers ---------------------------------------------------------------

_JSON = {"Content-Type": "application/json", "Accept": "application/json"}
_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _json(body: bytes | str | Any, what: str) -> Any:
    if isinstance(body, (bytes, str)):
        try:
            return json.loads(body)
        except ValueError as exc:
            raise EvidenceParseError(f"{what} is not valid JSON") from exc
    return body


@contextlib.contextmanager
def _client(client: httpx.Client | None, timeout: float) -> Iterator[httpx.Client]:
    """The caller's client as is, or a fresh one closed afterwards."""
    if client is not None:
        yield client
        return
    with httpx.Client(timeout=timeout) as own:
        yield own


@contextlib.asynccontextmanager
async def _aclient(
    client: httpx.AsyncClient | None, timeout: float
) -> AsyncIterator[httpx.AsyncClient]:
    if client is not None:
        yield client
        return
    # A new client builds its TLS context from the CA bundle: ~30 ms of CPU,
    # done off the loop.
    own = await asyncio.to_thread(httpx.AsyncClient, timeout=timeout)
    async with own:
        yield own


def _send(http: httpx.Client, method: str, url: str, **kwargs: Any) -> httpx.Response:
    try:
        response = http.request(method, url, **kwargs)
    except httpx.HTTPError as exc:
        raise NetworkError(f"NRAS {method} {url} failed: {exc}") from exc
    return _ok(response, method, url)


async def _asend(http: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> httpx.Response:
    try:
        response = await http.request(method, url, **kwargs)
    except httpx.HTTPError as exc:
        raise NetworkError(f"NRAS {method} {url} failed: {exc}") from exc
    return _ok(response, method, url)


def _ok(response: httpx.Response, method: str, url: str) -> httpx.Response:
    if response.status_code != 200:
        raise NetworkError(f"NRAS {method} {url} answered HTTP {response.status_code}")
    return response
