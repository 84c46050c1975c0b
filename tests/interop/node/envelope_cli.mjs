#!/usr/bin/env node
// The seed document's envelope functions (encryptMessage, decryptChunk, from
// seed_client.mjs), driven by JSON on stdin, so the Python tests can
// cross-check them against enclaved.crypto without a server.
//
// stdin, one of:
//   {"op": "encrypt", "public_key": "04..." | "<128 hex>", "plaintexts": ["...", ...]}
//       -> {"envelopes": ["<hex>", ...]}           (encryptMessage per plaintext)
//   {"op": "decrypt", "private_key": "<64 hex>", "envelopes": ["<hex>", ...]}
//       -> {"results": [{"ok": true, "plaintext": "..."} | {"ok": false, "error": "..."}, ...]}
//                                                 (decryptChunk per envelope,
//                                                  after the document's isHexEncrypted test)
// stdout: the answer as one JSON line.

import { decryptChunk, encryptMessage, hexToBytes, isHexEncrypted } from './seed_client.mjs'

async function readStdin() {
  const parts = []
  for await (const part of process.stdin) parts.push(part)
  return Buffer.concat(parts).toString('utf8')
}

const request = JSON.parse(await readStdin())
let answer
if (request.op === 'encrypt') {
  answer = { envelopes: request.plaintexts.map(p => encryptMessage(p, request.public_key)) }
} else if (request.op === 'decrypt') {
  const privateKey = hexToBytes(request.private_key)
  answer = {
    results: request.envelopes.map(envelope => {
      if (!isHexEncrypted(envelope)) return { ok: false, error: 'not hex ciphertext' }
      try {
        return { ok: true, plaintext: decryptChunk(envelope, privateKey) }
      } catch (e) {
        return { ok: false, error: String(e && e.message ? e.message : e) }
      }
    }),
  }
} else {
  throw new Error(`unknown op ${request.op}`)
}
process.stdout.write(JSON.stringify(answer) + '\n')
