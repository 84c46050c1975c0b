"""Chunk crypto: seal and open one E2EE response chunk, side by side.

    python bench/crypto.py [--seconds S] [--chunk-bytes N]

Compares, in one run on one core:

- enclaved, one ephemeral key per chunk (``Sealer(per_chunk=True)``): key
  generation + ECDH + HKDF + AES-GCM per chunk;
- enclaved, one ephemeral key per response (the server's default): AES-GCM
  and a fresh IV per chunk;
- the same envelope written on plain ``cryptography`` (OpenSSL's secp256k1);
- the floor: one libsecp256k1 key generation + one ECDH, nothing else:
  ``secp256k1_ec_pubkey_create`` and ``secp256k1_ecdh`` called directly
  (no serialization, no Python objects);
- for reference, the same through coincurve's own API (``PrivateKey()``,
  which also derives an x-only Schnorr key: two key generations, and
  enclaved's ``ecdh_x``) - what enclaved's sealer cost before it generated
  its ephemeral keys itself.

Opening is measured the same way (a fresh key per chunk vs the cached key of
one response). Every rate is measured in interleaved slices of ~0.1 s, so
that a shared machine's drift hits all of them alike. Prints a table, then
one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable

from coincurve import PrivateKey
from coincurve._libsecp256k1 import ffi, lib  # type: ignore[import-not-found]  # a cffi module, no stubs
from coincurve.context import GLOBAL_CONTEXT
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from enclaved.crypto import KeyPair, Opener, Sealer
from enclaved.crypto._primitives import _copy_x, ecdh_x


def rates(fns: dict[str, Callable[[], object]], seconds: float) -> dict[str, float]:
    """Calls per second of each function, about ``seconds`` each, measured in
    interleaved slices of ~0.1 s so that the machine's drift hits all alike."""
    for fn in fns.values():
        for _ in range(50):  # warm up
            fn()
    calls = dict.fromkeys(fns, 0)
    spent = dict.fromkeys(fns, 0.0)
    slices = max(1, round(seconds / 0.1))
    for _ in range(slices):
        for name, fn in fns.items():
            n, start = 0, time.perf_counter()
            deadline = start + seconds / slices
            while True:
                for _ in range(20):
                    fn()
                n += 20
                now = time.perf_counter()
                if now >= deadline:
                    break
            calls[name] += n
            spent[name] += now - start
    return {name: calls[name] / spent[name] for name in fns}


def openssl_sealer(recipient: bytes) -> Callable[[bytes], str]:
    peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), recipient)

    def seal(plaintext: bytes) -> str:
        eph = ec.generate_private_key(ec.SECP256K1())
        key = HKDF(hashes.SHA256(), 32, None, b"ecdsa_encryption").derive(
            eph.exchange(ec.ECDH(), peer)
        )
        iv = os.urandom(12)
        pub = eph.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return (pub + iv + AESGCM(key).encrypt(iv, plaintext, None)).hex()

    return seal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds", type=float, default=2.0, help="time per measurement (default 2)"
    )
    parser.add_argument(
        "--chunk-bytes",
        type=int,
        default=16,
        help="plaintext per chunk (a token or two; default 16)",
    )
    args = parser.parse_args()

    client = KeyPair.generate()
    chunk = b"x" * args.chunk_bytes
    secs = args.seconds
    peer = PrivateKey().public_key

    per_chunk = Sealer(client.public_key, per_chunk=True)
    per_response = Sealer(client.public_key)
    openssl = openssl_sealer(client.public_key)

    ctx = GLOBAL_CONTEXT.ctx
    point = ffi.new("secp256k1_pubkey *")
    shared = ffi.new("unsigned char[32]")

    def floor() -> None:
        secret = os.urandom(32)
        lib.secp256k1_ec_pubkey_create(ctx, point, secret)
        lib.secp256k1_ecdh(ctx, shared, peer.public_key, secret, _copy_x, ffi.NULL)

    fresh = [per_chunk.seal(chunk) for _ in range(2000)]
    same = [per_response.seal(chunk) for _ in range(2000)]
    it = iter(range(10**9))

    def open_fresh() -> None:
        Opener(client).open(fresh[next(it) % len(fresh)])

    opener = Opener(client)

    def open_cached() -> None:
        opener.open(same[next(it) % len(same)])

    results = rates(
        {
            "floor_keygen_ecdh": floor,
            "coincurve_privatekey_ecdh": lambda: ecdh_x(PrivateKey(), peer),
            "seal_per_chunk_key": lambda: per_chunk.seal(chunk),
            "seal_per_response_key": lambda: per_response.seal(chunk),
            "seal_openssl_per_chunk_key": lambda: openssl(chunk),
            "open_per_chunk_key": open_fresh,
            "open_per_response_key": open_cached,
        },
        secs,
    )

    ratios = {
        "floor_over_seal_per_chunk_key": results["floor_keygen_ecdh"]
        / results["seal_per_chunk_key"],
        "seal_per_chunk_key_over_openssl": results["seal_per_chunk_key"]
        / results["seal_openssl_per_chunk_key"],
        "seal_per_response_over_per_chunk_key": results["seal_per_response_key"]
        / results["seal_per_chunk_key"],
    }
    targets = {
        "seal_per_chunk_key >= 8000/s": results["seal_per_chunk_key"] >= 8000,
        "floor / seal_per_chunk_key <= 1.5": ratios["floor_over_seal_per_chunk_key"] <= 1.5,
    }
    for name, value in results.items():
        print(f"{name:<32} {value:>12,.0f} /s")
    for name, value in ratios.items():
        print(f"{name:<40} {value:>8.2f}x")
    for name, ok in targets.items():
        print(f"target {name:<40} {'met' if ok else 'MISSED'}")
    print(
        json.dumps(
            {
                "bench": "crypto",
                "chunk_bytes": args.chunk_bytes,
                "per_second": results,
                "ratios": ratios,
                "targets_met": targets,
            }
        )
    )


if __name__ == "__main__":
    main()
