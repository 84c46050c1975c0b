"""``enclaved chat``: talk to a model, verified and (for ``e2ee-*``) end-to-end encrypted.

::

    enclaved chat "Why is the sky blue?" --model e2ee-smollm2-135m
    enclaved chat --model e2ee-smollm2-135m          # interactive
    echo "Summarize this" | enclaved chat -           # prompt from stdin

Before the answer it prints (to stderr) what was verified::

    verified: intel-tdx, 0x6525e128afcffebf7eed05d485d7be983cdae934

then streams the answer to stdout as it is decrypted, and after it checks
the response signature. Any failed check ends the command with a one-line
message naming the check, and a non-zero exit code (see
:mod:`enclaved.cli._client_common`). From a node that binds its response
key to the request every chunk is authenticated before it is printed;
from one that does not, a signature failure can only be found once the
streamed answer is complete: the command then says that the text above
was NOT verified, and exits 2 (``--require-stream-binding`` refuses such
a node instead). ``--no-stream`` prints the answer only
after everything, signature included, was verified. ``--aci current`` (or
``rev-a``) also establishes the service's ``aci/1`` keyset and checks each
answer's signed receipt (``receipt: ok, ...``).

Answers are at most ``--max-tokens`` long (default
:data:`DEFAULT_MAX_TOKENS`; ``0`` leaves the limit to the server).

Interactive mode keeps the conversation. Ctrl-C stops the answer being
streamed (the connection is closed, so the node stops generating) and
returns to the prompt; Ctrl-C at the prompt, Ctrl-D or an empty line ends
the session. Whatever is typed while an answer streams is discarded, not
taken as the next prompt. For ``e2ee-*`` models the earlier
turns are sent inside the encrypted system message (the protocol encrypts
only user and system content, so replaying them as plaintext ``assistant``
messages would let the answers leave the machine in the clear).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from ..protocol import routes
from . import _client_common as common

if TYPE_CHECKING:  # pragma: no cover
    from ..client.transport import SignatureMode

DEFAULT_MODEL = "e2ee-smollm2-135m"
#: Answer length when ``--max-tokens`` is not given: a small model left to
#: itself can repeat until its context is full.
DEFAULT_MAX_TOKENS = 512
#: What a one-shot chat stopped by Ctrl-C exits with (128 + SIGINT, as shells do).
EXIT_INTERRUPTED = 130

_SIGNATURE_MODES: dict[str, SignatureMode] = {"full": True, "address": "address", "off": False}

#: Builds the SDK client (tests replace it to inject a transport).
client_factory: Callable[..., Any] | None = None


def add_parsers(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "chat",
        help="chat with a model: attested, E2EE for e2ee-* models, signatures checked",
        description="Send a prompt (or start an interactive chat) to a TEE / E2EE model. The node's "
        "attestation is verified before anything is sent, e2ee-* prompts are encrypted to the "
        "attested key, and every answer's signature is checked.",
    )
    p.add_argument(
        "prompt", nargs="?", help="the prompt; '-' reads it from stdin; omit for interactive mode"
    )
    p.add_argument("--model", "-m", help=f"model id [$ENCLAVED_MODEL, else {DEFAULT_MODEL}]")
    p.add_argument(
        "--system", metavar="TEXT", help="a system prompt (encrypted too, for e2ee-* models)"
    )
    p.add_argument(
        "--max-tokens",
        type=int,
        metavar="N",
        default=DEFAULT_MAX_TOKENS,
        help=f"longest answer, in tokens (default {DEFAULT_MAX_TOKENS}; 0: the server's limit)",
    )
    p.add_argument("--temperature", type=float, help="sampling temperature")
    p.add_argument(
        "--no-stream",
        action="store_true",
        help="print the answer only once it is complete and its signature verified",
    )
    p.add_argument(
        "--signatures",
        choices=["full", "address", "off"],
        default="full",
        help="response signature check: full (signer and the hashes of the exact bytes, default), "
        "address (signer only, for gateways that rewrite bodies), off",
    )
    common.add_stream_binding_arg(p)
    common.add_aci_arg(p)
    common.add_connection_args(p)
    p.set_defaults(func=run_chat)


def run_chat(args: argparse.Namespace) -> int:
    out, err = sys.stdout, sys.stderr
    model = args.model or os.environ.get("ENCLAVED_MODEL") or DEFAULT_MODEL
    if args.max_tokens < 0:
        print("enclaved: --max-tokens must be 0 or more", file=err)
        return common.EXIT_INPUT
    try:
        client = _make_client(args)
    except Exception as exc:  # noqa: BLE001 - describe_error re-raises unknown ones
        return _fail(exc, err)
    session = _Session(client, model, args, out, err)
    if args.prompt is not None:
        prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
        return session.turn(prompt)
    if not sys.stdin.isatty():
        return session.turn(sys.stdin.read())
    return session.repl(sys.stdin)


def _make_client(args: argparse.Namespace) -> Any:
    factory = client_factory
    if factory is None:
        from ..client import OpenAI

        factory = OpenAI
    return factory(
        base_url=common.base_url(args),
        api_key=common.api_key(args),
        policy=common.policy(args),
        verify_signatures=_SIGNATURE_MODES[args.signatures],
        timeout=args.timeout,
        **common.stream_binding_kwargs(args),
        **common.aci_kwargs(args),
        max_retries=0,
    )


def _fail(exc: BaseException, err: TextIO, url: str | None = None) -> int:
    code, message = common.describe_error(exc, url=url)
    print(f"enclaved: {message}", file=err)
    return code


class _Session:
    def __init__(
        self, client: Any, model: str, args: argparse.Namespace, out: TextIO, err: TextIO
    ) -> None:
        self.client = client
        self.model = model
        self.args = args
        self.out = out
        self.err = err
        self.history: list[tuple[str, str]] = []
        self._shown_address: str | None = None

    def repl(self, stdin: TextIO) -> int:
        print(f"enclaved chat with {self.model} - empty line or Ctrl-D to quit", file=self.err)
        code = 0
        while True:
            _discard_typeahead(stdin)
            try:
                self.err.write("> ")
                self.err.flush()
                line = stdin.readline()
            except KeyboardInterrupt:
                print(file=self.err)
                return code
            if not line:  # Ctrl-D: end the "> " line, so the shell's prompt starts clean
                print(file=self.err)
                return code
            if not line.strip() or line.strip() in ("/quit", "/exit"):
                return code
            code = self.turn(line.strip())
            if code == EXIT_INTERRUPTED:
                code = 0  # the user stopped that answer: not an error of the session
            elif code not in (0, common.EXIT_NETWORK):
                return code  # a failed verification ends the session

    def turn(self, prompt: str) -> int:
        messages = build_messages(
            self.history,
            prompt,
            self.args.system,
            e2ee=self.model.startswith(routes.E2EE_MODEL_PREFIX),
        )
        params: dict[str, Any] = {"model": self.model, "messages": messages}
        if self.args.max_tokens:
            params["max_tokens"] = self.args.max_tokens
        if self.args.temperature is not None:
            params["temperature"] = self.args.temperature
        shown = False
        pieces: list[str] = []
        stream: Any = None
        try:
            if self.args.no_stream:
                reply = self.client.chat.completions.create(**params)
                self._show_verified()
                text = reply.choices[0].message.content or ""
                pieces.append(text)
                self.out.write(text)
                shown = bool(text)
            else:
                stream = self.client.chat.completions.create(stream=True, **params)
                self._show_verified()
                for chunk in stream:
                    for choice in chunk.choices or []:
                        text = choice.delta.content if choice.delta else None
                        if text:
                            pieces.append(text)
                            self.out.write(text)
                            self.out.flush()
                            shown = True
            self.out.write("\n")
            self.out.flush()
        except KeyboardInterrupt:
            # Stop this answer only: closing the stream closes the connection,
            # and the node stops generating. A cut answer has no signature to
            # check, so it is not kept in the conversation either.
            if stream is not None:
                with contextlib.suppress(Exception):
                    stream.close()
            if shown:
                self.out.write("\n")
                self.out.flush()
            print("[stopped: this answer is incomplete and unsigned]", file=self.err)
            return EXIT_INTERRUPTED
        except Exception as exc:  # noqa: BLE001 - describe_error re-raises unknown ones
            if shown:
                self.out.write("\n")
                self.out.flush()
                print("enclaved: WARNING: the text above was NOT verified", file=self.err)
            return _fail(exc, self.err, common.base_url(self.args))
        self._show_signature()
        self.history.append((prompt, "".join(pieces)))
        return common.EXIT_OK

    def _show_verified(self) -> None:
        from ..client import last_attestation

        node = last_attestation(self.client)
        if (
            not self.model.startswith((routes.E2EE_MODEL_PREFIX, routes.TEE_MODEL_PREFIX))
            or node is None
        ):
            print(
                f"WARNING: {self.model} is not a TEE model: nothing is verified or encrypted",
                file=self.err,
            )
            return
        if node.signing_address == self._shown_address:
            return
        self._shown_address = node.signing_address
        plaintext = not self.model.startswith(routes.E2EE_MODEL_PREFIX)
        print(common.verified_line(node, plaintext_prompt=plaintext), file=self.err)

    def _show_signature(self) -> None:
        if self.args.signatures == "off" or not self.model.startswith(
            (routes.E2EE_MODEL_PREFIX, routes.TEE_MODEL_PREFIX)
        ):
            return
        from ..client import last_signature

        sig = last_signature(self.client)
        if sig is not None:
            how = (
                "every chunk authenticated as it arrived"
                if sig.stream_authenticated
                else ("checked at the end")
            )
            print(
                f"signature: ok, {sig.request_id} signed by {sig.recovered_address} ({how})",
                file=self.err,
            )
        if getattr(self.args, "aci", None):
            from ..client import last_receipt

            receipt = last_receipt(self.client)
            if receipt is not None and receipt.ok:
                print(
                    f"receipt: ok, {receipt.receipt_id} in aci/1 keyset {receipt.keyset_digest}",
                    file=self.err,
                )


def _discard_typeahead(stdin: TextIO) -> None:
    """Drop what was typed while an answer streamed: it is not the next prompt."""
    try:
        if stdin.isatty():
            import termios

            termios.tcflush(stdin.fileno(), termios.TCIFLUSH)
    except (OSError, ValueError, ImportError):  # not a terminal after all, or not POSIX
        pass


def build_messages(
    history: list[tuple[str, str]], prompt: str, system: str | None, *, e2ee: bool
) -> list[dict[str, Any]]:
    """The messages of one turn.

    For E2EE the earlier turns go inside the (encrypted) system message as
    a transcript; otherwise they are replayed as user/assistant messages.
    """
    messages: list[dict[str, Any]] = []
    if e2ee:
        parts = [system] if system else []
        if history:
            transcript = "\n".join(f"User: {u}\nAssistant: {a}" for u, a in history)
            parts.append(f"The conversation so far:\n{transcript}")
        if parts:
            messages.append({"role": "system", "content": "\n\n".join(parts)})
    else:
        if system:
            messages.append({"role": "system", "content": system})
        for user, assistant in history:
            messages.append({"role": "user", "content": user})
            messages.append({"role": "assistant", "content": assistant})
    messages.append({"role": "user", "content": prompt})
    return messages
