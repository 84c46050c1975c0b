"""``enclaved serve`` and ``enclaved proxy`` bind their socket themselves
(``cli/_listen.py``): what they hand to uvicorn must serve like the socket
uvicorn would have made."""

from __future__ import annotations

import asyncio
import errno
import socket

import pytest

from enclaved.cli._listen import bind, bind_error, url_of


def test_accepted_connections_have_nagle_off() -> None:
    # asyncio sets TCP_NODELAY only where the socket's proto says TCP; a
    # socket made with proto 0 left Nagle on, and every small SSE write then
    # waited for the client's delayed ACK (TTFT +43 ms in bench/embedded.py).
    async def main() -> int:
        sock = bind("127.0.0.1", 0)
        accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            s = writer.get_extra_info("socket")
            accepted.set_result(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_connect, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
            nodelay = await asyncio.wait_for(accepted, 5)
            writer.close()
        return nodelay

    assert asyncio.run(main()) != 0


def test_a_taken_port_is_named_with_what_to_do() -> None:
    with bind("127.0.0.1", 0) as first:
        first.listen()
        port = first.getsockname()[1]
        with pytest.raises(OSError) as info:
            bind("127.0.0.1", port)
    assert info.value.errno == errno.EADDRINUSE
    assert bind_error("127.0.0.1", port, info.value) == (
        f"cannot listen on 127.0.0.1:{port}: the address is already in use "
        "(another server? pick a port with --port)"
    )


def test_url_of_brackets_ipv6() -> None:
    with bind("127.0.0.1", 0) as s:
        assert url_of(s) == f"http://127.0.0.1:{s.getsockname()[1]}"
    try:
        six = bind("::1", 0)
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    with six:
        assert url_of(six) == f"http://[::1]:{six.getsockname()[1]}"
