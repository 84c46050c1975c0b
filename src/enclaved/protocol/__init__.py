"""The wire protocol (PROTOCOL.md), one home for both sides.

The server and the client import the protocol's names from here, so that a
header, a route, an error message or a byte of the SSE framing is written
down once:

- :mod:`.headers`: the ``X-Venice-TEE-*`` request and response headers;
- :mod:`.routes`: the API prefixes, the route paths and the model-id prefixes;
- :mod:`.errors`: the error ``type`` vocabulary, the E2EE error codes and the
  messages of PROTOCOL.md's error table;
- :mod:`.clear_fields`: what the fields that stay in the clear under E2EE
  may hold (``delta.role``, ``choices[].index``, ``finish_reason``, an
  error's ``type``);
- :mod:`.sse`: the SSE framing the node writes and the parser both sides read with;
- :mod:`.assemble`: stream chunks folded into one ``chat.completion``.

Private: nothing here is part of the public API (``docs/api.md``).
"""
