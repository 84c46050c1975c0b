"""ACI on the node, the parts that need no encoding: ``[aci]`` and the store.

A receipt is stored with its signature and the SHA-256 of the caller's API
key; the key's digest is kept for the route and never served.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from enclaved.errors import ConfigError
from enclaved.server.config import AciConfig, ServerConfig
from enclaved.server.signing import SignatureRecord
from enclaved.server.store import SqliteStore
from enclaved.server.store.memory import MemoryStore

RECEIPT = {
    "api_version": "aci/1",
    "receipt_id": "chatcmpl-abc",
    "chat_id": "chatcmpl-abc",
    "model": "tee-x",
    "served_at": 2**60,  # an integer beyond 2^53 survives the store unchanged
    "event_log": [{"type": "request.received", "body_hash": "sha256:" + "00" * 32}],
    "key_id": "k",
    "signature": "ab" * 64,
}


def _record() -> SignatureRecord:
    return SignatureRecord(
        text="a:b",
        signature="0x" + "11" * 65,
        signing_address="0x" + "22" * 20,
        request_id="chatcmpl-abc",
        model="tee-x",
        receipt=RECEIPT,
        api_key_sha256="33" * 32,
    )


def test_aci_config_defaults_and_profile(tmp_path: Path) -> None:
    assert ServerConfig.default(data_dir=tmp_path).aci == AciConfig()
    assert AciConfig().revision == "current"
    config = ServerConfig.from_dict(
        {"aci": {"revision": "rev-a", "keyset_lifetime_seconds": 3600, "subject": "dns:x"}},
        data_dir=tmp_path,
    )
    assert config.aci == AciConfig(revision="rev-a", keyset_lifetime_seconds=3600, subject="dns:x")


@pytest.mark.parametrize(
    "aci",
    [{"revision": "rev-b"}, {"revision": "rev-a", "extra": 1}, {"keyset_lifetime_seconds": 1}],
)
def test_aci_config_refuses_what_it_does_not_know(tmp_path: Path, aci: object) -> None:
    with pytest.raises(ConfigError, match="aci"):
        ServerConfig.from_dict({"aci": aci}, data_dir=tmp_path)


def test_served_document_has_the_receipt_never_the_key_digest() -> None:
    record = _record()
    served = record.to_dict()
    assert served["receipt"] == RECEIPT
    assert "api_key_sha256" not in served
    assert list(served)[:6] == [
        "text",
        "signature",
        "signing_address",
        "signing_algo",
        "request_id",
        "model",
    ]
    assert SignatureRecord.from_json(record.to_json()) == record


async def _round_trip(store: object) -> SignatureRecord | None:
    await store.put(_record())  # type: ignore[attr-defined]
    got: SignatureRecord | None = await store.get("chatcmpl-abc")  # type: ignore[attr-defined]
    await store.close()  # type: ignore[attr-defined]
    return got


def test_sqlite_store_keeps_receipt_and_binding(tmp_path: Path) -> None:
    got = asyncio.run(_round_trip(SqliteStore(tmp_path / "s.db")))
    assert got == _record()
    # And after a restart of the store (a new connection to the same file).
    again = asyncio.run(_get_only(SqliteStore(tmp_path / "s.db")))
    assert again is not None and again.receipt == RECEIPT and again.api_key_sha256 == "33" * 32


async def _get_only(store: SqliteStore) -> SignatureRecord | None:
    got = await store.get("chatcmpl-abc")
    await store.close()
    return got


def test_memory_store_keeps_receipt_and_binding() -> None:
    assert asyncio.run(_round_trip(MemoryStore())) == _record()


@pytest.mark.redis
@pytest.mark.skipif(
    not os.environ.get("ENCLAVED_TEST_REDIS_URL"),
    reason="set ENCLAVED_TEST_REDIS_URL to a Redis server to run the Redis store test",
)
def test_redis_store_keeps_receipt_and_binding() -> None:
    from enclaved.server.store.redis import RedisStore

    store = RedisStore(os.environ["ENCLAVED_TEST_REDIS_URL"], ttl=60)
    assert asyncio.run(_round_trip(store)) == _record()


def test_tls_certificate_fingerprint_is_the_spki_hash(tmp_path: Path) -> None:
    """``[aci] tls_certificate``: the keyset pins the SPKI, so a renewal that keeps the key
    keeps the keyset (spec §3.1)."""
    import datetime
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from enclaved.server.app import spki_sha256

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "inference.example")])
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    paths = []
    for days in (30, 90):  # two certificates, one key
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(days)
            .not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=days))
            .sign(key, hashes.SHA256())
        )
        path = tmp_path / f"{days}.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths.append(path)
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert spki_sha256(paths[0]) == spki_sha256(paths[1]) == hashlib.sha256(spki).hexdigest()
    (tmp_path / "bad.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match="tls_certificate"):
        spki_sha256(tmp_path / "bad.pem")
    config = ServerConfig.from_toml(_toml(tmp_path, paths[0].name))
    assert config.aci.tls_certificate == paths[0] and config.aci.tls_domain == "inference.example"


def _toml(tmp_path: Path, cert: str) -> Path:
    path = tmp_path / "enclaved.toml"
    path.write_text(
        f'[aci]\ntls_certificate = "{cert}"\ntls_domain = "inference.example"\n', encoding="utf-8"
    )
    return path
