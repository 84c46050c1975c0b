"""Taking a listening port before anything slow, and saying plainly why it failed.

``enclaved serve`` and ``enclaved proxy`` bind their socket first and hand
it to uvicorn: a busy port is one short line and exit code 1, before a
model loads or a URL is printed that nothing listens on.
"""

from __future__ import annotations

import errno
import socket


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (not yet listening); OSError if it cannot be."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose proto
    # says TCP, and without it Nagle holds small SSE writes for ~40 ms.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def bind_error(host: str, port: int, exc: OSError) -> str:
    """One line: where, and why, in words a user can act on."""
    if exc.errno == errno.EADDRINUSE:
        why = "the address is already in use (another server? pick a port with --port)"
    elif exc.errno == errno.EADDRNOTAVAIL:
        why = "this machine has no such address (--host)"
    elif exc.errno == errno.EACCES:
        why = "permission denied (ports below 1024 need privileges)"
    elif isinstance(exc, socket.gaierror):
        why = f"unknown host ({exc.strerror})"
    else:
        why = exc.strerror or str(exc)
    return f"cannot listen on {host}:{port}: {why}"


def url_of(sock: socket.socket) -> str:
    """``http://host:port`` of a bound socket (IPv6 in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
