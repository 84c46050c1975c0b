"""Keys made ahead of time, so that a request does not wait for them.

A key generation, an ECDH and an HKDF cost ~0.1-0.2 ms each on a CPU that
has just woken from idle (~40, ~70 and ~25 us warm): about half of what
end-to-end encryption adds to the time to a first token (docs/benchmarks.md).
The parts that do not depend on the request can be made before it arrives:

- the node: the ephemeral key pair of the next response (its ECDH needs the
  client's key, which only the request brings);
- the client: the whole sealer of the next prompt message (the node's key is
  known from the attestation).

Each item is handed out once and never again, so "a fresh ephemeral key per
message / per response" (PROTOCOL.md) still holds. Refill after a request is
done, off the path to its first token. Items live in memory only, like every
other key here.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable
from typing import Generic, TypeVar

from ._primitives import new_ephemeral, parse_public_key
from .envelope import Sealer

T = TypeVar("T")

#: An ephemeral key pair: the 32-byte secret and the 65-byte uncompressed public key.
Ephemeral = tuple[bytes, bytes]


class Reserve(Generic[T]):
    """Up to ``size`` items made by ``make``, each taken at most once.

    :meth:`take` never waits for a refill: an empty reserve makes the item
    on the spot. Safe to share between threads (``deque.popleft`` and
    ``append`` are atomic; two refills at once may overshoot ``size`` by a
    few items, which costs nothing but the work).
    """

    __slots__ = ("_items", "_make", "size")

    def __init__(self, make: Callable[[], T], size: int) -> None:
        if size < 0:
            raise ValueError("a reserve's size cannot be negative")
        self._make = make
        self._items: collections.deque[T] = collections.deque()
        self.size = size

    def take(self) -> T:
        try:
            return self._items.popleft()
        except IndexError:
            return self._make()

    def refill(self) -> None:
        """Make items until ``size`` are waiting."""
        while len(self._items) < self.size:
            self._items.append(self._make())

    def clear(self) -> None:
        """Drop every waiting item."""
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


def ephemeral_keys(size: int, *, random: Callable[[int], bytes] = os.urandom) -> Reserve[Ephemeral]:
    """Ephemeral key pairs for ``Sealer(ephemeral=...)``: one per response."""
    return Reserve(lambda: new_ephemeral(random), size)


def prompt_sealers(
    recipient: bytes, size: int, *, random: Callable[[int], bytes] = os.urandom
) -> Reserve[Sealer]:
    """Sealers to ``recipient`` (65 bytes), each for one message: key made, ECDH and HKDF done."""
    point = parse_public_key(recipient)
    return Reserve(lambda: Sealer(point, random=random), size)


__all__ = ["Ephemeral", "Reserve", "ephemeral_keys", "prompt_sealers"]
