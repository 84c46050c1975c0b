"""A stand-in for the dstack guest agent, for tests only.

It serves the guest agent's HTTP API on a Unix socket, in the shape the
``dstack-sdk`` client calls (``POST /GetQuote``, ``/Info``, ``/GetKey`` with
JSON bodies), from the project's simulated TDX: quotes over the REPORTDATA
asked for, signed under a development root, and the event log and ``info``
of a simulated dstack deployment, so the node's verifier checks them like a
real CVM's. Knobs make it misbehave the ways a real agent or host could.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from enclaved.evidence.simulated import SimulatedTdx
from enclaved.evidence.simulated_deployment import SimulatedDeployment

#: The secret the stand-in "KMS" derives app keys from.
KMS_SECRET = b"stand-in dstack KMS"


@dataclasses.dataclass
class Agent:
    socket_path: Path
    tdx: SimulatedTdx
    deployment: SimulatedDeployment
    #: Answer quotes over other REPORTDATA than asked (a broken host).
    wrong_report_data: bool = False
    #: Append an event the quote's RTMRs do not contain.
    extra_event: bool = False
    calls: list[str] = dataclasses.field(default_factory=list)

    def kms_key(self, path: str, purpose: str) -> bytes:
        return hashlib.sha256(KMS_SECRET + path.encode() + b"\0" + purpose.encode()).digest()

    def answer(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(method)
        td = self.tdx.td.running(self.deployment)
        log = self.deployment.event_log_json()
        if method == "GetQuote":
            report_data = bytes.fromhex(body["report_data"]).ljust(64, b"\0")
            if self.wrong_report_data:
                report_data = bytes(64)
            if self.extra_event:
                log = [*log, {**log[-1], "digest": "11" * 48}]
            quote = self.tdx.quote(report_data, td=td)
            return {"quote": bytes(quote).hex(), "event_log": json.dumps(log)}
        if method == "Info":
            info = self.deployment.info(mrtd=bytes(td.mrtd))
            tcb = {**info["tcb_info"], "mr_aggregated": "00" * 32}
            return {
                "app_id": info["app_id"],
                "instance_id": info["instance_id"],
                "app_cert": "",
                "tcb_info": json.dumps(tcb),  # the agent sends it as a JSON string
                "app_name": info["app_name"],
                "device_id": info["device_id"],
                "mr_aggregated": "00" * 32,
                "os_image_hash": info["os_image_hash"],
                "key_provider_info": info["key_provider_info"],
                "compose_hash": info["compose_hash"],
                "vm_config": info["vm_config"],
            }
        if method == "GetKey":
            return {"key": self.kms_key(body["path"], body["purpose"]).hex(), "signature_chain": []}
        raise KeyError(method)


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@contextmanager
def running_agent(
    tmp_path: Path, tdx: SimulatedTdx, deployment: SimulatedDeployment, **knobs: Any
) -> Iterator[Agent]:
    """A stand-in agent on ``tmp_path/dstack.sock`` until the block ends."""
    agent = Agent(tmp_path / "dstack.sock", tdx, deployment, **knobs)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            try:
                out = json.dumps(agent.answer(self.path.strip("/"), body)).encode()
                status = 200
            except KeyError:
                out, status = b'{"error": "unknown method"}', 404
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def address_string(self) -> str:
            return "unix"

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = _Server(str(agent.socket_path), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield agent
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
