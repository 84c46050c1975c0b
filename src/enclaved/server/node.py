"""One serving node's state, passed explicitly to every route.

There is no module-level state anywhere in the server: several nodes (each
with its own key, store and backends) can run in one process, which the
tests and a future gateway rely on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from ..crypto import KeyPair
from ..evidence.base import EvidenceSource
from .aci import Aci
from .auth import ApiKeys
from .backends.base import Backend
from .config import ModelConfig, ServerConfig
from .metrics import Metrics
from .ratelimit import RateLimiter
from .signing import ResponseSigner
from .store.base import SignatureStore


@dataclasses.dataclass(frozen=True)
class Node:
    config: ServerConfig
    #: The node identity: E2EE key and response-signing key. Memory only.
    key: KeyPair
    #: The backend serving each model id.
    backends: Mapping[str, Backend]
    store: SignatureStore
    evidence: EvidenceSource
    signer: ResponseSigner
    api_keys: ApiKeys
    #: Seconds since the epoch (``time.time``); injected by tests.
    clock: Callable[[], float]
    #: Prometheus metrics, when ``[metrics] enabled``.
    metrics: Metrics | None = None
    #: Attested Confidential Inference: the keyset and the receipt signer.
    #: ``None`` only where a test builds a node without it.
    aci: Aci | None = None
    #: Per-API-key rate limits, when ``[rate_limits]`` sets any.
    rate_limiter: RateLimiter | None = None

    def model(self, model_id: str) -> ModelConfig | None:
        return self.config.model(model_id)
