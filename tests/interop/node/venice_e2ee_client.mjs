// The npm package venice-e2ee (written for the production service) against
// an enclaved node, with its default verification policy ("binding").
// Usage: node venice_e2ee_client.mjs ORIGIN MODEL PROMPT   (API key in $API_KEY)
// Prints one JSON object: the client's attestation result, the decrypted
// answer, and the exact request and response bytes (for the signature check).
import { createVeniceE2EE } from 'venice-e2ee';

const [origin, model, prompt] = process.argv.slice(2);
const apiKey = process.env.API_KEY || 'unused';
const e2ee = createVeniceE2EE({ apiKey, baseUrl: origin });

const out = {};
try {
  const session = await e2ee.createSession(model);
  out.attestation = session.attestation;
  const { encryptedMessages, headers, veniceParameters } = await e2ee.encrypt(
    [{ role: 'user', content: prompt }],
    session,
  );
  const body = JSON.stringify({
    model,
    messages: encryptedMessages,
    stream: true,
    max_tokens: 24,
    temperature: 0,
    venice_parameters: veniceParameters,
  });
  const res = await fetch(`${origin}/api/v1/chat/completions`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${apiKey}`, ...headers },
    body,
  });
  out.status = res.status;
  const raw = new Uint8Array(await res.arrayBuffer());
  const replay = new ReadableStream({
    start(controller) {
      controller.enqueue(raw);
      controller.close();
    },
  });
  let text = '';
  for await (const piece of e2ee.decryptStream(replay, session)) text += piece;
  out.text = text;
  out.request_body = body;
  out.response_b64 = Buffer.from(raw).toString('base64');
} catch (err) {
  out.error = String(err && err.message ? err.message : err);
}
console.log(JSON.stringify(out));
