"""Evidence from the dstack guest agent: a real Intel TDX confidential VM.

On a dstack CVM (the stack every production capture in ``shared/testdata``
comes from), the guest agent owns the TDX quote interface and the runtime
event log, and answers on a Unix socket (``/var/run/dstack.sock``; or
``DSTACK_SIMULATOR_ENDPOINT`` for dstack's own simulator). We talk to it
with dstack's SDK (``dstack-sdk``):

- ``GetQuote(report_data)``: a TDX quote whose REPORTDATA is ours, and the
  event log that goes with it (boot events and the runtime events -
  compose hash, app id, key provider... - extended into RTMR3). The report
  serves that log, so a client replays it against the quote's RTMRs.
- ``Info``: app id, instance id, compose hash, the app compose document and
  the TCB info, served as the report's ``info`` as the production services
  serve it.
- ``GetKey(path, purpose)``: a key derived by the dstack KMS for this app
  (:func:`kms_node_key`): every replica of one app (one compose hash, one
  app id) gets the same key, and a restart keeps it.

Nothing here verifies anything: the node runs the project's verifier on
what it serves, and checks the quote's REPORTDATA before serving it
(:mod:`enclaved.server.attestation`). Quotes chain to Intel's root; the
verifier fetches Intel's collateral from the PCS.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
from collections.abc import Callable
from typing import Any

from ..crypto import KeyPair
from ..errors import ConfigError, NetworkError
from .nvidia_gpus import NvmlGpus

#: Where the guest agent listens on a dstack CVM (dstack-sdk's first choice).
DEFAULT_SOCKET = "/var/run/dstack.sock"
#: dstack's own variable for its simulator (dstack-sdk reads it too).
SIMULATOR_ENV = "DSTACK_SIMULATOR_ENDPOINT"

#: The KMS derivation of the node key (``GetKey``). Fixed: changing either
#: changes every node's key. ``path`` names the key, ``purpose`` its use.
KMS_KEY_PATH = "enclaved/node-key/v1"
KMS_KEY_PURPOSE = "signing"


def endpoint() -> str:
    """The guest agent's endpoint: ``DSTACK_SIMULATOR_ENDPOINT`` if set, else the socket."""
    return os.environ.get(SIMULATOR_ENV) or DEFAULT_SOCKET


def _client(where: str | None, timeout: float) -> Any:
    try:
        from dstack_sdk import DstackClient
    except ImportError as exc:
        raise ConfigError(
            "tee = dstack needs dstack's SDK: pip install 'enclaved[dstack]'"
        ) from exc

    try:
        return DstackClient(where or endpoint(), timeout=timeout)
    except FileNotFoundError as exc:
        raise ConfigError(
            f"tee = dstack: no dstack guest agent at {where or endpoint()} "
            "(is this a dstack CVM with the socket mounted?)"
        ) from exc


def agent_answers(where: str | None = None, *, timeout: float = 2.0) -> bool:
    """Whether a dstack guest agent answers at ``where`` (for ``tee = auto``)."""
    try:
        return bool(_client(where, timeout).is_reachable())
    except ConfigError:
        return False


class DstackEvidence:
    """Evidence from the dstack guest agent (:mod:`dstack_sdk` client ``client``).

    ``trust_root_pem`` and ``collateral`` are for tests that feed the source
    from a stand-in agent signing with the simulated TDX: production quotes
    chain to Intel's root (``None``) and the verifier fetches Intel's
    collateral (``None``).
    """

    tee_hardware = "intel-tdx"

    def __init__(
        self,
        client: Any,
        *,
        trust_root_pem: bytes | None = None,
        collateral: Callable[[dt.datetime], Any] | None = None,
        gpus: NvmlGpus | None = None,
    ) -> None:
        self._client = client
        #: The node's GPUs (``gpus = true``), started; ``None``: no GPU evidence.
        self.gpus = gpus
        self.trust_root_pem = trust_root_pem
        self._collateral = collateral
        #: Where the node key came from: ``"generated"`` at start, or
        #: ``"dstack-kms"`` once :meth:`kms_node_key` derived it.
        self.node_key_provider = "generated"
        self._info = self._fetch_info()
        self._event_log: list[dict[str, Any]] = list(self._info["tcb_info"].get("event_log") or [])

    @classmethod
    def connect(
        cls, where: str | None = None, *, timeout: float = 10.0, gpus: NvmlGpus | None = None
    ) -> DstackEvidence:
        """The guest agent at ``where`` (default: :func:`endpoint`), asked for ``Info`` now.

        Raises :class:`~enclaved.errors.ConfigError` when no agent answers: a
        node configured for dstack does not start without it.
        """
        client = _client(where, timeout)
        try:
            return cls(client, gpus=gpus)
        except NetworkError as exc:
            raise ConfigError(f"tee = dstack: {exc}") from exc

    def _fetch_info(self) -> dict[str, Any]:
        try:
            info = self._client.info()
        except Exception as exc:
            raise NetworkError(
                f"the dstack guest agent's Info failed: {type(exc).__name__}"
            ) from exc
        doc: dict[str, Any] = info.model_dump(mode="json")
        return doc

    async def quote(self, report_data: bytes) -> bytes:
        try:
            # dstack-sdk's sync client in a thread: the agent answers in tens of
            # milliseconds (the TDX quote is made by the host's QE).
            response = await asyncio.to_thread(self._client.get_quote, report_data)
            quote = bytes(response.decode_quote())
            log = json.loads(response.event_log) if response.event_log else []
        except Exception as exc:
            raise NetworkError(
                f"the dstack guest agent's GetQuote failed: {type(exc).__name__}"
            ) from exc
        if not isinstance(log, list):
            raise NetworkError("the dstack guest agent's event log is not a list")
        # The log that goes with this quote: RTMR3 only grows (runtime events
        # are emitted at boot), so the latest log replays to the latest quote.
        self._event_log = log
        return quote

    async def nvidia_payload(self, nonce: bytes) -> str | None:
        # Without ``gpus = true`` there is no GPU evidence, and a client whose
        # policy requires GPUs refuses the node. Never a fabricated payload.
        if self.gpus is None:
            return None
        return await asyncio.to_thread(self.gpus.payload, nonce)

    def event_log(self) -> list[dict[str, Any]]:
        return list(self._event_log)

    def info(self) -> dict[str, Any]:
        return {**self._info, "node_key_provider": self.node_key_provider}

    def collateral(self, now: dt.datetime) -> Any | None:
        return self._collateral(now) if self._collateral is not None else None

    def kms_node_key(self) -> KeyPair:
        """The node key derived by the dstack KMS (:data:`KMS_KEY_PATH`, :data:`KMS_KEY_PURPOSE`).

        Every replica of the same app gets the same key and a restart keeps
        it; the key never leaves the CVM's memory. This trusts the KMS: it
        releases app keys only to CVMs whose measurements its policy accepts,
        and anyone controlling the KMS can derive the key.
        """
        try:
            response = self._client.get_key(KMS_KEY_PATH, KMS_KEY_PURPOSE)
            secret = bytes(response.decode_key())
        except Exception as exc:
            raise ConfigError(
                f"tee = dstack: the KMS key derivation (GetKey) failed: {type(exc).__name__}"
            ) from exc
        if len(secret) < 32:
            raise ConfigError("tee = dstack: the KMS key is shorter than 32 bytes")
        key = KeyPair(secret[:32])
        self.node_key_provider = "dstack-kms"
        return key
