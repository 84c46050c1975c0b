"""``enclaved serve --log-format json``: one JSON object per line, content-free.

The node runs as an operator runs it (a subprocess with the embedded model,
DEBUG level), answers an E2EE and a plain TEE chat whose prompts carry a
canary, and stops. Every line it logged must parse as a JSON object with the
documented fields, and no line may hold the canary or the API key.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from conftest import wait_until_healthy

import enclaved
from enclaved.attestation.policy import InsecurePolicyWarning

pytestmark = [pytest.mark.model]

CANARY = "canary-json-log-5e1d"


def test_json_logs_are_json_and_content_free(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [sys.executable, "-m", "enclaved", "serve", "--port", str(port)]
    argv += ["--data-dir", str(tmp_path), "--log-format", "json", "--log-level", "debug"]
    proc = subprocess.Popen(
        argv,
        env={k: v for k, v in os.environ.items() if not k.startswith("ENCLAVED_")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_healthy(port, proc)
        client = enclaved.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1",
            api_key="sk-canary-api-key",
            trust_root=str(tmp_path / "dev-root-ca.pem"),
            max_retries=0,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InsecurePolicyWarning)
            for model in ("e2ee-smollm2-135m", "tee-smollm2-135m"):
                client.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": f"Repeat: {CANARY}"}],
                    max_tokens=16,
                )
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) > 3, err
    for line in lines:
        entry = json.loads(line)  # every line, not only most
        assert isinstance(entry, dict), line
        assert {"time", "level", "logger", "message"} <= entry.keys(), line
    assert any(json.loads(x)["logger"] == "enclaved.access" for x in lines), err
    for secret in (CANARY, "canary-json", "sk-canary-api-key"):
        assert secret not in err
    assert "-----BEGIN" not in err
