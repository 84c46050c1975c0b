"""Keys made ahead of time, so that a request does not wait for them.

A key generation, an ECDH and an HKDF cost ~0.1-0.2 ms each on a CPU that
has just woken from idle (~40, ~70 and ~8 us warm). A client knows the
node's key from the attestation, so the sealer of its next prompt message
(fresh key, ECDH, HKDF) can be made before the prompt exists: sealing is
then one AES call, and the first token comes ~0.3 ms sooner
(docs/benchmarks.md).

Each item is handed out once and never again, so "a fresh ephemeral key per
message" (PROTOCOL.md) still holds. Refill after a request is done, off the
path to its first token. Items live in memory only, like every other key
here.

(The node's own ephemeral key per response was made ahead this way too,
once: no difference measurable in A/B runs, so it is made in the request.)
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable
from typing import Generic, TypeVar

from ._primitives import parse_public_key
from .envelope import Sealer

T = TypeVar("T")


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

    def __len__(self) -> int:
        return len(self._items)


def prompt_sealers(
    recipient: bytes, size: int, *, random: Callable[[int], bytes] = os.urandom
) -> Reserve[Sealer]:
    """Sealers to ``recipient`` (65 bytes), each for one message: key made, ECDH and HKDF done."""
    point = parse_public_key(recipient)
    return Reserve(lambda: Sealer(point, random=random), size)


__all__ = ["Reserve", "prompt_sealers"]
