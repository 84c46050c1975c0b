"""Intel PCS (or a PCCS with the same v4 API): collateral over httpx.

:class:`PcsCollateral` has two drivers over one sans-IO core, as httpx has
``Client`` and ``AsyncClient``: :meth:`PcsCollateral.get` through a sync
getter (an :class:`httpx.Client`), :meth:`PcsCollateral.aget` through an
async one (an :class:`httpx.AsyncClient`). Answers are kept in memory and,
with ``cache_dir``, on disk (:mod:`.pcs_cache`). A transport failure is a
:class:`~enclaved.errors.NetworkError`, never a verification failure.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
from collections.abc import Callable
from pathlib import Path

import httpx

from ...errors import EvidenceParseError, NetworkError
from .collateral import Collateral
from .pcs_cache import DiskCache
from .sources import CRL_CHAIN_HEADER, QE_CHAIN_HEADER, TCB_CHAIN_HEADERS

__all__ = ["INTEL_PCS_URL", "INTEL_ROOT_CA_CRL_URL", "PcsCollateral"]

logger = logging.getLogger("enclaved.attestation.tdx.collateral")

INTEL_PCS_URL = "https://api.trustedservices.intel.com"
#: The Intel SGX Root CA's CRL distribution point (it serves the CRL, DER).
INTEL_ROOT_CA_CRL_URL = "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class PcsCollateral:
    """Collateral from Intel PCS (or a PCCS with the same v4 API), cached on disk per FMSPC.

    Two drivers over one sans-IO core, as httpx has ``Client`` and
    ``AsyncClient``: :meth:`get` fetches with the sync getter ``client`` (an
    :class:`httpx.Client`), :meth:`aget` with the async getter
    ``async_client`` (an :class:`httpx.AsyncClient`), so an event loop never
    waits on Intel. Without one, each fetch opens a client of its own and
    closes it; nothing is shared through module state. Both drivers share
    the cache, the requests (:meth:`requests`) and how answers become
    :class:`Collateral` (:meth:`collateral_from`).

    A cached entry is used until ``refresh_before`` ahead of its earliest
    ``nextUpdate``, and at most ``max_age`` after it was fetched. When a
    refresh fails and the cached entry has not yet reached its
    ``nextUpdate``, the cached entry is returned (and a warning logged):
    Intel's own collateral is still current then. Otherwise the failure is a
    :class:`~enclaved.errors.NetworkError`.

    ``root_ca_crl_url=None`` skips the root CA CRL (reported as a skipped check).
    """

    def __init__(
        self,
        base_url: str = INTEL_PCS_URL,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        client: httpx.Client | None = None,
        async_client: httpx.AsyncClient | None = None,
        root_ca_crl_url: str | None = INTEL_ROOT_CA_CRL_URL,
        max_age: dt.timedelta = dt.timedelta(hours=24),
        refresh_before: dt.timedelta = dt.timedelta(days=1),
        clock: Callable[[], dt.datetime] = _utcnow,
        timeout: float = 20.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._client = client
        self._async_client = async_client
        self.root_ca_crl_url = root_ca_crl_url
        self.max_age = max_age
        self.refresh_before = refresh_before
        self.clock = clock
        self.timeout = timeout
        self._memory: dict[tuple[str, str], tuple[dt.datetime, Collateral]] = {}
        self._disk = DiskCache(self.cache_dir) if self.cache_dir is not None else None

    # -- the cache ----------------------------------------------------------------------
    def _usable(self, fetched_at: dt.datetime, collateral: Collateral, now: dt.datetime) -> bool:
        try:
            next_update = collateral.next_update()
        except EvidenceParseError:
            return False
        return now < fetched_at + self.max_age and now < next_update - self.refresh_before

    # -- the sans-IO core: the cache's verdict, the requests, the answers -------------
    def _key(self, fmspc: bytes, ca: str) -> tuple[str, str]:
        ca = ca.lower()
        if ca not in ("platform", "processor"):
            raise ValueError(f"ca must be 'platform' or 'processor', not {ca!r}")
        return fmspc.hex(), ca

    def _lookup(
        self, key: tuple[str, str], now: dt.datetime
    ) -> tuple[tuple[dt.datetime, Collateral] | None, bool]:
        """(the cached entry or ``None``, whether it can be used without asking PCS)."""
        cached = self._memory.get(key) or (self._disk.load(*key) if self._disk else None)
        if cached is not None and self._usable(cached[0], cached[1], now):
            self._memory[key] = cached
            return cached, True
        return cached, False

    def _fetched(self, key: tuple[str, str], now: dt.datetime, collateral: Collateral) -> None:
        self._memory[key] = (now, collateral)
        if self._disk is not None:
            self._disk.store(key[0], key[1], now, collateral)

    def _fallback(
        self, key: tuple[str, str], now: dt.datetime, cached: tuple[dt.datetime, Collateral] | None
    ) -> Collateral | None:
        """After a failed refresh: the cached copy while Intel says it is current, else ``None``."""
        if cached is not None and now < cached[1].next_update():
            logger.warning(
                "collateral refresh for FMSPC %s failed; using the cached copy (valid until %s)",
                key[0],
                cached[1].next_update().isoformat(),
            )
            return cached[1]
        return None

    def requests(self, fmspc: bytes, ca: str) -> list[tuple[str, dict[str, str]]]:
        """The GETs that fetch the collateral, in order: (URL, query parameters).

        TCB info, QE identity, PCK CRL, then (unless ``root_ca_crl_url`` is
        ``None``) the root CA CRL.
        """
        out = [
            (f"{self.base_url}/tdx/certification/v4/tcb", {"fmspc": fmspc.hex()}),
            (f"{self.base_url}/tdx/certification/v4/qe/identity", {}),
            (f"{self.base_url}/sgx/certification/v4/pckcrl", {"ca": ca, "encoding": "der"}),
        ]
        if self.root_ca_crl_url is not None:
            out.append((self.root_ca_crl_url, {}))
        return out

    @staticmethod
    def collateral_from(answers: list[httpx.Response]) -> Collateral:
        """The answers to :meth:`requests`, in order, as :class:`Collateral`.

        Every answer is a 200 (the drivers stop at the first that is not). A
        missing issuer chain or malformed collateral is a
        :class:`~enclaved.errors.NetworkError`: a service that answers
        garbage is a service failure, not a forged quote.
        """
        tcb, qe, crl = answers[:3]
        root_crl = answers[3].content if len(answers) > 3 else None
        tcb_chain = next((tcb.headers.get(n) for n in TCB_CHAIN_HEADERS if n in tcb.headers), None)
        qe_chain = qe.headers.get(QE_CHAIN_HEADER)
        crl_chain = crl.headers.get(CRL_CHAIN_HEADER)
        if not (tcb_chain and qe_chain and crl_chain):
            raise NetworkError("Intel PCS response lacks an issuer chain header")
        try:
            return Collateral.from_pcs(
                tcb_info=tcb.content,
                tcb_info_issuer_chain=tcb_chain,
                qe_identity=qe.content,
                qe_identity_issuer_chain=qe_chain,
                pck_crl=crl.content,
                pck_crl_issuer_chain=crl_chain,
                root_ca_crl=root_crl,
            )
        except EvidenceParseError as exc:
            raise NetworkError(f"Intel PCS answered malformed collateral: {exc}") from exc

    # -- the sync driver ----------------------------------------------------------------
    def get(self, fmspc: bytes, ca: str) -> Collateral:
        """The collateral, from the cache or Intel PCS through the sync getter."""
        key, now = self._key(fmspc, ca), self.clock()
        cached, usable = self._lookup(key, now)
        if cached is not None and usable:
            return cached[1]
        try:
            collateral = self.fetch(fmspc, key[1])
        except NetworkError:
            fallback = self._fallback(key, now, cached)
            if fallback is None:
                raise
            return fallback
        self._fetched(key, now, collateral)
        return collateral

    def fetch(self, fmspc: bytes, ca: str) -> Collateral:
        """Fetch fresh collateral through the sync getter, bypassing the cache."""
        client = self._client or httpx.Client(timeout=self.timeout, follow_redirects=True)
        try:
            answers = []
            for url, params in self.requests(fmspc, ca.lower()):
                try:
                    answer = client.get(url, params=params or None)
                except httpx.HTTPError as exc:
                    raise _network_error(url, exc) from exc
                answers.append(_ok(url, answer))
        finally:
            if self._client is None:
                client.close()
        return self.collateral_from(answers)

    # -- the async driver ---------------------------------------------------------------
    async def aget(self, fmspc: bytes, ca: str) -> Collateral:
        """The async twin of :meth:`get`: Intel PCS through the async getter.

        The disk cache is read and written on a worker thread (a file read,
        and parsing the certificates and CRLs it holds).
        """
        key, now = self._key(fmspc, ca), self.clock()
        cached, usable = await asyncio.to_thread(self._lookup, key, now)
        if cached is not None and usable:
            return cached[1]
        try:
            collateral = await self.afetch(fmspc, key[1])
        except NetworkError:
            fallback = self._fallback(key, now, cached)
            if fallback is None:
                raise
            return fallback
        await asyncio.to_thread(self._fetched, key, now, collateral)
        return collateral

    async def afetch(self, fmspc: bytes, ca: str) -> Collateral:
        """The async twin of :meth:`fetch`."""
        # A new client builds its TLS context from the CA bundle: ~30 ms of
        # CPU, done off the loop.
        client = self._async_client
        if client is None:
            client = await asyncio.to_thread(
                httpx.AsyncClient, timeout=self.timeout, follow_redirects=True
            )
        try:
            answers = []
            for url, params in self.requests(fmspc, ca.lower()):
                try:
                    answer = await client.get(url, params=params or None)
                except httpx.HTTPError as exc:
                    raise _network_error(url, exc) from exc
                answers.append(_ok(url, answer))
        finally:
            if self._async_client is None:
                await client.aclose()
        return self.collateral_from(answers)


def _network_error(url: str, exc: httpx.HTTPError) -> NetworkError:
    return NetworkError(f"fetching {url}: {exc.__class__.__name__}: {exc}")


def _ok(url: str, answer: httpx.Response) -> httpx.Response:
    """The answer, if 200: the next request is not sent after a failed one."""
    if answer.status_code != 200:
        raise NetworkError(f"fetching {url}: HTTP {answer.status_code}")
    return answer
