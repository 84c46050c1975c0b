#!/usr/bin/env node
// The seed document's E2EE client, as a command-line script.
//
// Source: /work/shared/seeds/venice-tee-e2ee-docs.txt (the public Venice TEE /
// E2EE page), sections "Step 1" to "Step 6" and "Complete Working Example".
// Every function below is that document's code, with its names, its
// libraries (elliptic, @noble/ciphers, @noble/hashes: the "Prerequisites")
// and its checks. It was written from the document alone, never from
// enclaved's code: it is the outside client that proves a third party can
// talk to an enclaved server knowing only the public protocol.
//
// What differs from the document, each marked "ADDED:" where it happens:
//   - the base URL, model, API key and prompt come from argv / env instead
//     of constants (the document hard-codes https://api.venice.ai/api/v1);
//   - optional sampling parameters (MAX_TOKENS, TEMPERATURE, SEED), which
//     any real client may send, so a test can compare against a plain run;
//   - bookkeeping for the test: how many encrypted chunks came, whether any
//     content delta was plaintext, how many SSE lines the document's code
//     silently skipped, the completion id, and optionally the exact request
//     and response bytes (to check the response signature);
//   - progress messages go to stderr so that stdout carries only the answer;
//   - a non-2xx answer, an error event in the stream, or any skipped line is
//     a failure with a non-zero exit (the document's `main().catch(console.error)`
//     exits 0 and its `catch {}` swallows everything).
//
// Usage:
//   node seed_client.mjs [--base-url URL] [--model ID] [--api-key KEY] PROMPT...
// Environment (used where the option is absent):
//   BASE_URL (e.g. http://127.0.0.1:8000/api/v1), MODEL, API_KEY_VENICE, PROMPT,
//   MAX_TOKENS, TEMPERATURE, SEED,
//   SEED_CLIENT_SUMMARY   file for the JSON summary (else: last line on stderr),
//   SEED_CLIENT_REQUEST_FILE / SEED_CLIENT_RESPONSE_FILE
//                         files for the exact chat request body and raw SSE body.
//
// Output: the decrypted answer on stdout; exit status 0 only if every step passed.

import elliptic from 'elliptic'
import { gcm } from '@noble/ciphers/aes.js'
import { hkdf } from '@noble/hashes/hkdf.js'
import { sha256 } from '@noble/hashes/sha2.js'
import crypto from 'crypto'
import fs from 'fs'
import { pathToFileURL } from 'url'

const EC = elliptic.ec
const HKDF_INFO = new TextEncoder().encode('ecdsa_encryption')

// ---------------------------------------------------------------------------
// Step 1: Check Model E2EE Support (ADDED: base URL parameter)

export async function getE2EEModels(baseUrl, apiKey) {
  const response = await fetch(`${baseUrl}/models`, {
    headers: { Authorization: `Bearer ${apiKey}` },
  })
  const { data } = await response.json()

  return data.filter(model => model.model_spec?.capabilities?.supportsE2EE === true)
}

// ---------------------------------------------------------------------------
// Step 2: Generate Ephemeral Key Pair

export function generateEphemeralKeyPair() {
  const ec = new EC('secp256k1')
  const keyPair = ec.genKeyPair()

  return {
    privateKey: new Uint8Array(keyPair.getPrivate().toArray('be', 32)),
    publicKeyHex: keyPair.getPublic('hex'), // Uncompressed format (65 bytes hex)
  }
}

// Security: Zero-fill private key when done
export function zeroFill(arr) {
  arr.fill(0)
}

// Validation Helpers

export function validateClientPubkey(pubkeyHex) {
  if (pubkeyHex.length !== 130 || !pubkeyHex.startsWith('04')) {
    throw new Error(`Client pubkey must be 130 hex chars starting with '04' (got ${pubkeyHex.length})`)
  }
}

export function isValidEncrypted(s) {
  // Minimum: ephemeral_pub (65) + nonce (12) + tag (16) = 93 bytes = 186 hex chars
  return s.length >= 186 && /^[0-9a-fA-F]+$/.test(s)
}

// ---------------------------------------------------------------------------
// Step 3: Fetch and Verify TEE Attestation (ADDED: base URL parameter)

export async function fetchAndVerifyAttestation(baseUrl, modelId, apiKey) {
  // Generate client nonce for replay protection (32 bytes = 64 hex chars)
  const clientNonce = crypto.randomBytes(32).toString('hex')

  const response = await fetch(
    `${baseUrl}/tee/attestation?model=${encodeURIComponent(modelId)}&nonce=${clientNonce}`,
    { headers: { Authorization: `Bearer ${apiKey}` } }
  )

  const attestation = await response.json()

  // Verify attestation
  if (attestation.verified !== true) {
    throw new Error('TEE attestation verification failed on server')
  }

  if (attestation.nonce !== clientNonce) {
    throw new Error('Attestation nonce mismatch - possible replay attack')
  }

  // Get model's public key for encryption
  const modelPublicKey = attestation.signing_key || attestation.signing_public_key
  if (!modelPublicKey) {
    throw new Error('No signing key in attestation response')
  }

  return {
    modelPublicKey,
    signingAddress: attestation.signing_address,
    attestation,
  }
}

// ---------------------------------------------------------------------------
// Step 4: Encrypt Messages

export function encryptMessage(plaintext, modelPublicKeyHex) {
  const ec = new EC('secp256k1')

  // Normalize public key (add 04 prefix if needed)
  let normalizedKey = modelPublicKeyHex
  if (!normalizedKey.startsWith('04') && normalizedKey.length === 128) {
    normalizedKey = '04' + normalizedKey
  }

  const modelPublicKey = ec.keyFromPublic(normalizedKey, 'hex')

  // Generate ephemeral key pair for this message
  const ephemeralKeyPair = ec.genKeyPair()

  // ECDH shared secret
  const sharedSecret = ephemeralKeyPair.derive(modelPublicKey.getPublic())
  const sharedSecretBytes = new Uint8Array(sharedSecret.toArray('be', 32))

  // Derive AES key using HKDF
  const aesKey = hkdf(sha256, sharedSecretBytes, undefined, HKDF_INFO, 32)

  // Generate random nonce
  const nonce = crypto.randomBytes(12)

  // Encrypt with AES-GCM
  const cipher = gcm(aesKey, nonce)
  const encrypted = cipher.encrypt(new TextEncoder().encode(plaintext))

  // Get ephemeral public key (uncompressed)
  const ephemeralPublic = new Uint8Array(ephemeralKeyPair.getPublic(false, 'array'))

  // Combine: ephemeral_public (65 bytes) + nonce (12 bytes) + ciphertext
  const result = new Uint8Array(65 + 12 + encrypted.length)
  result.set(ephemeralPublic, 0)
  result.set(nonce, 65)
  result.set(encrypted, 65 + 12)

  return Buffer.from(result).toString('hex')
}

export function encryptMessagesForE2EE(messages, modelPublicKey) {
  return messages.map(msg => {
    if (msg.role === 'user' || msg.role === 'system') {
      return {
        ...msg,
        content: encryptMessage(msg.content, modelPublicKey),
      }
    }
    return msg
  })
}

// ---------------------------------------------------------------------------
// Step 5: Send Request with E2EE Headers
// ADDED: base URL parameter; `extra` body fields (sampling parameters); the
// exact body string is returned with the response, for the signature check.

export async function sendE2EERequest(baseUrl, messages, model, e2eeContext, apiKey, extra = {}) {
  // Encrypt messages
  const encryptedMessages = encryptMessagesForE2EE(messages, e2eeContext.modelPublicKey)

  // ADDED: every encrypted field passes the document's own validator before it leaves.
  for (const msg of encryptedMessages) {
    if ((msg.role === 'user' || msg.role === 'system') && !isValidEncrypted(msg.content)) {
      throw new Error('encryptMessage produced an invalid envelope')
    }
  }

  const body = JSON.stringify({
    model,
    messages: encryptedMessages,
    stream: true, // E2EE requires streaming
    ...extra,
  })

  const response = await fetch(`${baseUrl}/chat/completions`, {
    method: 'POST',
    headers: {
      Authorization: `Bearer ${apiKey}`,
      'Content-Type': 'application/json',
      // E2EE headers
      'X-Venice-TEE-Client-Pub-Key': e2eeContext.publicKeyHex,
      'X-Venice-TEE-Model-Pub-Key': e2eeContext.modelPublicKey,
      'X-Venice-TEE-Signing-Algo': 'ecdsa',
    },
    body,
  })

  return { response, body }
}

// ---------------------------------------------------------------------------
// Step 6: Decrypt Response Chunks

export function hexToBytes(hex) {
  const h = hex.startsWith('0x') ? hex.slice(2) : hex
  const bytes = new Uint8Array(h.length / 2)
  for (let i = 0; i < bytes.length; i++) {
    bytes[i] = parseInt(h.substring(i * 2, i * 2 + 2), 16)
  }
  return bytes
}

export function isHexEncrypted(s) {
  // Minimum: ephemeral_pub (65) + nonce (12) + tag (16) = 93 bytes = 186 hex chars
  if (s.length < 186) return false
  return /^[0-9a-fA-F]+$/.test(s)
}

export function decryptChunk(ciphertextHex, clientPrivateKey) {
  const raw = hexToBytes(ciphertextHex)

  // Parse components
  const serverEphemeralPubKey = raw.slice(0, 65)
  const nonce = raw.slice(65, 65 + 12)
  const ciphertext = raw.slice(65 + 12)

  // ECDH with server's ephemeral key
  const ec = new EC('secp256k1')
  const clientKey = ec.keyFromPrivate(Buffer.from(clientPrivateKey))
  const serverKey = ec.keyFromPublic(Buffer.from(serverEphemeralPubKey))
  const sharedSecret = clientKey.derive(serverKey.getPublic())
  const sharedSecretBytes = new Uint8Array(sharedSecret.toArray('be', 32))

  // Derive AES key
  const aesKey = hkdf(sha256, sharedSecretBytes, undefined, HKDF_INFO, 32)

  // Decrypt
  const cipher = gcm(aesKey, nonce)
  const plaintext = cipher.decrypt(ciphertext)

  return new TextDecoder().decode(plaintext)
}

// ADDED: what the test wants to know about a stream.
export function newStreamStats() {
  return {
    completionId: null,
    encryptedChunks: 0,
    plaintextDeltas: 0,
    minCiphertextHexLen: null,
    serverEphemeralKeys: new Set(),
    skippedLines: 0,
    errors: [],
    finishReason: null,
    usage: null,
    sawDone: false,
    rawChunks: [],
  }
}

// Process streaming response (ADDED: the `stats` bookkeeping; `write` stands
// for the document's `process.stdout.write`)
export async function processE2EEStream(response, clientPrivateKey, stats = newStreamStats(),
                                        write = s => process.stdout.write(s)) {
  const reader = response.body.getReader()
  const decoder = new TextDecoder()
  let fullContent = ''

  while (true) {
    const { done, value } = await reader.read()
    if (done) break
    stats.rawChunks.push(Buffer.from(value)) // ADDED

    const text = decoder.decode(value)
    const lines = text.split('\n')

    for (const line of lines) {
      if (!line.startsWith('data: ')) continue
      const data = line.slice(6)
      if (data === '[DONE]') { stats.sawDone = true; continue } // ADDED: sawDone

      try {
        const chunk = JSON.parse(data)
        // ADDED: bookkeeping
        if (chunk.error) stats.errors.push(chunk.error)
        if (chunk.id && stats.completionId === null) stats.completionId = chunk.id
        if (chunk.usage) stats.usage = chunk.usage
        const reason = chunk.choices?.[0]?.finish_reason
        if (reason) stats.finishReason = reason

        const content = chunk.choices?.[0]?.delta?.content

        if (content && isHexEncrypted(content)) {
          const decrypted = decryptChunk(content, clientPrivateKey)
          // ADDED: bookkeeping
          stats.encryptedChunks += 1
          stats.serverEphemeralKeys.add(content.slice(0, 130))
          if (stats.minCiphertextHexLen === null || content.length < stats.minCiphertextHexLen) {
            stats.minCiphertextHexLen = content.length
          }
          fullContent += decrypted
          write(decrypted) // Real-time output
        } else if (content) {
          stats.plaintextDeltas += 1 // ADDED
          fullContent += content
          write(content)
        }
      } catch (e) {
        // Skip malformed chunks
        stats.skippedLines += 1 // ADDED: but count them, the test wants zero
      }
    }
  }

  return fullContent
}

// ---------------------------------------------------------------------------
// Complete Working Example, as a CLI (ADDED: arguments, summary, exit status)

function parseArgs(argv, env) {
  const opts = {
    baseUrl: env.BASE_URL || 'https://api.venice.ai/api/v1',
    model: env.MODEL || 'e2ee-qwen3-5-122b-a10b',
    apiKey: env.API_KEY_VENICE || '',
    prompt: env.PROMPT || 'What is 2+2? Answer briefly.',
  }
  const rest = []
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (a === '--base-url') opts.baseUrl = argv[++i]
    else if (a === '--model') opts.model = argv[++i]
    else if (a === '--api-key') opts.apiKey = argv[++i]
    else rest.push(a)
  }
  if (rest.length) opts.prompt = rest.join(' ')
  opts.baseUrl = opts.baseUrl.replace(/\/+$/, '')
  const extra = {}
  if (env.MAX_TOKENS) extra.max_tokens = parseInt(env.MAX_TOKENS, 10)
  if (env.TEMPERATURE) extra.temperature = parseFloat(env.TEMPERATURE)
  if (env.SEED) extra.seed = parseInt(env.SEED, 10)
  return { ...opts, extra }
}

const log = msg => process.stderr.write(msg + '\n')

export async function main(argv = process.argv.slice(2), env = process.env) {
  const { baseUrl, model, apiKey, prompt, extra } = parseArgs(argv, env)

  // Step 1: Check the model supports E2EE
  log('🔎 Checking E2EE models...')
  const models = await getE2EEModels(baseUrl, apiKey)
  if (!models.some(m => m.id === model)) {
    throw new Error(`${model} is not an E2EE model here (E2EE models: ${models.map(m => m.id).join(', ')})`)
  }

  // Step 2: Generate ephemeral key pair
  log('🔑 Generating ephemeral key pair...')
  const { privateKey, publicKeyHex } = generateEphemeralKeyPair()
  validateClientPubkey(publicKeyHex)

  try {
    // Step 3: Fetch and verify attestation
    log('🔍 Fetching TEE attestation...')
    const { modelPublicKey, signingAddress, attestation } = await fetchAndVerifyAttestation(baseUrl, model, apiKey)
    log('✅ TEE attestation verified')

    // Step 4 and 5: Encrypt message, send E2EE request
    log('📤 Sending encrypted request...')
    const messages = [{ role: 'user', content: prompt }]
    const { response, body } = await sendE2EERequest(
      baseUrl, messages, model, { publicKeyHex, modelPublicKey }, apiKey, extra)
    if (!response.ok) { // ADDED
      throw new Error(`chat request failed: HTTP ${response.status}: ${await response.text()}`)
    }

    // Step 6: Decrypt response
    log('📥 Decrypting response...')
    const stats = newStreamStats()
    const decrypted = await processE2EEStream(response, privateKey, stats)
    process.stdout.write('\n')
    log('🔐 Response decrypted end-to-end')

    // ADDED: the summary and the files, for the test
    const summary = {
      model,
      decrypted,
      completion_id: stats.completionId,
      encrypted_chunks: stats.encryptedChunks,
      plaintext_deltas: stats.plaintextDeltas,
      all_ciphertext: stats.plaintextDeltas === 0 && stats.encryptedChunks > 0,
      min_ciphertext_hex_len: stats.minCiphertextHexLen,
      server_ephemeral_keys: stats.serverEphemeralKeys.size,
      skipped_lines: stats.skippedLines,
      errors: stats.errors,
      finish_reason: stats.finishReason,
      usage: stats.usage,
      saw_done: stats.sawDone,
      client_public_key: publicKeyHex,
      attestation_nonce: attestation.nonce,
      attestation_verified: attestation.verified,
      model_public_key: modelPublicKey,
      signing_address: signingAddress,
    }
    if (env.SEED_CLIENT_REQUEST_FILE) fs.writeFileSync(env.SEED_CLIENT_REQUEST_FILE, Buffer.from(body, 'utf8'))
    if (env.SEED_CLIENT_RESPONSE_FILE) fs.writeFileSync(env.SEED_CLIENT_RESPONSE_FILE, Buffer.concat(stats.rawChunks))
    const line = JSON.stringify(summary)
    if (env.SEED_CLIENT_SUMMARY) fs.writeFileSync(env.SEED_CLIENT_SUMMARY, line + '\n')
    else log(line)

    if (stats.errors.length) throw new Error(`the stream reported an error: ${JSON.stringify(stats.errors[0])}`)
    if (stats.skippedLines) throw new Error(`${stats.skippedLines} SSE line(s) could not be parsed or decrypted`)
    if (!stats.sawDone) throw new Error('the stream ended without [DONE]')
    return summary
  } finally {
    // Security: Zero-fill private key when done
    zeroFill(privateKey)
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch(err => {
    log(`❌ ${err.message}`)
    process.exitCode = 1
  })
}
