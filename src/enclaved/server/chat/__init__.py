"""``POST /chat/completions``: the node's data path, one module per step.

    route.py     the ASGI endpoint: a thin composition of the steps below
      asgi.py      1-2. body read within limits; JSON answers; the client watched
      validate.py  3-5. headers, body, model, messages, parameters -> Prepared
      e2ee.py        5. E2EE: header checks, model-key check, refusals, prompt
                        decryption ("open"); the response sealer
      engine.py      6. the backend's first chunk; its failures as HTTP errors
      rewrite.py     7. every chunk rebuilt from an allow-list, sealed under E2EE
      batching.py    7. what arrived while the last write was under way, together
      stream.py    6-8. a streamed answer: SSE out, every byte hashed
      complete.py  6-8. a non-streamed answer: one chat.completion
      sign.py        8. sign the exact bytes, store before [DONE]

Each step raises an :class:`~enclaved.server.errors.HTTPError` that becomes
an OpenAI-style error before any response byte is written; after the first
byte a failure is an SSE error event followed by ``[DONE]``, and no signature.

Never logged: content, keys, headers. Backend failures are logged by type
and by :class:`~enclaved.server.backends.base.BackendError` message only
(which must be content-free).
"""

from __future__ import annotations

from .asgi import send_error
from .route import ChatCompletions
from .sign import STORE_TIMEOUT_SECONDS

__all__ = ["STORE_TIMEOUT_SECONDS", "ChatCompletions", "send_error"]
