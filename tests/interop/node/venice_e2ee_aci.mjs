// The npm package venice-e2ee (0.5.x: ACI revision rev-a) verifying an
// enclaved node's ACI report and the receipt of one answer.
// Usage: node venice_e2ee_aci.mjs ORIGIN MODEL   (API key in $API_KEY)
// Prints one JSON object: the checks of verifyAciAttestation and verifyReceipt.
// The quote is a simulated TEE's, signed by the development root, which no
// Intel DCAP verifier accepts: the test verifies it with enclaved and passes
// requireDcap: false here ("verified by other means", the package's words).
import { generateAciNonce, fetchAciAttestation, verifyAciAttestation, verifyReceipt } from 'venice-e2ee';

const [origin, model] = process.argv.slice(2);
const apiKey = process.env.API_KEY || 'unused';
const out = {};
try {
  const nonce = generateAciNonce();
  const report = await fetchAciAttestation(origin, nonce);
  out.nonce = nonce;
  out.report = report;
  const att = await verifyAciAttestation(report, nonce, { requireDcap: false });
  out.attestation = { verified: att.verified, nonceBound: att.nonceBound, checks: att.checks };
  for (const stream of [false, true]) {
    const body = JSON.stringify({
      model,
      messages: [{ role: 'user', content: 'Say hi' }],
      stream,
      max_tokens: 8,
    });
    const res = await fetch(`${origin}/api/v1/chat/completions`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${apiKey}` },
      body,
    });
    const raw = new Uint8Array(await res.arrayBuffer());
    const receiptId = res.headers.get('x-receipt-id');
    const sig = await (
      await fetch(
        `${origin}/api/v1/tee/signature?model=${encodeURIComponent(model)}&request_id=${receiptId}`,
        { headers: { Authorization: `Bearer ${apiKey}` } },
      )
    ).json();
    const verdict = att.anchor
      ? await verifyReceipt(sig, report, {
          trustAnchor: att.anchor,
          requestId: receiptId,
          requestBody: body,
          responseBody: raw,
          responseHashField: 'wire_hash',
        })
      : { verified: false, checks: [{ name: 'anchor', ok: false }] };
    // A receipt for other bytes must fail.
    const tampered = att.anchor
      ? await verifyReceipt(sig, report, {
          trustAnchor: att.anchor,
          requestId: receiptId,
          requestBody: body,
          responseBody: new Uint8Array([...raw, 10]),
          responseHashField: 'wire_hash',
        })
      : { verified: true };
    out[stream ? 'streamed' : 'complete'] = {
      status: res.status,
      receiptId,
      keysetDigestHeader: res.headers.get('x-aci-keyset-digest'),
      verified: verdict.verified,
      checks: verdict.checks,
      tamperedVerified: tampered.verified,
    };
  }
} catch (err) {
  out.error = String(err && err.stack ? err.stack : err);
}
console.log(JSON.stringify(out));
