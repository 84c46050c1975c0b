"""``enclaved serve`` and ``enclaved hash-key``.

``enclaved serve`` runs one node: it loads the configuration (built-in
default, or ``--config``), makes the node key in memory, loads the model(s),
and serves PROTOCOL.md on ``--host``/``--port``.

Precedence: command-line flag > environment variable > config file > default.

===================  ==========================  =================
flag                 environment                 config key
===================  ==========================  =================
``--config``         ``ENCLAVED_CONFIG``         (the file itself)
``--host``           ``ENCLAVED_HOST``           ``host``
``--port``           ``ENCLAVED_PORT``           ``port``
``--data-dir``       ``ENCLAVED_DATA_DIR``       ``data_dir``
``--tee``            ``ENCLAVED_TEE``            ``tee``
``--node-key-file``  ``ENCLAVED_NODE_KEY_FILE``  ``node_key_file``
``--workers``        ``ENCLAVED_WORKERS``        ``workers``
``--log-level``      ``ENCLAVED_LOG_LEVEL``      -
``--log-format``     ``ENCLAVED_LOG_FORMAT``     -
===================  ==========================  =================

Logging goes to stderr and never contains prompt or completion content, API
keys, ``Authorization`` headers, E2EE keys or the node key; the access log
shows method, path (no query string), status and time.

``enclaved hash-key`` prints the SHA-256 of an API key for ``api_key_hashes``.
It reads the key from standard input (never from the command line, where
shell history and ``ps`` would see it), or makes a new one with
``--generate``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import getpass
import logging
import os
import shutil
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from ._listen import bind, bind_error, url_of


def add_parsers(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve",
        help="run an enclaved node: OpenAI-compatible, attested, E2EE, signed answers",
        description="Run an enclaved node. Without --config it serves e2ee-smollm2-135m and "
        "tee-smollm2-135m from the embedded SmolLM2-135M model on a SIMULATED TEE (development).",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="TOML configuration (docs/configuration.md) [$ENCLAVED_CONFIG]",
    )
    p.add_argument("--host", help="address to listen on (default 127.0.0.1) [$ENCLAVED_HOST]")
    p.add_argument("--port", type=int, help="port to listen on (default 8000) [$ENCLAVED_PORT]")
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="state: dev root CA, signatures (default ./data) [$ENCLAVED_DATA_DIR]",
    )
    p.add_argument(
        "--tee",
        choices=["simulated", "dstack", "auto"],
        help="evidence source: simulated (development, the default), dstack (the guest agent of "
        "a dstack TDX CVM; the node key from its KMS), auto (dstack if its agent answers, else "
        "refuse to start) [$ENCLAVED_TEE]",
    )
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="processes serving the port as one node: one key, one signature store "
        "(default 1) [$ENCLAVED_WORKERS]",
    )
    p.add_argument(
        "--node-key-file",
        metavar="FILE",
        help="the node key (64 hex characters, mode 0600), shared by the replicas of one "
        "deployment; default: the KMS's key on dstack, else a new key [$ENCLAVED_NODE_KEY_FILE]",
    )
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="log lines as text (default) or one JSON object each, for a log pipeline; "
        "content-free either way [$ENCLAVED_LOG_FORMAT]",
    )
    p.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="log verbosity (default info) [$ENCLAVED_LOG_LEVEL]",
    )
    p.set_defaults(func=run_serve)

    h = subparsers.add_parser(
        "hash-key",
        help="print the SHA-256 of an API key, for api_key_hashes in the server config",
        description="Reads an API key from standard input (or a prompt) and prints its SHA-256 for "
        "api_key_hashes. With --generate, makes a new random key and prints the key and its hash.",
    )
    h.add_argument("--generate", action="store_true", help="make a new random key")
    h.set_defaults(func=run_hash_key)


# -- hash-key ----------------------------------------------------------------------


def run_hash_key(args: argparse.Namespace) -> int:
    from ..server.auth import generate_key, hash_key

    if args.generate:
        key = generate_key()
        print(f"key:  {key}")
        print(f"hash: {hash_key(key)}")
        print("Give the key to the client; put only the hash in api_key_hashes.", file=sys.stderr)
        return 0
    if sys.stdin.isatty():
        key = getpass.getpass("API key: ")
    else:
        key = sys.stdin.readline()
    key = key.strip()
    if not key:
        print("enclaved hash-key: no key given", file=sys.stderr)
        return 2
    print(hash_key(key))
    return 0


# -- serve -------------------------------------------------------------------------


def load_config(args: argparse.Namespace, env: dict[str, str] | None = None) -> Any:
    """The effective :class:`ServerConfig` (flags > environment > file > default)."""
    from ..errors import ConfigError
    from ..server.config import ServerConfig

    env = dict(os.environ) if env is None else env
    data_dir = args.data_dir or env.get("ENCLAVED_DATA_DIR") or None
    path = args.config or env.get("ENCLAVED_CONFIG") or None
    if path:
        config = ServerConfig.from_toml(path, data_dir=data_dir, env=env)
    else:
        config = ServerConfig.default(data_dir=data_dir, env=env)
    host = args.host or env.get("ENCLAVED_HOST")
    changes: dict[str, Any] = {}
    if host:
        changes["host"] = host
    if args.port is not None:
        changes["port"] = args.port
    elif env.get("ENCLAVED_PORT"):
        try:
            changes["port"] = int(env["ENCLAVED_PORT"])
        except ValueError:
            raise ConfigError(
                f"ENCLAVED_PORT: {env['ENCLAVED_PORT']!r} is not a port number"
            ) from None
    key_file = args.node_key_file or env.get("ENCLAVED_NODE_KEY_FILE")
    if key_file:
        changes["node_key_file"] = Path(key_file).expanduser().resolve()
    workers = args.workers if args.workers is not None else env.get("ENCLAVED_WORKERS")
    if workers is not None:
        try:
            changes["workers"] = int(workers)
        except ValueError:
            raise ConfigError(f"ENCLAVED_WORKERS: {workers!r} is not a number") from None
        if not 1 <= changes["workers"] <= 256:
            raise ConfigError(f"workers: {workers} is out of range (1-256)")
    tee = args.tee or env.get("ENCLAVED_TEE")
    if tee:
        from ..server.config import TEE_MODES

        if tee not in TEE_MODES:
            raise ConfigError(
                f"ENCLAVED_TEE: unknown mode {tee!r} (one of: {', '.join(TEE_MODES)})"
            )
        changes["tee"] = tee
    if not 0 <= changes.get("port", config.port) <= 65535:
        raise ConfigError(f"port {changes['port']} is out of range")
    config = config.replace(**changes) if changes else config
    if config.workers > 1 and config.metrics.enabled:
        raise ConfigError("metrics: not available with more than one worker yet")
    return config


class _Once(logging.Filter):
    """Lets each distinct message of a logger through once.

    The node verifies its own evidence on every ``/tee/attestation``; under
    the simulated TEE the development policy logs its relaxations each time.
    Once per process says it as loudly, without drowning the log.
    """

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self._seen:
            return False
        self._seen.add(message)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, and ``exception`` (its type only) when one is attached.

    The messages are the node's own, as content-free as the text format; an
    exception's text and traceback are left out (a message may quote input).
    """

    def format(self, record: logging.LogRecord) -> str:
        import datetime

        import orjson

        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and record.exc_info[0] is not None:
            entry["exception"] = record.exc_info[0].__name__
        return orjson.dumps(entry).decode()


def _setup_logging(level: str, log_format: str = "text") -> None:
    import warnings

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if log_format == "json"
        else logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("enclaved.server.policy").addFilter(_Once())
    # The same relaxations also arrive as InsecurePolicyWarning: the log line says it already.
    warnings.filterwarnings("ignore", message="INSECURE attestation policy")
    # uvicorn's own access log prints query strings; ours (enclaved.access) does not.
    logging.getLogger("uvicorn.access").disabled = True
    # httpx logs every request URL at INFO (upstream engines): keep it quiet.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _banner(config: Any, app: Any, url: str) -> str:
    node = app.state.node
    lines = [
        "",
        f"enclaved is serving on {url}/v1 (also {url}/api/v1)",
        f"  models:          {', '.join(m.id for m in config.models)}",
        f"  signing address: {node.key.address}",
    ]
    if config.workers > 1:
        lines.append(f"  workers:         {config.workers} processes, one key, one signature store")
    root_path = getattr(node.evidence, "root_path", None)
    if node.evidence.tee_hardware == "simulated":
        if root_path is not None:
            lines.append(f"  dev root CA:     {root_path}")
        lines += [
            "",
            "  !!! THE TEE IS SIMULATED: DEVELOPMENT ONLY !!!",
            "  !!! Its attestation proves NOTHING about hardware. Send nothing secret to this node. !!!",
        ]
        if root_path is not None:
            model = config.models[0].id
            command, on_path = _own_command()
            lines.append(
                f"  check it with:   {command} attest --model {model} --base-url {url}/v1 "
                f"--trust-root {root_path}"
            )
            if not on_path:
                lines.append(
                    f"  (enclaved is not on PATH: `source {Path(sys.executable).parent}/activate` "
                    "puts it there)"
                )
    lines.append("")
    return "\n".join(lines)


def _own_command() -> tuple[str, bool]:
    """How to run this same ``enclaved`` from another shell, and whether PATH finds it."""
    script = Path(sys.argv[0]).absolute()
    found = shutil.which("enclaved")
    if found and Path(found).absolute() == script:
        return "enclaved", True
    beside = Path(sys.executable).parent / "enclaved"  # the virtual environment's script
    return (str(script) if script.name == "enclaved" else str(beside)), False


def _raise_open_file_limit(log: logging.Logger) -> None:
    """Lift the soft limit on open files to the hard one.

    Each stream holds two sockets (its client's and, with an upstream
    engine, one to the engine), and many systems start processes with a
    soft limit of 1024: a few hundred streams would then fail to accept or
    to connect. Raising the soft limit up to the hard one needs no privilege.
    """
    try:
        import resource
    except ImportError:  # not on POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 16
    if soft == resource.RLIM_INFINITY or soft >= target:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("could not raise the open-file limit from %d: %s", soft, exc)
        return
    log.info("open-file limit raised from %d to %d", soft, target)


def run_serve(args: argparse.Namespace) -> int:
    """Exit codes: 0 stopped by a signal, 1 could not start (port, model), 2 configuration."""
    from ..errors import ConfigError

    # A crash in native code (llama.cpp) would otherwise end the process with
    # no word: print the Python stack of every thread to stderr instead.
    with contextlib.suppress(OSError, ValueError):  # a stderr with no file descriptor
        faulthandler.enable()
    level = args.log_level or os.environ.get("ENCLAVED_LOG_LEVEL") or "info"
    log_format = args.log_format or os.environ.get("ENCLAVED_LOG_FORMAT") or "text"
    if log_format not in ("text", "json"):
        print(
            f"enclaved serve: ENCLAVED_LOG_FORMAT: {log_format!r} is not text or json",
            file=sys.stderr,
        )
        return 2
    _setup_logging(level, log_format)
    log = logging.getLogger("enclaved.serve")
    try:
        config = load_config(args)
    except ConfigError as exc:
        print(f"enclaved serve: {exc}", file=sys.stderr)
        return 2

    # Take the port first: a busy one fails in a second, not after the model loads.
    try:
        sock = bind(config.host, config.port)
    except OSError as exc:
        print(f"enclaved serve: {bind_error(config.host, config.port, exc)}", file=sys.stderr)
        return 1

    log.info("starting enclaved (data dir %s)", Path(config.data_dir).resolve())
    _raise_open_file_limit(log)
    if config.workers == 1:
        try:
            return _run_node(config, sock, log)
        finally:
            sock.close()
    return _run_workers(config, sock, log)


def _run_workers(config: Any, sock: socket.socket, log: logging.Logger) -> int:
    """``--workers N``: N processes accepting on one socket, as one node.

    The parent makes what they must share before it forks, so a client sees
    one node whatever process answers: the node key (made here and inherited
    in memory, never written; or each worker loads the same key file, or
    derives the same key from the KMS), the development root of the simulated
    TEE, and the signature store (SQLite in WAL mode on one file, or Redis).
    Each worker loads its own engine connection or embedded model. The parent
    forwards SIGTERM / SIGINT and exits when they have; a worker that dies on
    its own stops the node (exit 1), loudly, rather than serving with fewer.
    """
    from ..crypto import KeyPair

    key = None
    if config.node_key_file is None and config.tee == "simulated":
        key = KeyPair.generate()  # shared by fork: memory only
    if config.tee == "simulated":
        from ..evidence.simulated import SimulatedTdx

        SimulatedTdx.load_or_create(config.data_dir)  # one root, made before the workers race
    children: list[int] = []
    for index in range(config.workers):
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                code = _run_node(config, sock, log, node_key=key, banner=index == 0)
            finally:
                os._exit(code)
        children.append(pid)
    sock.close()
    stopping = False

    def forward(sig: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    code = 0
    while children:
        pid, status = os.wait()
        if pid not in children:
            continue
        children.remove(pid)
        if not stopping:
            log.error(
                "a worker exited (status %d): stopping the node", os.waitstatus_to_exitcode(status)
            )
            code = 1
            forward(signal.SIGTERM, None)
    return code


def _run_node(
    config: Any,
    sock: socket.socket,
    log: logging.Logger,
    *,
    node_key: Any = None,
    banner: bool = True,
) -> int:
    """One node process on ``sock``: the app, its metrics, uvicorn."""
    import uvicorn

    from ..errors import Error
    from ..server.app import create_app, start_backends
    from ..server.backends.base import BackendError
    from ..server.transport import limited_http_protocol

    try:
        # The node key: from the key file, or the KMS where the evidence source
        # has one (dstack), else made now; in memory only, never written or logged.
        app = create_app(config, node_key=node_key)
    except Error as exc:
        print(f"enclaved serve: {exc}", file=sys.stderr)
        return 2
    metrics = app.state.node.metrics
    if metrics is not None:
        where = config.metrics
        try:
            metrics.serve(where.host, where.port)
        except OSError as exc:
            print(
                f"enclaved serve: metrics: {bind_error(where.host, where.port, exc)}",
                file=sys.stderr,
            )
            return 1
        log.info("metrics on http://%s:%d/metrics", where.host, where.port)

    uv_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        lifespan="on",
        # llhttp (C) rather than h11 (pure Python) to parse requests, with the
        # request head bounded in size and time (server/transport.py says why there).
        http=limited_http_protocol(config.transport),
        # Nothing reads the client's address (the access log does not show
        # it): no X-Forwarded-For rewriting, one ASGI layer less per request.
        proxy_headers=False,
        log_config=None,  # ours (above): uvicorn's loggers propagate to it
        access_log=False,
        server_header=False,
        # Then uvicorn cancels what still runs, and each stream ends with an
        # error event and [DONE] (server/chat/stream.py), not a cut connection.
        timeout_graceful_shutdown=config.graceful_shutdown_seconds,
        timeout_keep_alive=config.transport.keep_alive_timeout_seconds,
    )

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # SIGINT / SIGTERM is how a node is asked to stop: shut down
            # gracefully and exit 0, instead of uvicorn's re-raising the signal
            # afterwards. A second Ctrl-C still forces the exit.
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            else:
                self.should_exit = True

    server = Server(uv_config)

    async def serve() -> int:
        # The models load (and self-test) before the node serves, so that one
        # that cannot run stops the start with its reason, not a traceback.
        try:
            await start_backends(app)
        except BackendError as exc:
            cause = f" ({type(exc.__cause__).__name__})" if exc.__cause__ else ""
            print(f"enclaved serve: {exc.message}{cause}", file=sys.stderr)
            for backend in {id(b): b for b in app.state.node.backends.values()}.values():
                with contextlib.suppress(Exception):
                    await backend.close()
            return 1
        task = asyncio.ensure_future(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if server.started and banner:
            print(_banner(config, app, url_of(sock)), flush=True)
        await task
        return 0 if server.started else 1

    return asyncio.run(serve())
