"""The chat page at ``GET /``, driven in a real headless Chromium (Playwright).

A node with a fake engine (real key, real simulated TEE, real signature
store) on a real socket; the browser loads the page, attests, seals the
prompt, opens the streamed answer and checks the signature itself. Every
request body the page sends is captured to show that no prompt or answer
of an ``e2ee-*`` chat leaves the browser in clear.

Screenshots land in the test's tmp dir (``ENCLAVED_SCREENSHOTS`` names a
folder to copy them to).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import REPORT_CAPTURES
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Error,
    Page,
    Request,
    Response,
    Route,
    sync_playwright,
)
from server_fakes import E2EE_MODEL, TEE_MODEL, FakeBackend, NodeHandle, fake_node

from enclaved.crypto import KeyPair
from enclaved.web import CSP

CHROMIUM = os.environ.get("ENCLAVED_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PROMPT = "my private question about the Zanzibar merger"
PIECES = (
    "Confidential ",
    "**Quokka** answer\n\n",
    "- one\n- two\n\n",
    "<img src=x onerror=window.pwned=1>",
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeHandle]:
    with fake_node(tmp_path, backend=FakeBackend(PIECES, delay=0.05)) as n:
        yield n


class Watched:
    """A page with every request body and every console error recorded."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.bodies: list[tuple[str, bytes]] = []
        self.errors: list[str] = []
        page.on("request", self._request)
        page.on("console", self._console)
        page.on("pageerror", self._page_error)
        page.on("response", self._response)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    def _page_error(self, error: Error) -> None:
        self.errors.append(str(error))

    def _response(self, response: Response) -> None:
        if response.status >= 400:
            self.errors.append(f"{response.status} {response.url}")

    def _request(self, request: Request) -> None:
        self.bodies.append((request.url, request.post_data_buffer or b""))


@pytest.fixture
def watched(browser: Browser) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    try:
        yield Watched(context.new_page())
    finally:
        context.close()


def screenshot(page: Page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    folder = os.environ.get("ENCLAVED_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(folder) / path.name)
    assert path.stat().st_size > 1000
    return path


def open_page(w: Watched, node: NodeHandle) -> Any:
    response = w.page.goto(node.url + "/")
    assert response is not None and response.status == 200
    w.page.wait_for_selector("body[data-ready=true]")
    return response


def ask(page: Page, prompt: str) -> None:
    page.fill("#prompt", prompt)
    page.press("#prompt", "Enter")  # the keyboard alone sends


def test_the_page_ships_with_a_strict_csp(node: NodeHandle) -> None:
    page = httpx.get(node.url + "/")
    assert page.status_code == 200
    assert page.headers["content-security-policy"] == CSP
    assert "'unsafe-inline'" not in CSP and "http" not in CSP
    assert "<script>" not in page.text and "http" not in page.text.split("<body")[0]
    for name in ("app.js", "app.css", "crypto.js"):
        asset = httpx.get(f"{node.url}/assets/{name}")
        assert asset.status_code == 200 and asset.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(node.url + "/assets/../app.py").status_code == 404


def test_e2ee_chat_in_the_browser(node: NodeHandle, watched: Watched, tmp_path: Path) -> None:
    page = watched.page
    open_page(watched, node)
    assert page.input_value("#model") == E2EE_MODEL
    assert "e2ee" in page.inner_text("#privacy")

    ask(page, PROMPT)
    page.wait_for_selector("#messages li.assistant [data-test=signed]", timeout=20_000)
    answer = page.locator("#messages li.assistant").first
    text = answer.inner_text()
    assert "Confidential" in text and "Quokka answer" in text
    # Markdown rendered, model HTML shown as text, never run.
    assert answer.locator("strong").inner_text() == "Quokka"
    assert answer.locator("ul li").count() == 2
    assert "<img src=x onerror=window.pwned=1>" in text
    assert page.locator("#messages img").count() == 0
    assert page.evaluate("window.pwned") is None
    # The marks: response key bound to the attested key, decrypted here, signed.
    for test in ("bound", "e2ee", "signed"):
        assert answer.locator(f"[data-test={test}]").count() == 1
    # The proof, checked by the page: all green, and the simulated TEE in red.
    checks = page.locator("#checks li")
    assert checks.filter(has_text="nonce is echoed in REPORTDATA").get_attribute("class") == "ok"
    assert checks.filter(has_text="REPORTDATA binds the signing address").count() == 1
    assert checks.filter(has_text="belongs to that address").count() == 1
    assert checks.filter(has_text="debug off").count() == 1
    assert checks.filter(has_text="signed by its attestation key").count() == 1
    assert page.locator("#checks li.bad").count() == 0
    address = node.key.address.lower()
    assert address in page.inner_text("#measurements")
    assert "MRTD" in page.inner_text("#measurements")
    banner = page.locator("#tee-banner")
    assert "SIMULATED" in banner.inner_text() and "simulated" in (
        banner.get_attribute("class") or ""
    )
    assert "relaxed" in page.inner_text("#node-checks")  # the node's own word, labelled
    assert "not by this page" in page.inner_text("#node-title")

    # The node got the prompt; nothing in clear left the browser.
    assert node.backend.requests, "the node saw no request"
    sent = b"".join(body for _, body in watched.bodies)
    chats = [body for url, body in watched.bodies if url.endswith("/chat/completions")]
    assert len(chats) == 1 and b'"content":"04' in chats[0]
    for secret in (PROMPT, "Zanzibar", "Confidential", "Quokka"):
        assert secret.encode() not in sent
    assert watched.errors == []  # no CSP violation, no script error
    screenshot(page, tmp_path, "e2ee-chat")

    # A second turn works, and the first answer is not sent back in clear.
    ask(page, "and again")
    page.wait_for_selector("#messages li.assistant:nth-of-type(4) [data-test=signed]")
    chats = [body for url, body in watched.bodies if url.endswith("/chat/completions")]
    assert len(chats) == 2 and b"Quokka" not in chats[1] and b"again" not in chats[1]
    seen = node.backend.requests[-1].messages
    assert "Assistant: Confidential **Quokka** answer" in str(seen[0]["content"])
    page.click("#new-chat")
    assert page.locator("#messages li").count() == 0


def _flip_a_ciphertext_byte(route: Route) -> None:
    response = route.fetch()
    body = response.body().decode()
    match = re.search(r'"content":"(04[0-9a-f]{184,})"', body)
    assert match, "no envelope to tamper with"
    env = match.group(1)
    i = 2 * 80  # a byte of ciphertext, after the key and the IV
    flipped = env[:i] + ("0" if env[i] != "0" else "1") + env[i + 1 :]
    route.fulfill(response=response, body=body.replace(env, flipped, 1).encode())


def _forge_the_binding(route: Route) -> None:
    response = route.fetch()
    headers = dict(response.headers)
    sig = headers["x-enclaved-e2ee-binding-signature"]
    headers["x-enclaved-e2ee-binding-signature"] = (
        sig[:10] + ("0" if sig[10] != "0" else "1") + sig[11:]
    )
    route.fulfill(response=response, headers=headers)


def _change_a_clear_field(route: Route) -> None:
    # The clear fields decrypt nothing; only the signature over the bytes catches this.
    response = route.fetch()
    body = response.body().replace(b'"finish_reason":"stop"', b'"finish_reason":"length"', 1)
    assert body != response.body()
    route.fulfill(response=response, body=body)


@pytest.mark.parametrize(
    ("tamper", "says"),
    [
        (_flip_a_ciphertext_byte, "failed to decrypt"),
        (_forge_the_binding, "response key binding"),
        (_change_a_clear_field, "signature: the node signed other bytes"),
    ],
)
def test_a_tampered_answer_is_refused(
    node: NodeHandle, watched: Watched, tmp_path: Path, tamper: Any, says: str
) -> None:
    page = watched.page
    page.route("**/v1/chat/completions", tamper)
    open_page(watched, node)
    ask(page, PROMPT)
    page.wait_for_selector("#messages [data-test=refused]", timeout=20_000)
    error = page.inner_text("#error")
    assert "Verification failed" in error and says in error
    assert "Confidential" not in page.inner_text("#messages")  # nothing of it stays on screen
    assert page.locator("#messages [data-test=signed]").count() == 0
    assert page.is_disabled("#send")  # the chat stops
    screenshot(page, tmp_path, "tampered")
    page.click("#new-chat")  # a new chat attests again
    assert not page.is_disabled("#send")


def test_a_stale_key_is_attested_again_once(node: NodeHandle, watched: Watched) -> None:
    page = watched.page
    stale = {"left": 1}

    def first_is_421(route: Route) -> None:
        if stale["left"]:
            stale["left"] -= 1
            route.fulfill(
                status=421,
                content_type="application/json",
                body=b'{"error":{"message":"The encryption key is no longer valid.","code":"x"}}',
            )
        else:
            route.continue_()

    page.route("**/v1/chat/completions", first_is_421)
    open_page(watched, node)
    ask(page, PROMPT)
    page.wait_for_selector("#messages li.assistant [data-test=signed]", timeout=20_000)
    attestations = [u for u, _ in watched.bodies if "/tee/attestation" in u]
    assert len(attestations) == 2 and page.inner_text("#error") == ""


def test_a_tee_model_works_too(node: NodeHandle, watched: Watched) -> None:
    page = watched.page
    open_page(watched, node)
    page.select_option("#model", TEE_MODEL)
    assert "tee" in page.inner_text("#privacy")
    ask(page, "hello tee")
    page.wait_for_selector("#messages li.assistant [data-test=signed]", timeout=20_000)
    assert "Quokka" in page.inner_text("#messages li.assistant")
    assert page.locator("#messages [data-test=e2ee]").count() == 0  # not claimed
    assert page.locator("#checks li.ok").count() >= 4
    assert watched.errors == []


def test_stop_and_phone_width(tmp_path: Path, browser: Browser) -> None:
    slow = FakeBackend(["word "] * 200, delay=0.05)
    with fake_node(tmp_path, backend=slow) as n:
        context = browser.new_context(viewport={"width": 390, "height": 844})
        try:
            w = Watched(context.new_page())
            open_page(w, n)
            page = w.page
            assert page.evaluate("document.documentElement.scrollWidth") <= 390
            page.wait_for_selector("#checks li.ok")
            assert page.locator("#tee-flag").is_visible()  # red, in view, above the chat
            ask(page, "go on")
            page.wait_for_selector("#messages li.assistant:has-text('word')")
            page.press("#prompt", "Escape")
            page.wait_for_selector("#messages [data-test=stopped]")
            assert not page.is_disabled("#send")
            assert page.evaluate("document.documentElement.scrollWidth") <= 390
            screenshot(page, tmp_path, "phone")
        finally:
            context.close()


def test_the_readme_node_serves_the_page(user_node: Any, watched: Watched, tmp_path: Path) -> None:
    """The README's first command, a real embedded model: open the page and chat."""
    page = watched.page
    response = page.goto(f"http://127.0.0.1:{user_node.port}/")
    assert response is not None and response.headers["content-security-policy"] == CSP
    page.wait_for_selector("body[data-ready=true]")
    assert page.input_value("#model") == "e2ee-smollm2-135m"
    ask(page, "Say hi in three words")
    page.wait_for_selector("#messages li.assistant [data-test=signed]", timeout=180_000)
    answer = page.locator("#messages li.assistant .body").inner_text().strip()
    assert answer
    assert page.locator("#checks li.bad").count() == 0
    assert "SIMULATED" in page.inner_text("#tee-banner")
    sent = b"".join(body for _, body in watched.bodies)
    assert b"three words" not in sent and answer[:20].encode() not in sent
    assert watched.errors == []
    screenshot(page, tmp_path, "readme-node")


def test_the_proxy_serves_the_page(tmp_path: Path, watched: Watched) -> None:
    """``enclaved proxy``: the same page; the proxy attests, seals and checks."""
    import warnings

    from conftest import running_server

    from enclaved.attestation.policy import InsecurePolicyWarning
    from enclaved.client.proxy import create_proxy_app

    with fake_node(tmp_path / "node", backend=FakeBackend(PIECES)) as n:
        proxy = create_proxy_app(n.api, trust_root=tmp_path / "node" / "dev-root-ca.pem")
        with warnings.catch_warnings(), running_server(proxy) as url:
            warnings.simplefilter("ignore", InsecurePolicyWarning)
            page = watched.page
            response = page.goto(url + "/")
            assert response is not None and response.headers["content-security-policy"] == CSP
            page.wait_for_selector("body[data-mode=proxy][data-ready=true]")
            assert "your enclaved proxy" in page.inner_text("#node-title")
            ask(page, PROMPT)
            page.wait_for_selector("#messages li.assistant [data-test=signed]", timeout=20_000)
            assert "Quokka" in page.inner_text("#messages li.assistant")
            assert "by your enclaved proxy" in page.inner_text("#messages li.assistant .who")
            assert watched.errors == []


def _swap_key(doc: dict[str, Any]) -> None:
    # A man in the middle offers its own E2EE key with the node's evidence.
    doc["signing_key"] = doc["signing_public_key"] = KeyPair.generate().public_key_hex


def _set_debug(doc: dict[str, Any]) -> None:
    quote = bytearray(bytes.fromhex(doc["intel_quote"]))
    quote[48 + 120] |= 1  # TD_ATTRIBUTES.DEBUG of a v4 quote
    doc["intel_quote"] = quote.hex()


def _replay_old_nonce(doc: dict[str, Any]) -> None:
    quote = bytearray(bytes.fromhex(doc["intel_quote"]))
    quote[48 + 520 + 40] ^= 0xFF  # a byte of the nonce in REPORTDATA
    doc["intel_quote"] = quote.hex()


def _change_mrtd(doc: dict[str, Any]) -> None:
    quote = bytearray(bytes.fromhex(doc["intel_quote"]))
    quote[48 + 136] ^= 0xFF  # the first byte of MRTD: other code than was measured
    doc["intel_quote"] = quote.hex()


@pytest.mark.parametrize(
    ("forge", "says"),
    [
        (_change_mrtd, "quote signed by its attestation key: no"),
        (_swap_key, "E2EE key belongs to the signing address: no"),
        (_set_debug, "debug mode is ON"),
        (_replay_old_nonce, "nonce echoed in REPORTDATA: no"),
    ],
)
def test_a_bad_attestation_stops_the_chat_before_any_prompt(
    node: NodeHandle, watched: Watched, forge: Any, says: str
) -> None:
    def forged(route: Route) -> None:
        response = route.fetch()
        doc = json.loads(response.body())
        forge(doc)
        route.fulfill(response=response, body=json.dumps(doc).encode())

    page = watched.page
    page.route("**/v1/tee/attestation*", forged)
    open_page(watched, node)
    page.wait_for_selector("#checks li.bad")
    assert says in page.inner_text("#checks li.bad")
    assert says in page.inner_text("#error") and page.is_disabled("#send")
    assert not [u for u, _ in watched.bodies if u.endswith("/chat/completions")]


@pytest.mark.parametrize("capture", REPORT_CAPTURES, ids=lambda p: p.name)
def test_the_page_reads_real_intel_quotes(
    capture: Path, node: NodeHandle, watched: Watched
) -> None:
    """Production quotes (Intel-signed): the page reads the same fields as enclaved's
    parser, and the quote's own signature verifies in the browser; one flipped byte fails."""
    from enclaved.attestation.tdx.parse import parse_quote

    body = next((capture / "responses").glob("0001_*.body")).read_bytes()
    text = json.loads(body)["intel_quote"]
    raw = bytes.fromhex(text)
    quote = parse_quote(raw)
    open_page(watched, node)
    seen = watched.page.evaluate("(q) => window.EnclavedPage.inspectQuote(q)", text)
    assert seen == {
        "version": quote.header.version,
        "debug": quote.body.debug,
        "mrtd": quote.mrtd.hex(),
        "rtmrs": [r.hex() for r in quote.rtmrs],
        "reportData": quote.report_data.hex(),
        "signatureValid": True,
    }
    flipped = bytearray(raw)
    flipped[48 + 520] ^= 1
    changed = watched.page.evaluate("(q) => window.EnclavedPage.inspectQuote(q)", flipped.hex())
    assert changed["signatureValid"] is False
