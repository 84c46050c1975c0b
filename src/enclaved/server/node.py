"""One serving node's state, passed explicitly to every route.

There is no module-level state anywhere in the server: several nodes (each
with its own key, store and backends) can run in one process, which the
tests and a future gateway rely on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from ..crypto import KeyPair
from ..crypto.reserve import Ephemeral, Reserve, ephemeral_keys
from ..evidence.base import EvidenceSource
from .auth import ApiKeys
from .backends.base import Backend
from .config import ModelConfig, ServerConfig
from .signing import ResponseSigner
from .store.base import SignatureStore

#: E2EE responses that can start at once without making their key first.
EPHEMERAL_RESERVE = 16


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
    #: The ephemeral keys of the next E2EE responses, made ahead of time and
    #: each used once (topped up after every E2EE response).
    ephemeral_keys: Reserve[Ephemeral] = dataclasses.field(
        default_factory=lambda: ephemeral_keys(EPHEMERAL_RESERVE), repr=False, compare=False
    )

    def model(self, model_id: str) -> ModelConfig | None:
        return self.config.model(model_id)
