// The browser's cryptography for the enclaved chat page, bundled by
// `npm run build` (web/build.sh) into src/enclaved/web/crypto.js.
// AES-256-GCM is WebCrypto's; everything else is @noble.
import { secp256k1 } from '@noble/curves/secp256k1.js';
import { sha256 } from '@noble/hashes/sha2.js';
import { keccak_256 } from '@noble/hashes/sha3.js';
import { hkdf } from '@noble/hashes/hkdf.js';
import { bytesToHex, hexToBytes, utf8ToBytes, randomBytes } from '@noble/hashes/utils.js';

/** A fresh secp256k1 key pair: {secret, publicKey (65 bytes, uncompressed)}. */
export function newKeyPair() {
  const secret = secp256k1.utils.randomSecretKey();
  return { secret, publicKey: secp256k1.getPublicKey(secret, false) };
}

/** HKDF-SHA256(x(ECDH(secret, public)), salt = none, info = "ecdsa_encryption", 32). */
export function sharedKey(secret, publicKey) {
  const x = secp256k1.getSharedSecret(secret, publicKey, true).slice(1);
  return hkdf(sha256, x, undefined, utf8ToBytes('ecdsa_encryption'), 32);
}

/** Ethereum address of an uncompressed public key: 0x + last 20 bytes of keccak(x || y). */
export function address(publicKey) {
  if (publicKey.length !== 65 || publicKey[0] !== 4) throw new Error('not an uncompressed key');
  return '0x' + bytesToHex(keccak_256(publicKey.slice(1)).slice(12));
}

/** keccak256("\x19Ethereum Signed Message:\n" + len + message) over UTF-8 bytes. */
export function eip191Hash(message) {
  const body = typeof message === 'string' ? utf8ToBytes(message) : message;
  const prefix = utf8ToBytes('\x19Ethereum Signed Message:\n' + body.length);
  const all = new Uint8Array(prefix.length + body.length);
  all.set(prefix);
  all.set(body, prefix.length);
  return keccak_256(all);
}

/** The address that signed `message` (EIP-191), from 0x + r || s || v. Throws if malformed. */
export function recoverAddress(message, signatureHex) {
  const sig = hexToBytes(signatureHex.replace(/^0x/i, ''));
  if (sig.length !== 65) throw new Error('signature must be 65 bytes');
  let v = sig[64];
  if (v >= 27) v -= 27;
  if (v !== 0 && v !== 1) throw new Error('bad recovery id');
  const point = secp256k1.Signature.fromBytes(sig.slice(0, 64), 'compact')
    .addRecoveryBit(v)
    .recoverPublicKey(eip191Hash(message));
  return address(point.toBytes(false));
}

/** The point is on the curve (throws otherwise). */
export function checkPoint(publicKey) {
  secp256k1.Point.fromBytes(publicKey).assertValidity();
}

export function sha256Hex(bytes) {
  return bytesToHex(sha256(bytes));
}

export { bytesToHex, hexToBytes, randomBytes, utf8ToBytes };
