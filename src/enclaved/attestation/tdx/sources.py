"""Where Intel's collateral comes from: the source protocol, and a recorded capture.

A :class:`CollateralSource` answers ``get(fmspc, ca)`` (and may have an
async ``aget``). :class:`DirectoryCollateral` reads a recorded capture
(``responses/`` as in ``shared/testdata/captures``); Intel PCS is
:class:`~.pcs.PcsCollateral`. The header names Intel sends issuer chains in
are here, shared by both.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from cryptography import x509

from ...errors import ConfigError
from .._x509 import DECODE_ERRORS
from .collateral import Collateral
from .parse import Quote, pck_ca, pck_extensions

__all__ = ["CollateralSource", "DirectoryCollateral", "collateral_for"]


@runtime_checkable
class CollateralSource(Protocol):
    """Where collateral comes from: ``get(fmspc, ca)`` with ``ca`` "platform" or "processor".

    A source may also have ``async def aget(fmspc, ca)``, its async twin
    (:class:`PcsCollateral` and :class:`DirectoryCollateral` do); the
    verifier's :meth:`~enclaved.attestation.Verifier.afetch` calls a source
    without one on a worker thread.
    """

    def get(self, fmspc: bytes, ca: str) -> Collateral: ...


def collateral_for(quote: Quote, source: CollateralSource) -> Collateral:
    """The collateral for this quote's platform (FMSPC and PCK CA from its PCK leaf)."""
    leaf = quote.pck_leaf
    return source.get(pck_extensions(leaf).fmspc, pck_ca(leaf))


def _header(headers: Mapping[str, Any], name: str) -> str | None:
    for k, v in headers.items():
        if k.lower() == name.lower():
            if isinstance(v, list):
                return str(v[0]) if v else None
            return str(v)
    return None


TCB_CHAIN_HEADERS = ("TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain")
QE_CHAIN_HEADER = "SGX-Enclave-Identity-Issuer-Chain"
CRL_CHAIN_HEADER = "SGX-PCK-CRL-Issuer-Chain"


class DirectoryCollateral:
    """Collateral recorded in a capture: a ``responses/`` folder of ``NNNN_*.body``
    files, each with a ``.json`` beside it holding the URL, status and headers.

    Recognized by URL: ``/tdx/certification/v4/tcb?fmspc=``,
    ``/tdx/certification/v4/qe/identity``, ``/sgx/certification/v4/pckcrl?ca=``;
    the root CA CRL is any other recorded body that parses as a DER CRL (Intel
    serves it at ``IntelSGXRootCA.der``). A missing item is a
    :class:`~enclaved.errors.ConfigError` (the directory is configuration).
    """

    #: Reads no network (the files are read here, once): a verifier may
    #: consult it without a fetch step.
    local = True

    def __init__(self, path: str | os.PathLike[str]) -> None:
        p = Path(path)
        if (p / "responses").is_dir():
            p = p / "responses"
        if not p.is_dir():
            raise ConfigError(f"collateral directory {p} does not exist")
        self.path = p
        self._tcb: dict[str, tuple[bytes, str]] = {}
        self._crl: dict[str, tuple[bytes, str]] = {}
        self._qe: tuple[bytes, str] | None = None
        self._root_crl: bytes | None = None
        self._cache: dict[tuple[str, str], Collateral] = {}
        self._scan()

    def _scan(self) -> None:
        for meta_path in sorted(self.path.glob("*.json")):
            body_path = meta_path.with_suffix(".body")
            if not body_path.exists():
                continue
            try:
                meta = json.loads(meta_path.read_text())
            except ValueError:
                continue
            if not isinstance(meta, dict) or meta.get("status", 200) != 200:
                continue
            url = urllib.parse.urlsplit(str(meta.get("url", "")))
            query = urllib.parse.parse_qs(url.query)
            headers = meta.get("headers", {}) or {}
            body = body_path.read_bytes()
            if url.path.endswith("/tdx/certification/v4/tcb"):
                chain = next(
                    (h for h in (_header(headers, n) for n in TCB_CHAIN_HEADERS) if h), None
                )
                fmspc = (query.get("fmspc") or [""])[0].lower()
                if chain:
                    self._tcb[fmspc] = (body, chain)
            elif url.path.endswith("/tdx/certification/v4/qe/identity"):
                chain = _header(headers, QE_CHAIN_HEADER)
                if chain:
                    self._qe = (body, chain)
            elif url.path.endswith("/pckcrl"):
                chain = _header(headers, CRL_CHAIN_HEADER)
                ca = (query.get("ca") or ["platform"])[0].lower()
                if chain:
                    self._crl[ca] = (body, chain)
            elif "trustedservices.intel.com" in url.netloc or url.path.endswith(
                ("rootcacrl", ".crl", ".der")
            ):
                try:
                    x509.load_der_x509_crl(body)
                except DECODE_ERRORS:
                    continue  # e.g. a certificate, not a CRL
                self._root_crl = body

    def get(self, fmspc: bytes, ca: str) -> Collateral:
        key = (fmspc.hex(), ca.lower())
        if key in self._cache:
            return self._cache[key]
        if key[0] not in self._tcb:
            raise ConfigError(f"{self.path}: no TDX TCB info recorded for FMSPC {key[0]}")
        if self._qe is None:
            raise ConfigError(f"{self.path}: no TDX QE identity recorded")
        if key[1] not in self._crl:
            raise ConfigError(f"{self.path}: no PCK CRL recorded for ca={key[1]}")
        tcb_body, tcb_chain = self._tcb[key[0]]
        crl_body, crl_chain = self._crl[key[1]]
        collateral = Collateral.from_pcs(
            tcb_info=tcb_body,
            tcb_info_issuer_chain=tcb_chain,
            qe_identity=self._qe[0],
            qe_identity_issuer_chain=self._qe[1],
            pck_crl=crl_body,
            pck_crl_issuer_chain=crl_chain,
            root_ca_crl=self._root_crl,
        )
        self._cache[key] = collateral
        return collateral

    async def aget(self, fmspc: bytes, ca: str) -> Collateral:
        """The same as :meth:`get`: the files were read when the directory was opened."""
        return self.get(fmspc, ca)
