"""``--tee configfs``: TDX quotes from the kernel's configfs-tsm (a plain TDX VM).

configfs makes a quote when ``outblob`` is read after REPORTDATA was written
to ``inblob``; a plain directory cannot. The stand-in here is a filesystem
with configfs's semantics (entries, ``provider``, ``generation`` bumped on
each write, the quote made by the simulated TDX on read), given to the
source through its filesystem hook, with the root as configurable as the
real one. What must hold: the quote is over our REPORTDATA, a raced
``generation`` is retried and never served, a provider other than TDX or a
missing interface stops the start, entries are removed, and a node on it
serves reports a development verifier accepts for the quote and binding.
"""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import running_server
from server_fakes import E2EE_MODEL, fake_backends, fake_config

from enclaved.attestation import AttestationReport, Policy, Verifier
from enclaved.attestation.policy import InsecurePolicyWarning
from enclaved.attestation.tdx.parse import parse_quote
from enclaved.errors import ConfigError, NetworkError
from enclaved.evidence.configfs_tsm import ConfigfsEvidence, ConfigfsTsm
from enclaved.evidence.simulated import SimulatedTdx
from enclaved.server.app import create_app

ROOT = Path("/sys/kernel/config/tsm/report")  # the stand-in's paths; nothing is touched there


class StandinConfigfs:
    """configfs-tsm's semantics, in memory."""

    def __init__(self, tdx: SimulatedTdx, *, provider: str = "tdx_guest") -> None:
        self.tdx = tdx
        self.provider = provider
        self.entries: dict[Path, dict[str, Any]] = {}
        #: Called between our reads of ``generation`` (a racing writer).
        self.race: Callable[[dict[str, Any]], None] | None = None
        self.created = 0

    def mkdir(self, path: Path) -> None:
        if path.parent != ROOT:
            raise FileNotFoundError(2, "No such file or directory")
        self.entries[path] = {"generation": 0, "inblob": b""}
        self.created += 1

    def rmdir(self, path: Path) -> None:
        del self.entries[path]

    def write(self, path: Path, data: bytes) -> None:
        entry = self.entries[path.parent]
        assert path.name == "inblob" and len(data) == 64
        entry["inblob"] = data
        entry["generation"] += 1

    def read(self, path: Path) -> bytes:
        entry = self.entries[path.parent]
        if path.name == "provider":
            return self.provider.encode() + b"\n"
        if path.name == "generation":
            return f"{entry['generation']}\n".encode()
        if path.name == "outblob":
            quote = bytes(self.tdx.quote(entry["inblob"]))
            if self.race is not None:
                self.race(entry)
            return quote
        raise FileNotFoundError(2, "No such file or directory")


@pytest.fixture
def tdx(tmp_path: Path) -> SimulatedTdx:
    return SimulatedTdx.load_or_create(tmp_path / "root")


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecurePolicyWarning)
        yield


def test_a_quote_is_over_our_report_data_and_leaves_no_entry(tdx: SimulatedTdx) -> None:
    fs = StandinConfigfs(tdx)
    tsm = ConfigfsTsm(ROOT, fs=fs)
    tsm.check()
    report_data = bytes(range(64))
    quote = tsm.quote(report_data)
    assert parse_quote(quote).report_data == report_data
    assert fs.entries == {}  # removed


def test_a_raced_generation_is_retried_and_never_served(tdx: SimulatedTdx) -> None:
    fs = StandinConfigfs(tdx)
    races = iter([True, False])

    def racer(entry: dict[str, Any]) -> None:
        if next(races):
            entry["inblob"] = bytes(64)  # someone else's REPORTDATA
            entry["generation"] += 1

    fs.race = racer
    quote = ConfigfsTsm(ROOT, fs=fs).quote(b"\x07" * 64)
    assert parse_quote(quote).report_data == b"\x07" * 64
    assert fs.created == 2  # the raced try was thrown away


def test_a_writer_that_always_races_is_an_error(tdx: SimulatedTdx) -> None:
    fs = StandinConfigfs(tdx)

    def racer(entry: dict[str, Any]) -> None:
        entry["generation"] += 1

    fs.race = racer
    with pytest.raises(NetworkError, match="another writer"):
        ConfigfsTsm(ROOT, fs=fs).quote(b"\x01" * 64)
    assert fs.entries == {}


def test_only_a_tdx_provider_and_a_present_interface_start(tdx: SimulatedTdx) -> None:
    with pytest.raises(ConfigError, match="not 'tdx_guest'"):
        ConfigfsTsm(ROOT, fs=StandinConfigfs(tdx, provider="sev_guest")).check()
    with pytest.raises(ConfigError, match="no configfs-tsm report interface"):
        ConfigfsTsm(Path("/nonexistent/tsm/report"), fs=StandinConfigfs(tdx)).check()


def test_a_node_on_configfs_serves_a_bound_quote(tmp_path: Path, tdx: SimulatedTdx) -> None:
    evidence = ConfigfsEvidence(
        ConfigfsTsm(ROOT, fs=StandinConfigfs(tdx)),
        trust_root_pem=bytes(tdx.root_pem),  # the stand-in's root: tests only
        collateral=tdx.collateral,
    )
    app = create_app(fake_config(tmp_path), evidence=evidence, backends=fake_backends())
    nonce = "cd" * 32
    with running_server(app) as url:
        body = httpx.get(
            f"{url}/v1/tee/attestation", params={"model": E2EE_MODEL, "nonce": nonce}
        ).content
    report = AttestationReport.from_json(body)
    assert report.tee_hardware == "intel-tdx"
    now = dt.datetime.now(dt.UTC)
    verdict = Verifier(
        Policy.development(bytes(tdx.root_pem).decode()), collateral=tdx.collateral(now)
    ).verify(report, nonce=bytes.fromhex(nonce), now=now)
    passed = {c.id for c in verdict.checks if c.status.value == "pass"}
    assert {
        "tdx.quote.signature",
        "binding.report_data.identity",
        "binding.report_data.nonce",
    } <= passed
    # No event log on a plain TDX VM (the CCEL table is not read): the
    # event-log rows cannot pass, and say so.
    assert "eventlog.replay" not in passed
