"""Server configuration: a TOML file, or a built-in default that needs none.

The file format is documented, with an example that the tests load, in
``docs/configuration.md``. Loading is strict: an unknown key anywhere is a
:class:`~enclaved.errors.ConfigError` that names it, because a misspelt
security option (``api_key_hash = ...``) must not silently do nothing.

What is checked here: types, required keys, model id prefixes, the
capabilities a model may claim (E2EE only for ``e2ee-*``; no web search or
vision, which enclaved does not implement), the backend kind, the TEE mode.
What is NOT checked here: that an upstream engine is reachable, that API-key
environment variables are set (the backend reads them when it starts), that
``data_dir`` is writable.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from ..errors import ConfigError
from ..protocol.routes import E2EE_MODEL_PREFIX
from .backends.embedded import DEFAULT_CONTEXT_TOKENS as EMBEDDED_CONTEXT_TOKENS
from .backends.engine_http import Timeouts
from .transport import TransportLimits

#: The models of the default configuration: one SmolLM2-135M, served both
#: ways, on the embedded llama.cpp backend.
#: The evidence sources (``tee =``): see :attr:`ServerConfig.tee`.
TEE_MODES = ("simulated", "dstack", "configfs", "auto")
DEFAULT_MODEL_IDS = ("e2ee-smollm2-135m", "tee-smollm2-135m")

_HEX64 = re.compile(r"[0-9a-f]{64}")
_MODEL_ID = re.compile(r"(tee|e2ee)-[a-z0-9][a-z0-9._-]*")

#: The capability names of ``/models`` (PROTOCOL.md), as they appear on the wire.
CAPABILITY_KEYS = (
    "supportsE2EE",
    "supportsTeeAttestation",
    "supportsFunctionCalling",
    "supportsWebSearch",
    "supportsVision",
    "supportsReasoning",
)


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What ``/models`` reports for a model, and what the chat route enforces."""

    supports_e2ee: bool
    supports_tee_attestation: bool = True
    supports_function_calling: bool = False
    supports_web_search: bool = False
    supports_vision: bool = False
    supports_reasoning: bool = False

    def to_wire(self) -> dict[str, bool]:
        return {
            "supportsE2EE": self.supports_e2ee,
            "supportsTeeAttestation": self.supports_tee_attestation,
            "supportsFunctionCalling": self.supports_function_calling,
            "supportsWebSearch": self.supports_web_search,
            "supportsVision": self.supports_vision,
            "supportsReasoning": self.supports_reasoning,
        }


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """One served model id and the engine behind it."""

    id: str
    #: ``"embedded"`` (the bundled llama.cpp model) or ``"upstream"``.
    backend: str
    capabilities: Capabilities
    #: Display name (``model_spec.name``).
    name: str
    #: ``model_spec.privacy``: ``"private"`` for TEE models.
    privacy: str = "private"
    available_context_tokens: int = 2048
    #: Upstream engine only: its OpenAI-compatible base URL (``.../v1``).
    base_url: str | None = None
    #: Upstream engine only: the model name the engine knows.
    upstream_model: str | None = None
    #: Upstream engine only: the environment variable that holds its API key.
    api_key_env: str | None = None
    #: Upstream engine only: connect / first-byte / idle timeouts (``[engine]``,
    #: overridden by the model's own keys).
    timeouts: Timeouts = dataclasses.field(default_factory=Timeouts)

    @property
    def e2ee(self) -> bool:
        return self.capabilities.supports_e2ee


@dataclasses.dataclass(frozen=True)
class StoreConfig:
    """Where response signatures live."""

    #: ``"sqlite"`` (default; survives restarts) or ``"redis"`` (shared by replicas).
    kind: str = "sqlite"
    #: SQLite file; ``None`` means ``<data_dir>/signatures.db``.
    path: Path | None = None
    #: Redis URL (``redis://host:6379/0``), for ``kind = "redis"``.
    url: str | None = None
    #: How long a signature stays retrievable.
    ttl_seconds: int = 7 * 24 * 3600


@dataclasses.dataclass(frozen=True)
class RateLimitConfig:
    """``[rate_limits]``: per minute, 0 = none; ``keys`` by API-key hash."""

    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    #: Per-key limits: ``{sha256 hex of the key: (requests, tokens)}``.
    keys: tuple[tuple[str, int, int], ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(
            self.requests_per_minute
            or self.tokens_per_minute
            or any(r or t for _, r, t in self.keys)
        )


@dataclasses.dataclass(frozen=True)
class MetricsConfig:
    """Prometheus metrics (``[metrics]``): off by default; on their own listener."""

    enabled: bool = False
    #: The metrics listener; loopback by default (every API route is public,
    #: the metrics are for the operator's scraper).
    host: str = "127.0.0.1"
    port: int = 9464


#: The two revisions of ``aci/1`` (docs/server.md, "Attested Confidential Inference").
ACI_REVISIONS = ("current", "rev-a")


@dataclasses.dataclass(frozen=True)
class AciConfig:
    """``[aci]``: the Attested Confidential Inference profile this node serves."""

    #: Serve ACI (report, headers, receipts). Off: the node is as before it.
    enabled: bool = True
    #: ``"current"`` (the specification of today, the default) or ``"rev-a"``
    #: (the older revision, which npm ``venice-e2ee`` 0.5.x verifies).
    revision: str = "current"
    #: Seconds from the node's start to its keyset's ``not_after``.
    keyset_lifetime_seconds: int = 7 * 24 * 3600
    #: The keyset's ``subject`` (a dstack app-id URI, SPIFFE ID or DNS name), or none.
    subject: str | None = None
    #: The PEM certificate of the TLS endpoint clients reach this node through
    #: (the node itself serves plain HTTP behind it): its SPKI SHA-256 goes in
    #: ``tls_public_keys``, restricted to ``tls_domain`` when set.
    tls_certificate: Path | None = None
    tls_domain: str | None = None
    #: The report's ``source_provenance``: the public code (``repo_url`` at
    #: ``repo_commit``, given together) or image (``image_digest``) this node
    #: runs. Stated by the operator; a client counts it only when the measured
    #: app compose names it (row ``aci.provenance``).
    repo_url: str | None = None
    repo_commit: str | None = None
    image_digest: str | None = None

    def source_provenance(self) -> dict[str, str]:
        """The stated provenance fields that are set (what the simulated compose names)."""
        fields = {
            "repo_url": self.repo_url,
            "repo_commit": self.repo_commit,
            "image_digest": self.image_digest,
        }
        return {k: v for k, v in fields.items() if v is not None}


def default_data_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where a node keeps its state when nothing says otherwise.

    ``$ENCLAVED_DATA_DIR``, else ``$XDG_DATA_HOME/enclaved``, else
    ``~/.local/share/enclaved``: one absolute place, so that the development
    root's path (``dev-root-ca.pem`` in it) is the same from any directory.
    """
    env = os.environ if env is None else env
    if env.get("ENCLAVED_DATA_DIR"):
        return Path(env["ENCLAVED_DATA_DIR"])
    xdg = env.get("XDG_DATA_HOME")
    if xdg and os.path.isabs(xdg):  # the XDG spec: a relative value is to be ignored
        return Path(xdg) / "enclaved"
    home = env.get("HOME") or str(Path.home())
    return Path(home) / ".local" / "share" / "enclaved"


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Everything ``create_app`` and ``enclaved serve`` need. Immutable."""

    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = dataclasses.field(default_factory=lambda: default_data_dir())
    models: tuple[ModelConfig, ...] = ()
    #: The operator's system prompt (``include_venice_system_prompt``); never used under E2EE.
    system_prompt: str | None = None
    #: SHA-256 (lowercase hex) of each accepted API key. Empty: no key needed.
    api_key_hashes: tuple[str, ...] = ()
    signatures: StoreConfig = StoreConfig()
    #: Seal every response chunk with a fresh ephemeral key instead of one per response.
    e2ee_key_per_chunk: bool = False
    #: Where attestation evidence comes from: ``"simulated"`` (development),
    #: ``"dstack"`` (the dstack guest agent of a TDX CVM), ``"configfs"`` (the
    #: kernel's configfs-tsm of a plain TDX VM), or ``"auto"`` (dstack when its
    #: agent answers, else configfs-tsm when its provider is TDX, else refuse).
    tee: str = "simulated"
    #: Largest accepted request body, in bytes (413 above it).
    max_request_bytes: int = 8 * 1024 * 1024
    #: Seconds a client has to send a chat request's whole body (408 after).
    request_body_timeout_seconds: int = 60
    #: Seconds in-flight requests get to finish after SIGTERM / SIGINT; then
    #: each stream ends with a ``shutting_down`` error event and ``[DONE]``.
    graceful_shutdown_seconds: float = 10.0
    #: Request-line and header sizes, header deadlines, the connection cap.
    transport: TransportLimits = dataclasses.field(default_factory=TransportLimits)
    #: Prometheus metrics (off by default).
    metrics: MetricsConfig = MetricsConfig()
    #: Per-API-key rate limits (off by default).
    rate_limits: RateLimitConfig = RateLimitConfig()
    #: Processes serving the port as one node (``enclaved serve --workers``).
    workers: int = 1
    #: Attest the node's NVIDIA GPUs (NVML); with ``tee = "dstack"``. A node
    #: with ``gpus = true`` and no GPU in CC mode refuses to start.
    gpus: bool = False
    #: The node key from a file (replicas of one deployment without a KMS):
    #: 64 hex characters, mode 0600. ``None``: the KMS's key, else a new one.
    node_key_file: Path | None = None
    #: Attested Confidential Inference (``[aci]``).
    aci: AciConfig = AciConfig()

    # -- constructors -------------------------------------------------------

    @classmethod
    def default(
        cls, *, data_dir: Path | str | None = None, env: Mapping[str, str] | None = None
    ) -> ServerConfig:
        """The built-in configuration: both SmolLM2 ids on the embedded backend.

        ``data_dir`` defaults to :func:`default_data_dir`.
        """
        return cls.from_dict({}, data_dir=data_dir, env=env)

    @classmethod
    def from_toml(
        cls,
        path: Path | str,
        *,
        data_dir: Path | str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ServerConfig:
        """Load a TOML file. Relative paths inside it are relative to the file."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
        return cls.from_dict(data, base_dir=path.parent, data_dir=data_dir, env=env)

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any],
        *,
        base_dir: Path | None = None,
        data_dir: Path | str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ServerConfig:
        """Build from parsed TOML. ``data_dir`` (an explicit override) wins over the file."""
        return _Loader(base_dir or Path.cwd(), os.environ if env is None else env).load(
            data, data_dir
        )

    # -- helpers --------------------------------------------------------------

    def model(self, model_id: str) -> ModelConfig | None:
        for m in self.models:
            if m.id == model_id:
                return m
        return None

    @property
    def signature_db_path(self) -> Path:
        return (
            self.signatures.path
            if self.signatures.path is not None
            else self.data_dir / "signatures.db"
        )

    def replace(self, **changes: Any) -> ServerConfig:
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


def _default_models() -> list[dict[str, Any]]:
    return [
        {"id": "e2ee-smollm2-135m", "backend": "embedded", "name": "SmolLM2 135M Instruct (E2EE)"},
        {"id": "tee-smollm2-135m", "backend": "embedded", "name": "SmolLM2 135M Instruct"},
    ]


class _Loader:
    """Walks the parsed TOML, checking each key. Every error names its key path."""

    _TOP: ClassVar[frozenset[str]] = frozenset(
        {
            "host",
            "port",
            "data_dir",
            "models",
            "system_prompt",
            "api_key_hashes",
            "signatures",
            "e2ee_key_per_chunk",
            "tee",
            "max_request_bytes",
            "request_body_timeout_seconds",
            "transport",
            "engine",
            "graceful_shutdown_seconds",
            "metrics",
            "node_key_file",
            "aci",
            "rate_limits",
            "workers",
            "gpus",
        }
    )
    _TRANSPORT: ClassVar[frozenset[str]] = frozenset(
        f.name for f in dataclasses.fields(TransportLimits)
    )
    #: Engine timeouts: in ``[engine]`` and in a model's table.
    _ENGINE: ClassVar[tuple[tuple[str, str], ...]] = (
        ("connect_timeout_seconds", "connect"),
        ("first_byte_timeout_seconds", "first_byte"),
        ("idle_timeout_seconds", "read"),
    )
    _MODEL: ClassVar[frozenset[str]] = frozenset(
        {
            "id",
            "backend",
            "name",
            "privacy",
            "available_context_tokens",
            "base_url",
            "upstream_model",
            "api_key_env",
            "capabilities",
            "connect_timeout_seconds",
            "first_byte_timeout_seconds",
            "idle_timeout_seconds",
        }
    )
    _STORE: ClassVar[frozenset[str]] = frozenset({"kind", "path", "url", "ttl_seconds"})

    def __init__(self, base_dir: Path, env: Mapping[str, str]) -> None:
        self.base_dir = base_dir
        self.env = env

    def load(self, data: Mapping[str, Any], data_dir_override: Path | str | None) -> ServerConfig:
        self._unknown(data, self._TOP, "")
        host = self._str(data, "host", "host", "127.0.0.1")
        port = self._int(data, "port", "port", 8000, low=0, high=65535)
        if data_dir_override is not None:
            data_dir = Path(data_dir_override)
        elif "data_dir" in data:
            data_dir = self._path(self._str(data, "data_dir", "data_dir", ""))
        else:
            data_dir = default_data_dir(self.env)

        raw_models = data.get("models", None)
        if raw_models is None:
            raw_models = _default_models()
        if not isinstance(raw_models, list) or not raw_models:
            raise ConfigError("models: must be a non-empty array of tables ([[models]])")
        engine = data.get("engine", {})
        if not isinstance(engine, dict):
            raise ConfigError("engine: must be a table")
        self._unknown(engine, frozenset(k for k, _ in self._ENGINE), "engine")
        self._engine_timeouts = self._timeouts(engine, Timeouts(), "engine")
        models = tuple(self._model(m, f"models[{i}]") for i, m in enumerate(raw_models))
        seen: set[str] = set()
        for m in models:
            if m.id in seen:
                raise ConfigError(f"models: duplicate model id {m.id!r}")
            seen.add(m.id)

        system_prompt = data.get("system_prompt")
        if system_prompt is not None and not isinstance(system_prompt, str):
            raise ConfigError("system_prompt: must be a string")

        hashes = data.get("api_key_hashes", [])
        if not isinstance(hashes, list):
            raise ConfigError("api_key_hashes: must be an array of SHA-256 hex strings")
        for i, h in enumerate(hashes):
            if not isinstance(h, str) or not _HEX64.fullmatch(h.lower()):
                raise ConfigError(
                    f"api_key_hashes[{i}]: must be the SHA-256 of a key, 64 hex characters "
                    "(make one with `enclaved hash-key`)"
                )

        tee = self._str(data, "tee", "tee", "simulated")
        if tee not in TEE_MODES:
            raise ConfigError(f"tee: unknown mode {tee!r} (one of: {', '.join(TEE_MODES)})")

        return ServerConfig(
            host=host,
            port=port,
            data_dir=data_dir,
            models=models,
            system_prompt=system_prompt or None,
            api_key_hashes=tuple(h.lower() for h in hashes),
            signatures=self._store(data.get("signatures", {})),
            e2ee_key_per_chunk=self._bool(data, "e2ee_key_per_chunk", "e2ee_key_per_chunk", False),
            tee=tee,
            max_request_bytes=self._int(
                data, "max_request_bytes", "max_request_bytes", 8 * 1024 * 1024, low=1024
            ),
            request_body_timeout_seconds=self._int(
                data,
                "request_body_timeout_seconds",
                "request_body_timeout_seconds",
                60,
                low=1,
                high=3600,
            ),
            graceful_shutdown_seconds=self._seconds(
                data, "graceful_shutdown_seconds", "graceful_shutdown_seconds", 10.0
            ),
            transport=self._transport(data.get("transport", {})),
            metrics=self._metrics(data.get("metrics", {})),
            node_key_file=self._optional_path(data, "node_key_file"),
            aci=self._aci(data.get("aci", {})),
            rate_limits=self._rate_limits(data.get("rate_limits", {})),
            workers=self._int(data, "workers", "workers", 1, low=1, high=256),
            gpus=self._bool(data, "gpus", "gpus", False),
        )

    def _aci(self, raw: Any) -> AciConfig:
        if not isinstance(raw, dict):
            raise ConfigError("aci: must be a table")
        self._unknown(
            raw,
            frozenset(
                {
                    "enabled",
                    "revision",
                    "keyset_lifetime_seconds",
                    "subject",
                    "tls_certificate",
                    "tls_domain",
                    "repo_url",
                    "repo_commit",
                    "image_digest",
                }
            ),
            "aci",
        )
        d = AciConfig()
        revision = self._str(raw, "revision", "aci.revision", d.revision)
        if revision not in ACI_REVISIONS:
            raise ConfigError(
                f"aci.revision: {revision!r} is not one of {', '.join(ACI_REVISIONS)}"
            )
        subject = raw.get("subject")
        repo_url, repo_commit, image_digest = (
            None if raw.get(k) is None else self._str(raw, k, f"aci.{k}", "")
            for k in ("repo_url", "repo_commit", "image_digest")
        )
        if (repo_url is None) != (repo_commit is None):
            raise ConfigError("aci.repo_url and aci.repo_commit: give both or neither")
        if repo_url is not None and not re.fullmatch(r"https://[^\s/]+/\S*", repo_url):
            raise ConfigError(f"aci.repo_url: {repo_url!r} is not an https:// URL")
        if repo_commit is not None and not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", repo_commit):
            raise ConfigError(
                f"aci.repo_commit: {repo_commit!r} is not a full git commit id "
                "(40 or 64 lowercase hex)"
            )
        if image_digest is not None and not re.fullmatch(r"sha256:[0-9a-f]{64}", image_digest):
            raise ConfigError(
                f"aci.image_digest: {image_digest!r} is not sha256: followed by 64 lowercase hex"
            )
        return AciConfig(
            enabled=self._bool(raw, "enabled", "aci.enabled", d.enabled),
            revision=revision,
            keyset_lifetime_seconds=self._int(
                raw,
                "keyset_lifetime_seconds",
                "aci.keyset_lifetime_seconds",
                d.keyset_lifetime_seconds,
                low=60,
                high=366 * 24 * 3600,
            ),
            subject=None if subject is None else self._str(raw, "subject", "aci.subject", ""),
            tls_certificate=self._optional_path(raw, "tls_certificate"),
            tls_domain=None
            if raw.get("tls_domain") is None
            else self._str(raw, "tls_domain", "aci.tls_domain", ""),
            repo_url=repo_url,
            repo_commit=repo_commit,
            image_digest=image_digest,
        )

    def _rate_limits(self, raw: Any) -> RateLimitConfig:
        if not isinstance(raw, dict):
            raise ConfigError("rate_limits: must be a table")
        names = ("requests_per_minute", "tokens_per_minute")
        self._unknown(raw, frozenset({*names, "keys"}), "rate_limits")

        def pair(table: Mapping[str, Any], where: str, default: tuple[int, int]) -> tuple[int, int]:
            requests, tokens = (
                self._int(table, n, f"{where}.{n}", d, low=0, high=10**12)
                for n, d in zip(names, default, strict=True)
            )
            return requests, tokens

        requests, tokens = pair(raw, "rate_limits", (0, 0))
        keys_raw = raw.get("keys", {})
        if not isinstance(keys_raw, dict):
            raise ConfigError("rate_limits.keys: must be a table of key hashes")
        keys = []
        for digest, table in keys_raw.items():
            where = f"rate_limits.keys.{digest[:12]}"
            if not _HEX64.fullmatch(digest.lower()):
                raise ConfigError(
                    f"{where}: must be the SHA-256 of a key, 64 hex characters (enclaved hash-key)"
                )
            if not isinstance(table, dict):
                raise ConfigError(f"{where}: must be a table")
            self._unknown(table, frozenset(names), where)
            # A key's own table overrides what it names; the rest is the default.
            keys.append((digest.lower(), *pair(table, where, (requests, tokens))))
        return RateLimitConfig(requests, tokens, tuple(keys))

    def _optional_path(self, data: Mapping[str, Any], key: str) -> Path | None:
        if data.get(key) is None:
            return None
        return self._path(self._str(data, key, key, ""))

    def _metrics(self, raw: Any) -> MetricsConfig:
        if not isinstance(raw, dict):
            raise ConfigError("metrics: must be a table")
        self._unknown(raw, frozenset({"enabled", "host", "port"}), "metrics")
        d = MetricsConfig()
        return MetricsConfig(
            enabled=self._bool(raw, "enabled", "metrics.enabled", d.enabled),
            host=self._str(raw, "host", "metrics.host", d.host),
            port=self._int(raw, "port", "metrics.port", d.port, low=1, high=65535),
        )

    def _transport(self, raw: Any) -> TransportLimits:
        if not isinstance(raw, dict):
            raise ConfigError("transport: must be a table")
        self._unknown(raw, self._TRANSPORT, "transport")
        d = TransportLimits()
        return TransportLimits(
            max_request_line_bytes=self._int(
                raw,
                "max_request_line_bytes",
                "transport.max_request_line_bytes",
                d.max_request_line_bytes,
                low=256,
                high=1024 * 1024,
            ),
            max_header_bytes=self._int(
                raw,
                "max_header_bytes",
                "transport.max_header_bytes",
                d.max_header_bytes,
                low=1024,
                high=16 * 1024 * 1024,
            ),
            first_request_timeout_seconds=self._seconds(
                raw,
                "first_request_timeout_seconds",
                "transport.first_request_timeout_seconds",
                d.first_request_timeout_seconds,
            ),
            header_timeout_seconds=self._seconds(
                raw,
                "header_timeout_seconds",
                "transport.header_timeout_seconds",
                d.header_timeout_seconds,
            ),
            max_connections=self._int(
                raw,
                "max_connections",
                "transport.max_connections",
                d.max_connections,
                low=1,
                high=1_000_000,
            ),
            keep_alive_timeout_seconds=self._seconds(
                raw,
                "keep_alive_timeout_seconds",
                "transport.keep_alive_timeout_seconds",
                d.keep_alive_timeout_seconds,
            ),
        )

    def _timeouts(self, raw: Mapping[str, Any], base: Timeouts, where: str) -> Timeouts:
        changes = {
            field: self._seconds(raw, key, f"{where}.{key}", 0.0)
            for key, field in self._ENGINE
            if key in raw
        }
        return dataclasses.replace(base, **changes) if changes else base

    @staticmethod
    def _seconds(raw: Mapping[str, Any], key: str, where: str, default: float) -> float:
        value = raw.get(key, default)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: must be a number of seconds")
        if not 0 < value <= 24 * 3600:
            raise ConfigError(f"{where}: {value} is out of range")
        return float(value)

    # -- sections -------------------------------------------------------------

    def _model(self, raw: Any, where: str) -> ModelConfig:
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: must be a table")
        if "id" not in raw:
            raise ConfigError(f"{where}.id: required")
        model_id = self._str(raw, "id", f"{where}.id", "")
        if not _MODEL_ID.fullmatch(model_id):
            raise ConfigError(
                f"{where}.id: {model_id!r} must start with 'tee-' or 'e2ee-' "
                "and use only lowercase letters, digits, '.', '_' and '-'"
            )
        where = f"models[{model_id}]"  # errors name the model by its id from here on
        self._unknown(raw, self._MODEL, where)
        backend = self._str(raw, "backend", f"{where}.backend", "embedded")
        base_url = raw.get("base_url")
        upstream_model = raw.get("upstream_model")
        api_key_env = raw.get("api_key_env")
        for key, value in (
            ("base_url", base_url),
            ("upstream_model", upstream_model),
            ("api_key_env", api_key_env),
        ):
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{where}.{key}: must be a string")
        if backend == "upstream":
            if not base_url:
                raise ConfigError(f"{where}.base_url: required for backend = 'upstream'")
            if not base_url.startswith(("http://", "https://")):
                raise ConfigError(f"{where}.base_url: must be an http:// or https:// URL")
            if not upstream_model:
                raise ConfigError(f"{where}.upstream_model: required for backend = 'upstream'")
        elif backend == "embedded":
            for key, value in (
                ("base_url", base_url),
                ("upstream_model", upstream_model),
                ("api_key_env", api_key_env),
                *((k, raw.get(k)) for k, _ in self._ENGINE),
            ):
                if value is not None:
                    raise ConfigError(f"{where}.{key}: only for backend = 'upstream'")
        else:
            raise ConfigError(
                f"{where}.backend: unknown backend {backend!r} (use 'embedded' or 'upstream')"
            )

        return ModelConfig(
            id=model_id,
            backend=backend,
            capabilities=self._capabilities(
                raw.get("capabilities", {}), model_id, f"{where}.capabilities"
            ),
            name=self._str(raw, "name", f"{where}.name", model_id),
            privacy=self._str(raw, "privacy", f"{where}.privacy", "private"),
            available_context_tokens=self._int(
                raw,
                "available_context_tokens",
                f"{where}.available_context_tokens",
                EMBEDDED_CONTEXT_TOKENS if backend == "embedded" else 8192,
                low=1,
            ),
            base_url=base_url.rstrip("/") if base_url else None,
            upstream_model=upstream_model,
            api_key_env=api_key_env,
            timeouts=self._timeouts(raw, self._engine_timeouts, where),
        )

    def _capabilities(self, raw: Any, model_id: str, where: str) -> Capabilities:
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: must be a table")
        self._unknown(raw, frozenset(CAPABILITY_KEYS), where)
        is_e2ee = model_id.startswith(E2EE_MODEL_PREFIX)
        values = {k: self._bool(raw, k, f"{where}.{k}", False) for k in raw}
        # The id prefix is the promise clients read first (PROTOCOL.md "Model ids"):
        # capabilities may not contradict it.
        if values.get("supportsE2EE", is_e2ee) != is_e2ee:
            raise ConfigError(
                f"{where}.supportsE2EE: only e2ee-* models support E2EE, "
                "and every e2ee-* model does"
            )
        if values.get("supportsTeeAttestation", True) is not True:
            raise ConfigError(
                f"{where}.supportsTeeAttestation: every tee-*/e2ee-* model is attested"
            )
        for key in ("supportsWebSearch", "supportsVision"):
            if values.get(key, False):
                raise ConfigError(f"{where}.{key}: enclaved does not implement this capability")
        return Capabilities(
            supports_e2ee=is_e2ee,
            supports_function_calling=values.get("supportsFunctionCalling", False),
            supports_reasoning=values.get("supportsReasoning", False),
        )

    def _store(self, raw: Any) -> StoreConfig:
        if not isinstance(raw, dict):
            raise ConfigError("signatures: must be a table")
        self._unknown(raw, self._STORE, "signatures")
        kind = self._str(raw, "kind", "signatures.kind", "sqlite")
        path = raw.get("path")
        url = raw.get("url")
        if kind == "sqlite":
            if url is not None:
                raise ConfigError("signatures.url: only for kind = 'redis'")
            if path is not None and not isinstance(path, str):
                raise ConfigError("signatures.path: must be a string")
        elif kind == "redis":
            if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
                raise ConfigError(
                    "signatures.url: required for kind = 'redis' (redis://host:port/db)"
                )
            if path is not None:
                raise ConfigError("signatures.path: only for kind = 'sqlite'")
        else:
            raise ConfigError(f"signatures.kind: unknown store {kind!r} (use 'sqlite' or 'redis')")
        return StoreConfig(
            kind=kind,
            path=self._path(path) if path else None,
            url=url,
            ttl_seconds=self._int(
                raw, "ttl_seconds", "signatures.ttl_seconds", 7 * 24 * 3600, low=1
            ),
        )

    # -- scalars ---------------------------------------------------------------

    @staticmethod
    def _unknown(raw: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
        for key in raw:
            if key not in allowed:
                name = f"{where}.{key}" if where else key
                raise ConfigError(f"{name}: unknown configuration key")

    @staticmethod
    def _str(raw: Mapping[str, Any], key: str, where: str, default: str) -> str:
        value = raw.get(key, default)
        if not isinstance(value, str):
            raise ConfigError(f"{where}: must be a string")
        return value

    @staticmethod
    def _bool(raw: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
        value = raw.get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: must be true or false")
        return value

    @staticmethod
    def _int(
        raw: Mapping[str, Any],
        key: str,
        where: str,
        default: int,
        *,
        low: int | None = None,
        high: int | None = None,
    ) -> int:
        value = raw.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{where}: must be an integer")
        if (low is not None and value < low) or (high is not None and value > high):
            raise ConfigError(f"{where}: {value} is out of range")
        return value

    def _path(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.base_dir / p
