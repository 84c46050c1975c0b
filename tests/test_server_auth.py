"""API keys: hashes in the config, Bearer keys on the wire, open and closed routes."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from server_fakes import E2EE_MODEL, TEE_MODEL, NodeHandle, fake_node

from enclaved.server.auth import ApiKeys, generate_key, hash_key
from enclaved.server.errors import HTTPError

# The node verifies its own simulated evidence under the development policy, which warns by design.
pytestmark = pytest.mark.filterwarnings("ignore::enclaved.attestation.InsecurePolicyWarning")


KEY = "sk-test-correct-horse"
OTHER = "sk-test-second"


def test_hash_key_is_sha256_hex() -> None:
    assert hash_key("test") == hashlib.sha256(b"test").hexdigest()
    assert hash_key("test") == "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


def test_generate_key() -> None:
    a, b = generate_key(), generate_key()
    assert a != b and a.startswith("sk-enclaved-") and len(a) >= 50


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, "missing_api_key"),
        ("", "missing_api_key"),
        (f"Bearer {KEY}x", "invalid_api_key"),
        (f"Basic {KEY}", "invalid_api_key"),
        (KEY, "invalid_api_key"),
        ("Bearer ", "invalid_api_key"),
        (f"Bearer {hash_key(KEY)}", "invalid_api_key"),  # the hash is not the key
    ],
)
def test_check_rejects(header: str | None, code: str) -> None:
    keys = ApiKeys([hash_key(KEY), hash_key(OTHER)])
    with pytest.raises(HTTPError) as err:
        keys.check(header)
    assert err.value.status == 401 and err.value.code == code
    assert KEY not in err.value.message


@pytest.mark.parametrize("header", [f"Bearer {KEY}", f"bearer {OTHER}", f"BEARER  {KEY} "])
def test_check_accepts(header: str) -> None:
    ApiKeys([hash_key(KEY), hash_key(OTHER)]).check(header)


def test_no_keys_configured_means_open() -> None:
    keys = ApiKeys([])
    assert not keys.enabled
    keys.check(None)
    keys.check("Bearer anything")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeHandle]:
    with fake_node(
        tmp_path_factory.mktemp("auth"), api_key_hashes=[hash_key(KEY), hash_key(OTHER)]
    ) as handle:
        yield handle


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_open_routes(node: NodeHandle) -> None:
    assert httpx.get(node.url + "/health").status_code == 200
    for prefix in ("/api/v1", "/v1"):
        assert httpx.get(node.url + prefix + "/models").status_code == 200
        r = httpx.get(
            node.url + prefix + "/tee/attestation", params={"model": TEE_MODEL}, timeout=30
        )
        assert r.status_code == 200


@pytest.mark.parametrize("prefix", ["/api/v1", "/v1"])
def test_chat_needs_a_key(node: NodeHandle, prefix: str) -> None:
    before = len(node.backend.requests)
    body = {"model": TEE_MODEL, "messages": [{"role": "user", "content": "hi"}]}
    for headers, code in (({}, "missing_api_key"), (_auth("sk-wrong"), "invalid_api_key")):
        r = httpx.post(node.url + prefix + "/chat/completions", json=body, headers=headers)
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Bearer")
        err = r.json()["error"]
        assert err["type"] == "authentication_error" and err["code"] == code
        assert set(err) == {"message", "type", "param", "code"}
    assert len(node.backend.requests) == before
    r = httpx.post(node.url + prefix + "/chat/completions", json=body, headers=_auth(OTHER))
    assert r.status_code == 200


def test_auth_comes_before_everything(node: NodeHandle) -> None:
    """Without a key, even a malformed E2EE request learns nothing but 401."""
    r = httpx.post(
        node.api + "/chat/completions",
        content=b"{bad",
        headers={"X-Venice-TEE-Signing-Algo": "rsa"},
    )
    assert r.status_code == 401


def test_signature_needs_a_key(node: NodeHandle) -> None:
    body = {"model": E2EE_MODEL, "messages": [{"role": "user", "content": "hi"}]}
    request_id = httpx.post(node.api + "/chat/completions", json=body, headers=_auth(KEY)).json()[
        "id"
    ]
    params = {"model": E2EE_MODEL, "request_id": request_id}
    assert httpx.get(node.api + "/tee/signature", params=params).status_code == 401
    assert (
        httpx.get(node.api + "/tee/signature", params=params, headers=_auth("nope")).status_code
        == 401
    )
    # Any valid key may fetch it (keys are not tenants).
    assert (
        httpx.get(node.api + "/tee/signature", params=params, headers=_auth(OTHER)).status_code
        == 200
    )


def test_keys_never_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    with fake_node(tmp_path, api_key_hashes=[hash_key(KEY)]) as n:
        httpx.post(
            n.api + "/chat/completions",
            json={"model": TEE_MODEL, "messages": [{"role": "user", "content": "SECRET-PROMPT"}]},
            headers=_auth(KEY),
        )
        httpx.post(n.api + "/chat/completions", json={}, headers=_auth("sk-WRONG-KEY"))
    text = caplog.text
    assert KEY not in text and "sk-WRONG-KEY" not in text and "SECRET-PROMPT" not in text
    assert "POST /api/v1/chat/completions 200" in text  # the access log is there, content-free


def _cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    src = Path(__file__).resolve().parents[1] / "src"
    return subprocess.run(
        [sys.executable, "-m", "enclaved", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
    )


def test_hash_key_cli_reads_stdin() -> None:
    out = _cli("hash-key", stdin=KEY + "\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == hash_key(KEY)


def test_hash_key_cli_generate() -> None:
    out = _cli("hash-key", "--generate")
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(":", 1) for line in out.stdout.strip().splitlines())
    assert hash_key(lines["key"].strip()) == lines["hash"].strip()


def test_hash_key_cli_empty() -> None:
    assert _cli("hash-key", stdin="\n").returncode == 2


def test_key_hash_from_the_cli_opens_the_server(tmp_path: Path) -> None:
    digest = _cli("hash-key", stdin=KEY).stdout.strip()
    with fake_node(tmp_path, api_key_hashes=[digest]) as n:
        r = httpx.post(
            n.api + "/chat/completions",
            headers=_auth(KEY),
            content=json.dumps(
                {"model": TEE_MODEL, "messages": [{"role": "user", "content": "x"}]}
            ),
        )
        assert r.status_code == 200
