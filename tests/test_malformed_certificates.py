"""Certificates and CRLs in evidence that decode only in part.

``cryptography`` decodes names, extensions, keys and revoked entries lazily,
on first use. Before ``attestation/_x509.py`` one changed base64 character in
a PCK, GPU or collateral certificate made the verifiers raise ``ValueError``,
``UnsupportedAlgorithm`` or ``TypeError`` from deep inside a check. The parse
layer now decodes everything up front: a malformed certificate is an
:class:`EvidenceParseError` where it is parsed, and nothing but an
:class:`enclaved.Error` (or a failed check row) ever comes out.

The mutations are seeded, so every run tries the same ones; each test also
asserts that some of them hit the lazily decoded parts (``malformed
certificate`` / ``malformed CRL``), so it cannot pass by mutating nothing
that matters.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import random

import pytest
from attestation_captures import ALL, Capture
from cryptography.hazmat.primitives.serialization import Encoding

import enclaved
from enclaved.attestation import AttestationReport, Policy, Verifier
from enclaved.attestation._x509 import der_items, der_read
from enclaved.attestation.nvidia import parse_nvidia_payload, verify_gpus
from enclaved.attestation.tdx import (
    DirectoryCollateral,
    collateral_for,
    decode_quote_text,
    parse_quote,
    verify_quote,
)
from enclaved.attestation.tdx.parse import load_pem_chain
from enclaved.errors import EvidenceParseError

B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
TRIES = 120


def _mutate_base64(pem: bytes, rng: random.Random) -> bytes:
    """``pem`` with one base64 character of a certificate body replaced."""
    out = bytearray(pem)
    while True:
        i = rng.randrange(len(out))
        line_start = out.rfind(b"\n", 0, i) + 1
        if out[i] in B64 and not out[line_start:].startswith(b"-----"):
            break
    out[i] = rng.choice([c for c in B64 if c != out[i]])
    return bytes(out)


def _outcome(fn: object, *args: object, **kwargs: object) -> str:
    """``ok``, or the message of the enclaved.Error it raised (anything else fails the test)."""
    try:
        fn(*args, **kwargs)  # type: ignore[operator]
    except enclaved.Error as exc:
        return str(exc)
    return "ok"


def _lazy_hits(outcomes: list[str]) -> int:
    return sum("malformed certificate:" in o or "malformed CRL:" in o for o in outcomes)


@pytest.mark.parametrize("cap", ALL, ids=lambda c: c.name)
def test_a_mutated_pck_chain_is_a_parse_error_or_a_failed_check(cap: Capture) -> None:
    raw = decode_quote_text(cap.doc()["intel_quote"])
    quote = parse_quote(raw)
    pem = quote.signature_data.certification_data.pck_cert_chain_pem
    collateral = collateral_for(quote, DirectoryCollateral(cap.responses))
    rng = random.Random(f"pck-{cap.name}")
    outcomes = []
    for _ in range(TRIES):
        bad = raw.replace(pem, _mutate_base64(pem, rng))

        def run(bad: bytes = bad) -> None:
            rows = verify_quote(parse_quote(bad), collateral=collateral, now=cap.at)
            assert rows  # returned rows, not an exception

        outcomes.append(_outcome(run))
    assert _lazy_hits(outcomes) >= 5, outcomes


# cryptography warns about a mutated country name it still decodes
@pytest.mark.filterwarnings("ignore:Attribute's length must be:UserWarning")
@pytest.mark.parametrize("cap", ALL, ids=lambda c: c.name)
def test_a_mutated_gpu_certificate_is_a_parse_error_or_a_failed_check(cap: Capture) -> None:
    payload = json.loads(cap.doc()["nvidia_payload"])
    rng = random.Random(f"gpu-{cap.name}")
    outcomes = []
    for _ in range(TRIES):
        mutated = json.loads(json.dumps(payload))
        entry = rng.choice(mutated["evidence_list"])
        pem = base64.b64decode(entry["certificate"])
        entry["certificate"] = base64.b64encode(_mutate_base64(pem, rng)).decode()

        def run(mutated: dict[str, object] = mutated) -> None:
            parsed = parse_nvidia_payload(json.dumps(mutated))
            assert verify_gpus(parsed, expected_nonce=cap.nonce, now=cap.at)

        outcomes.append(_outcome(run))
    assert _lazy_hits(outcomes) >= 5, outcomes


def _flip_in_tbs(der: bytes, rng: random.Random) -> bytes:
    """``der`` (a CRL) with one bit flipped inside its signed part (tbsCertList)."""
    _, body, _ = der_read(der, 0)
    tbs_start = len(der) - len(body)
    tbs_len = len(der_items(body)[0][1])
    out = bytearray(der)
    i = tbs_start + rng.randrange(tbs_len + 4)
    out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


@pytest.mark.parametrize("cap", ALL, ids=lambda c: c.name)
def test_mutated_collateral_is_a_parse_error_or_a_failed_check(cap: Capture) -> None:
    quote = parse_quote(decode_quote_text(cap.doc()["intel_quote"]))
    good = collateral_for(quote, DirectoryCollateral(cap.responses))
    assert good.root_ca_crl is not None
    chain_pem = b"".join(c.public_bytes(Encoding.PEM) for c in good.tcb_info_issuer_chain)
    rng = random.Random(f"collateral-{cap.name}")
    outcomes = []
    for i in range(TRIES):
        if i % 3 == 0:
            bad = dataclasses.replace(good, pck_crl=_flip_in_tbs(good.pck_crl, rng))
        elif i % 3 == 1:
            bad = dataclasses.replace(good, root_ca_crl=_flip_in_tbs(good.root_ca_crl, rng))
        else:
            mutated_pem = _mutate_base64(chain_pem, rng)

            def chain(pem: bytes = mutated_pem) -> None:
                dataclasses.replace(good, tcb_info_issuer_chain=load_pem_chain(pem))

            outcome = _outcome(chain)
            outcomes.append(outcome)
            if outcome != "ok":
                continue
            bad = dataclasses.replace(good, tcb_info_issuer_chain=load_pem_chain(mutated_pem))
        outcomes.append(_outcome(verify_quote, quote, collateral=bad, now=cap.at))
    assert _lazy_hits(outcomes) >= 5, outcomes


def test_a_report_with_a_mutated_pck_chain_never_raises_a_library_error() -> None:
    """The same through the public Verifier, the way a client meets it."""
    cap = ALL[0]
    doc = cap.doc()
    raw = decode_quote_text(doc["intel_quote"])
    pem = parse_quote(raw).signature_data.certification_data.pck_cert_chain_pem
    original = [c.public_bytes(Encoding.DER) for c in load_pem_chain(pem)]
    verifier = Verifier(
        Policy.strict(), collateral=DirectoryCollateral(cap.responses), now=lambda: cap.at
    )
    rng = random.Random("verifier")
    parse_errors = 0
    for _ in range(40):
        mutated = _mutate_base64(pem, rng)
        doc["intel_quote"] = raw.replace(pem, mutated).hex()
        try:
            verdict = verifier.verify(AttestationReport.from_json(doc), nonce=cap.nonce)
        except EvidenceParseError:
            parse_errors += 1
            continue
        if verdict.ok:  # only where the changed character decodes to the same bytes
            assert [c.public_bytes(Encoding.DER) for c in load_pem_chain(mutated)] == original
    assert parse_errors > 0
