"""Inference engines behind the server: the embedded llama.cpp model, or any
OpenAI-compatible upstream (vLLM, SGLang, llama.cpp's server, Ollama).

Build them from configuration with :func:`make_backends` (one backend per
model id; model ids on the embedded engine share one loaded model) or
:func:`make_backend` (one spec). A spec is anything with the fields of
:class:`BackendSpec` - :class:`enclaved.server.config.ModelConfig` is one -
or a mapping with those keys::

    make_backend({"backend": "upstream", "base_url": "http://127.0.0.1:8000/v1",
                  "upstream_model": "Qwen/Qwen3-8B", "api_key_env": "VLLM_API_KEY"})

Importing this package does not import llama-cpp-python; the embedded
backend loads it when it starts.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from typing import Any

from ...errors import ConfigError
from .base import Backend, BackendError, ChatRequest
from .embedded import EmbeddedBackend
from .engine_http import Timeouts
from .upstream import DEFAULT_TIMEOUTS, UpstreamBackend

__all__ = [
    "Backend",
    "BackendError",
    "BackendSpec",
    "ChatRequest",
    "EmbeddedBackend",
    "UpstreamBackend",
    "make_backend",
    "make_backends",
]


@dataclasses.dataclass(frozen=True)
class BackendSpec:
    """Which engine serves a model. Field names match ``ModelConfig``."""

    #: ``"embedded"`` or ``"upstream"``.
    backend: str = "embedded"
    #: Upstream only: the engine's OpenAI-compatible base URL, ``.../v1``.
    base_url: str | None = None
    #: Upstream only: the engine's name for the model.
    upstream_model: str | None = None
    #: Upstream only: the environment variable holding the engine's API key.
    api_key_env: str | None = None
    #: Upstream only: connect / first-byte / idle / write timeouts.
    timeouts: Timeouts = DEFAULT_TIMEOUTS


def _spec(spec: Any) -> BackendSpec:
    if isinstance(spec, BackendSpec):
        return spec
    if isinstance(spec, Mapping):
        get = spec.get
    else:

        def get(key: str, default: Any = None) -> Any:
            return getattr(spec, key, default)

    # "kind" and "model" are accepted as aliases of "backend" and "upstream_model".
    return BackendSpec(
        backend=get("backend") or get("kind") or "embedded",
        base_url=get("base_url"),
        upstream_model=get("upstream_model") or get("model"),
        api_key_env=get("api_key_env"),
        timeouts=get("timeouts") or DEFAULT_TIMEOUTS,
    )


def make_backend(spec: Any, *, env: Mapping[str, str] | None = None) -> Backend:
    """One backend for ``spec``; not started (call ``await backend.start()``).

    ``env`` replaces ``os.environ`` for reading ``api_key_env``.
    Raises :class:`~enclaved.errors.ConfigError` for an incomplete spec or a
    named API-key variable that is not set (its value is never shown).
    """
    s = _spec(spec)
    if s.backend == "embedded":
        return EmbeddedBackend()
    if s.backend == "upstream":
        if not s.base_url or not s.upstream_model:
            raise ConfigError("an upstream backend needs base_url and upstream_model")
        api_key = None
        if s.api_key_env:
            api_key = (os.environ if env is None else env).get(s.api_key_env)
            if not api_key:
                raise ConfigError(
                    f"environment variable {s.api_key_env} (the upstream API key) is not set"
                )
            if not api_key.isprintable():  # a line break would end the HTTP header
                raise ConfigError(
                    f"environment variable {s.api_key_env} (the upstream API key) "
                    "holds control characters"
                )
        try:
            return UpstreamBackend(
                s.base_url, s.upstream_model, api_key=api_key, timeout=s.timeouts
            )
        except ValueError as exc:  # a URL that cannot make a request line, or has credentials
            raise ConfigError(f"base_url: {exc}") from exc
    raise ConfigError(f"unknown backend {s.backend!r} (use 'embedded' or 'upstream')")


def make_backends(
    models: Iterable[Any], *, env: Mapping[str, str] | None = None
) -> dict[str, Backend]:
    """A backend per model id (``models``: objects or mappings with an ``id``).

    All embedded model ids share one :class:`EmbeddedBackend` (the default
    configuration serves the same SmolLM2 as ``tee-`` and ``e2ee-``), and
    upstream ids with the same engine, model and key share one client.
    Start each distinct backend once: ``set(result.values())``.
    """
    shared: dict[BackendSpec, Backend] = {}
    result: dict[str, Backend] = {}
    for model in models:
        model_id = model["id"] if isinstance(model, Mapping) else model.id
        s = _spec(model)
        if s not in shared:
            shared[s] = make_backend(s, env=env)
        result[model_id] = shared[s]
    return result
