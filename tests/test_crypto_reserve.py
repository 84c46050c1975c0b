"""Keys made ahead of time (enclaved.crypto.reserve) and the lighter KeyPair.

What a user relies on: an item of a reserve is never handed out twice (so
"a fresh ephemeral key per message" still holds), an empty reserve never
blocks, and a sealer made ahead produces an envelope the node opens.
"""

from __future__ import annotations

import os
import threading

import pytest
from coincurve import PrivateKey

from enclaved.crypto import KeyPair, Opener, looks_like_envelope
from enclaved.crypto._primitives import ethereum_address
from enclaved.crypto.reserve import Reserve, prompt_sealers


def _counter() -> tuple[Reserve[int], list[int]]:
    made: list[int] = []

    def make() -> int:
        made.append(len(made))
        return made[-1]

    return Reserve(make, 3), made


def test_refill_makes_up_to_size_and_take_hands_each_item_out_once() -> None:
    reserve, made = _counter()
    assert len(reserve) == 0
    reserve.refill()
    assert len(reserve) == 3 and made == [0, 1, 2]
    reserve.refill()  # already full: nothing made
    assert made == [0, 1, 2]
    assert [reserve.take() for _ in range(3)] == [0, 1, 2]
    assert len(reserve) == 0


def test_an_empty_reserve_makes_the_item_on_the_spot() -> None:
    reserve, made = _counter()
    assert reserve.take() == 0 and reserve.take() == 1
    assert len(reserve) == 0 and made == [0, 1]


def test_negative_size_is_refused() -> None:
    with pytest.raises(ValueError):
        Reserve(int, -1)


def test_threads_sharing_a_reserve_never_get_the_same_item() -> None:
    reserve = Reserve(lambda: os.urandom(16), 200)
    reserve.refill()
    taken: list[bytes] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(100):  # 400 takes from 200 ready: half made on the spot
            item = reserve.take()
            with lock:
                taken.append(item)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(taken) == 400 and len(set(taken)) == 400


def test_prompt_sealers_each_use_their_own_key_and_open_at_the_node() -> None:
    node = KeyPair.generate()
    reserve = prompt_sealers(node.public_key, 2)
    reserve.refill()
    envelopes = [reserve.take().seal(f"message {i}") for i in range(5)]  # 2 ready, 3 made now
    assert all(looks_like_envelope(e) for e in envelopes)
    assert len({e[:130] for e in envelopes}) == 5
    opener = Opener(node)
    assert [opener.open_text(e) for e in envelopes] == [f"message {i}" for i in range(5)]


def test_prompt_sealers_refuse_a_key_that_is_not_on_the_curve() -> None:
    from enclaved.errors import InvalidKeyError

    with pytest.raises(InvalidKeyError):
        prompt_sealers(b"\x04" + b"\x01" * 64, 1)


def test_generated_keypair_is_consistent_and_signs_like_coincurve() -> None:
    from enclaved.crypto import eip191_recover_address, eip191_sign

    kp = KeyPair.generate()
    reference = PrivateKey(kp._secret)
    assert kp.public_key == reference.public_key.format(compressed=False)
    assert kp.public_key_hex == kp.public_key.hex()
    assert kp.address == ethereum_address(kp.public_key)
    assert eip191_recover_address("hello", eip191_sign(kp, "hello")) == kp.address
    # The same secret gives the same key; no two fresh ones are alike.
    again = KeyPair.from_secret(kp._secret)
    assert again.public_key == kp.public_key and again.address == kp.address
    assert KeyPair().public_key != KeyPair().public_key


@pytest.mark.parametrize(
    "secret",
    [b"", b"\x01" * 31, b"\x00" * 32, b"\xff" * 32, "11" * 32, None.__class__],
    ids=["empty", "short", "zero", "over-the-order", "hex-text", "not-bytes"],
)
def test_a_keypair_from_an_invalid_secret_is_refused(secret: object) -> None:
    from enclaved.errors import InvalidKeyError

    with pytest.raises(InvalidKeyError):
        KeyPair.from_secret(secret)  # type: ignore[arg-type]
