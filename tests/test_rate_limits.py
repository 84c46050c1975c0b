"""``[rate_limits]``: requests and tokens per minute per API key, over real sockets.

The clock is injected (one-minute windows on UTC minute boundaries). What a
client relies on: the documented 429 with ``Retry-After`` when over a limit,
OpenAI's ``x-ratelimit-*`` headers on every chat answer, the per-key
overrides, a new window admitting again, and replicas sharing one budget
through Redis - with no API key in Redis or the log.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_fakes import TEE_MODEL, FakeBackend, fake_node

from enclaved.errors import ConfigError
from enclaved.server.auth import hash_key
from enclaved.server.config import ServerConfig

KEY_A, KEY_B = "sk-test-alpha", "sk-test-bravo"
BODY = {"model": TEE_MODEL, "messages": [{"role": "user", "content": "hi"}]}


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _chat(url: str, key: str) -> httpx.Response:
    return httpx.post(
        url + "/v1/chat/completions", json=BODY, headers={"Authorization": f"Bearer {key}"}
    )


def _limits(**table: Any) -> dict[str, Any]:
    return {"api_key_hashes": [hash_key(KEY_A), hash_key(KEY_B)], "rate_limits": table}


def test_requests_per_minute_per_key(tmp_path: Path) -> None:
    clock = Clock(1000.5)  # window [960, 1020): 19.5 s left
    limits = _limits(requests_per_minute=2, keys={hash_key(KEY_B): {"requests_per_minute": 3}})
    with fake_node(tmp_path, clock=clock, **limits) as node:
        first, second, third = (_chat(node.url, KEY_A) for _ in range(3))
        b = [_chat(node.url, KEY_B).status_code for _ in range(4)]
        clock.t = 1020.0  # the next minute
        again = _chat(node.url, KEY_A)
    assert first.status_code == second.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    assert first.headers["x-ratelimit-reset-requests"] == "20s"
    assert third.status_code == 429
    assert third.headers["Retry-After"] == "20"
    error = third.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limited")
    assert b == [200, 200, 200, 429]  # KEY_B's own limit; KEY_A's use is not its
    assert again.status_code == 200 and again.headers["x-ratelimit-remaining-requests"] == "1"


def test_tokens_per_minute(tmp_path: Path) -> None:
    usage = {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
    backend = FakeBackend(usage=usage)
    with fake_node(
        tmp_path, backend=backend, clock=Clock(60.0), **_limits(tokens_per_minute=20)
    ) as node:
        first, second, third = (_chat(node.url, KEY_A) for _ in range(3))
    assert first.status_code == 200 and first.headers["x-ratelimit-remaining-tokens"] == "20"
    assert second.status_code == 200 and second.headers["x-ratelimit-remaining-tokens"] == "8"
    assert third.status_code == 429 and "tokens" in third.json()["error"]["message"]
    assert "x-ratelimit-limit-requests" not in first.headers  # no request limit set


def test_no_limits_no_headers(tmp_path: Path) -> None:
    with fake_node(tmp_path) as node:
        r = httpx.post(node.url + "/v1/chat/completions", json=BODY)
    assert r.status_code == 200
    assert not [h for h in r.headers if h.startswith("x-ratelimit")]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"requests_per_minute": -1}, "out of range"),
        ({"request_per_minute": 1}, "unknown configuration key"),
        ({"keys": {"not-a-hash": {}}}, "SHA-256"),
        ({"keys": {"ab" * 32: {"burst": 1}}}, "unknown configuration key"),
    ],
)
def test_bad_rate_limit_config_is_refused(
    tmp_path: Path, table: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        ServerConfig.from_dict({"rate_limits": table}, data_dir=tmp_path)


REDIS_URL = os.environ.get("ENCLAVED_TEST_REDIS_URL")


@pytest.mark.redis
@pytest.mark.skipif(not REDIS_URL, reason="set ENCLAVED_TEST_REDIS_URL (scripts/test does)")
def test_replicas_share_one_budget_through_redis(tmp_path: Path) -> None:
    import redis

    clock = Clock(60.0 * secrets.randbelow(10**9))  # a window no other run used
    limits = _limits(requests_per_minute=3)
    store = {"kind": "redis", "url": REDIS_URL}
    with (
        fake_node(tmp_path / "a", clock=clock, signatures=store, **limits) as one,
        fake_node(tmp_path / "b", clock=clock, signatures=store, **limits) as two,
    ):
        codes = [_chat(url, KEY_A).status_code for url in (one.url, two.url, one.url, two.url)]
    assert codes == [200, 200, 200, 429]
    client = redis.Redis.from_url(str(REDIS_URL), decode_responses=True)
    keys = [str(k) for k in client.keys("enclaved:rl:*")]
    assert any(hash_key(KEY_A)[:16] in k for k in keys)  # a prefix of the key's hash
    assert not any(KEY_A in k for k in keys)
