// The enclaved chat page. No framework, no inline script, no innerHTML:
// every piece of text, the model's included, reaches the DOM through
// textContent. The cryptography is window.EnclavedCrypto (crypto.js, the
// bundled @noble code) plus WebCrypto's AES-256-GCM.
'use strict';

(() => {
  const C = window.EnclavedCrypto;
  const MODE = document.body.dataset.mode === 'proxy' ? 'proxy' : 'node';
  const API = '/v1';
  const enc = new TextEncoder();
  const dec = new TextDecoder('utf-8', { fatal: true });
  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const n = document.createElement(tag);
    if (cls) n.className = cls;
    if (text !== undefined) n.textContent = text;
    return n;
  };

  /** A check that failed: the chat stops and says which. */
  class CheckFailed extends Error {}

  const state = {
    models: [],
    model: null,
    history: [], // {role, content} in the clear, in this tab only
    attesting: null, // {model, promise of {model, address, signingKey, signingKeyHex}}
    abort: null,
    blocked: false,
  };

  // -- small helpers ---------------------------------------------------------

  const hex = (b) => C.bytesToHex(b);
  const eqBytes = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);
  const privacyOf = (m) => {
    const caps = (m && m.model_spec && m.model_spec.capabilities) || {};
    if (caps.supportsE2EE === true && m.id.startsWith('e2ee-')) return 'e2ee';
    if (caps.supportsTeeAttestation === true) return 'tee';
    return 'none';
  };

  function showError(message) {
    const e = $('error');
    e.textContent = message;
    e.hidden = !message;
  }

  function bytesFromQuote(text) {
    if (/^(0x)?[0-9a-fA-F]+$/.test(text)) return C.hexToBytes(text.replace(/^0x/, ''));
    const bin = atob(text);
    return Uint8Array.from(bin, (c) => c.charCodeAt(0));
  }

  // -- the TDX quote: only the fields the page shows and checks -------------
  // v4: header (48 bytes) then the TD report; v5: header, then body type (2)
  // and size (4), then the report. Offsets inside the TD report:
  const TD = { attributes: 120, mrtd: 136, rtmr: 328, reportData: 520, size: 584 };

  function parseQuote(q) {
    if (q.length < 48 + 6 + TD.size) throw new CheckFailed('quote: too short');
    const version = q[0] | (q[1] << 8);
    const start = version === 4 ? 48 : version === 5 ? 54 : -1;
    if (start < 0) throw new CheckFailed(`quote: unknown version ${version}`);
    const at = (off, n) => q.slice(start + off, start + off + n);
    // The signature data (ECDSA-256-with-P-256, certification data type 6).
    const end = start + TD.size;
    const u16 = (i) => q[i] | (q[i + 1] << 8);
    const u32 = (i) => (q[i] | (q[i + 1] << 8) | (q[i + 2] << 16) | (q[i + 3] << 24)) >>> 0;
    const sig = end + 4;
    const qe = sig + 128 + 6;
    const authSize = q.length >= qe + 450 ? u16(qe + 448) : 0;
    if (u32(end) < 128 + 6 + 384 + 64 + 2 + authSize || q.length < qe + 450 + authSize) {
      throw new CheckFailed('quote: truncated signature data');
    }
    return {
      signedRegion: q.slice(0, end),
      quoteSignature: q.slice(sig, sig + 64),
      attestationKey: q.slice(sig + 64, sig + 128),
      qeReportData: q.slice(qe + 320, qe + 384),
      qeAuthData: q.slice(qe + 450, qe + 450 + authSize),
      version,
      debug: (at(TD.attributes, 1)[0] & 1) === 1,
      mrtd: at(TD.mrtd, 48),
      rtmrs: [0, 1, 2, 3].map((i) => at(TD.rtmr + 48 * i, 48)),
      reportData: at(TD.reportData, 64),
    };
  }

  // -- attestation -------------------------------------------------------------

  function renderChecks(list, rows) {
    list.replaceChildren(...rows.map(([cls, text]) => el('li', cls, text)));
  }

  /** The quote is signed by its attestation key, and the QE report commits to that key. */
  async function quoteSignatureValid(quote) {
    try {
      const key = await crypto.subtle.importKey(
        'raw', Uint8Array.of(4, ...quote.attestationKey), { name: 'ECDSA', namedCurve: 'P-256' },
        false, ['verify']);
      const ok = await crypto.subtle.verify(
        { name: 'ECDSA', hash: 'SHA-256' }, key, quote.quoteSignature, quote.signedRegion);
      const bound = new Uint8Array(64 + quote.qeAuthData.length);
      bound.set(quote.attestationKey);
      bound.set(quote.qeAuthData, 64);
      return ok && C.sha256Hex(bound) === hex(quote.qeReportData.slice(0, 32));
    } catch (e) {
      return false;
    }
  }

  async function attest(model) {
    const nonce = C.randomBytes(32);
    const url = `${API}/tee/attestation?model=${encodeURIComponent(model.id)}&nonce=${hex(nonce)}`;
    const resp = await fetch(url, { cache: 'no-store' });
    if (!resp.ok) throw new CheckFailed(`attestation: the node answered ${resp.status}`);
    const doc = await resp.json();
    if (state.model !== model) throw new CheckFailed('another model was picked meanwhile');
    const rows = [];
    const fail = (what) => {
      rows.push(['bad', what]);
      renderChecks($('checks'), rows);
      throw new CheckFailed(what);
    };
    const pass = (what) => rows.push(['ok', what]);

    const simulated = doc.tee_hardware !== 'intel-tdx';
    $('tee-flag').hidden = !simulated; // in the header too: in view on a phone
    const banner = $('tee-banner');
    banner.hidden = false;
    banner.className = 'banner ' + (simulated ? 'simulated' : 'hardware');
    banner.textContent = simulated
      ? `SIMULATED TEE (${doc.tee_hardware}): this proves nothing about privacy`
      : 'Intel TDX hardware';

    let quote;
    try {
      quote = parseQuote(bytesFromQuote(doc.intel_quote || ''));
    } catch (e) {
      fail(e instanceof CheckFailed ? e.message : 'quote: unreadable');
    }
    const rd = quote.reportData;
    if (!eqBytes(rd.slice(32, 64), nonce)) fail('nonce echoed in REPORTDATA: no');
    pass('our fresh nonce is echoed in REPORTDATA');

    const address = String(doc.signing_address || '').toLowerCase();
    let keyAddress = '';
    let signingKey;
    try {
      let keyHex = String(doc.signing_key || doc.signing_public_key || '');
      if (keyHex.length === 128) keyHex = '04' + keyHex;
      signingKey = C.hexToBytes(keyHex);
      C.checkPoint(signingKey);
      keyAddress = C.address(signingKey);
    } catch (e) {
      fail('signing key: not a secp256k1 public key');
    }
    if (!/^0x[0-9a-f]{40}$/.test(address) || hex(rd.slice(0, 20)) !== address.slice(2) ||
        !rd.slice(20, 32).every((b) => b === 0)) {
      fail('REPORTDATA bound to the signing address: no');
    }
    pass(`REPORTDATA binds the signing address ${address}`);
    if (keyAddress !== address) fail('E2EE key belongs to the signing address: no');
    pass('the E2EE key belongs to that address (keccak of the key)');
    if (quote.debug) fail('TD debug mode is ON: the host can read the enclave');
    pass('debug off (TD_ATTRIBUTES.DEBUG = 0)');
    if (!(await quoteSignatureValid(quote))) fail('quote signed by its attestation key: no');
    pass("the quote is signed by its attestation key, which the QE report commits to (the QE's PCK chain to Intel: the node's word, below)");

    let gpus = 0;
    if (doc.nvidia_payload) {
      let payload;
      try {
        payload = typeof doc.nvidia_payload === 'string' ? JSON.parse(doc.nvidia_payload) : doc.nvidia_payload;
      } catch (e) {
        fail('GPU evidence: unreadable');
      }
      gpus = (payload.evidence_list || []).length;
      if (String(payload.nonce || '').toLowerCase() !== hex(nonce)) fail('GPU evidence carries our nonce: no');
      pass(`GPU evidence carries our nonce (${gpus} GPU${gpus === 1 ? '' : 's'})`);
    } else {
      rows.push(['info', 'no GPU evidence (0 GPUs)']);
    }
    renderChecks($('checks'), rows);

    const info = doc.info || {};
    const tcb = info.tcb_info || {};
    const dl = $('measurements');
    const facts = [
      ['TEE hardware', doc.tee_hardware],
      ['Quote version', String(quote.version)],
      ['MRTD', hex(quote.mrtd)],
      ...quote.rtmrs.map((r, i) => [`RTMR${i}`, hex(r)]),
      ['Compose hash', info.compose_hash || tcb.compose_hash || '(none)'],
      ['GPUs', String(gpus)],
      ['Signing address', address],
    ];
    dl.replaceChildren(...facts.flatMap(([k, v]) => [el('dt', null, k), el('dd', null, v)]));

    // What this page cannot check itself (Intel's and NVIDIA's certificate
    // chains, TCB status): shown as the node's own verdict, labelled so.
    const sv = doc.server_verification || {};
    const tdx = sv.tdx || {};
    const yes = (v) => (v === true ? 'ok' : 'bad');
    const nodeRows = [
      [yes(doc.verified), `the node's verifier passed: ${doc.verified === true ? 'yes' : 'no'}`],
      [yes(tdx.signatureValid), 'quote signature (ECDSA, attestation key)'],
      [yes(tdx.certificateChainValid), 'PCK certificate chain'],
      [yes(tdx.rootCaPinned), 'chain ends at the pinned root CA'],
      ['info', `TCB status: ${tdx.tcbStatus || 'unknown'}`],
      [sv.eventLog && sv.eventLog.replayed ? 'ok' : 'bad', 'event log replays to the RTMRs'],
      [sv.nvidia ? yes(sv.nvidia.valid) : 'info', sv.nvidia ? 'NVIDIA GPU attestation' : 'NVIDIA GPU attestation: none'],
      ...(sv.relaxations || []).map((r) => ['bad', `relaxed: ${r}`]),
    ];
    renderChecks($('node-checks'), nodeRows);
    return { model: model.id, address, signingKey, signingKeyHex: hex(signingKey) };
  }

  /** The model's attestation: one per chat, started as soon as the chat is. */
  function attested(model) {
    if (!state.attesting || state.attesting.model !== model.id) {
      const promise = attest(model);
      promise.catch(() => {});
      state.attesting = { model: model.id, promise };
    }
    return state.attesting.promise;
  }

  function refuse(e) {
    state.blocked = true;
    state.attesting = null;
    setBusy(false);
    const what = e instanceof CheckFailed ? e.message : (e && e.message) || String(e);
    showError(`Verification failed, chat stopped: ${what}. Start a new chat to attest again.`);
  }

  // -- E2EE ------------------------------------------------------------------

  async function aesKey(raw) {
    return crypto.subtle.importKey('raw', raw, { name: 'AES-GCM' }, false, ['encrypt', 'decrypt']);
  }

  async function seal(text, recipient) {
    const eph = C.newKeyPair();
    const key = await aesKey(C.sharedKey(eph.secret, recipient));
    const iv = C.randomBytes(12);
    const ct = new Uint8Array(await crypto.subtle.encrypt({ name: 'AES-GCM', iv }, key, enc.encode(text)));
    const out = new Uint8Array(65 + 12 + ct.length);
    out.set(eph.publicKey);
    out.set(iv, 65);
    out.set(ct, 77);
    return hex(out);
  }

  /** Opens the envelopes of one answer; any failure is the same refusal. */
  function opener(secret, boundKey) {
    const keys = new Map();
    const seen = new Set();
    return async (envelope) => {
      try {
        if (typeof envelope !== 'string' || envelope.length < 186 || seen.has(envelope)) throw 0;
        seen.add(envelope);
        const raw = C.hexToBytes(envelope);
        const ephHex = hex(raw.slice(0, 65));
        if (boundKey && ephHex !== boundKey) throw 0;
        let key = keys.get(ephHex);
        if (!key) {
          key = await aesKey(C.sharedKey(secret, raw.slice(0, 65)));
          keys.set(ephHex, key);
        }
        const pt = await crypto.subtle.decrypt({ name: 'AES-GCM', iv: raw.slice(65, 77) }, key, raw.slice(77));
        return dec.decode(pt);
      } catch (e) {
        throw new CheckFailed('an answer chunk failed to decrypt or was not sealed by the attested node: refused');
      }
    };
  }

  /**
   * E2EE seals only user and system contents: earlier turns go into one
   * system message (enclaved chat's and the proxy's format), so no earlier
   * answer leaves the browser in clear.
   */
  function foldHistory(history) {
    if (!history.some((m) => m.role === 'assistant' && m.content)) return history;
    const last = history.length - 1; // the new user message
    const transcript = history.slice(0, last).map(
      (m) => `${m.role === 'assistant' ? 'Assistant' : 'User'}: ${m.content}`);
    return [
      { role: 'system', content: 'The conversation so far:\n' + transcript.join('\n') },
      history[last],
    ];
  }

  // -- Markdown, safely: DOM nodes with textContent only ----------------------

  function inline(parent, text) {
    const re = /(`[^`\n]+`|\*\*[^*\n]+\*\*|\*[^*\n]+\*)/g;
    let last = 0;
    for (const m of text.matchAll(re)) {
      if (m.index > last) parent.append(document.createTextNode(text.slice(last, m.index)));
      const t = m[0];
      if (t[0] === '`') parent.append(el('code', null, t.slice(1, -1)));
      else if (t.startsWith('**')) parent.append(el('strong', null, t.slice(2, -2)));
      else parent.append(el('em', null, t.slice(1, -1)));
      last = m.index + t.length;
    }
    if (last < text.length) parent.append(document.createTextNode(text.slice(last)));
  }

  function markdown(target, text) {
    const out = [];
    const lines = text.split('\n');
    let para = [];
    let list = null;
    const flush = () => {
      if (para.length) {
        const p = el('p');
        inline(p, para.join('\n'));
        out.push(p);
        para = [];
      }
      list = null;
    };
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i];
      if (line.startsWith('```')) {
        flush();
        const code = [];
        for (i++; i < lines.length && !lines[i].startsWith('```'); i++) code.push(lines[i]);
        const pre = el('pre');
        pre.append(el('code', null, code.join('\n')));
        out.push(pre);
        continue;
      }
      const h = /^(#{1,4})\s+(.*)$/.exec(line);
      const li = /^\s*(?:[-*]|\d+\.)\s+(.*)$/.exec(line);
      if (h) {
        flush();
        const n = el('h' + Math.min(6, h[1].length + 2));
        inline(n, h[2]);
        out.push(n);
      } else if (li) {
        if (para.length) flush();
        if (!list) {
          list = el(/^\s*\d/.test(line) ? 'ol' : 'ul');
          out.push(list);
        }
        const item = el('li');
        inline(item, li[1]);
        list.append(item);
      } else if (!line.trim()) {
        flush();
      } else {
        list = null;
        para.push(line);
      }
    }
    flush();
    target.replaceChildren(...out);
  }

  // -- the conversation ---------------------------------------------------------

  function addMessage(role, text) {
    const li = el('li', role);
    const who = el('div', 'who');
    who.append(el('span', null, role === 'user' ? 'You' : 'Assistant'));
    const body = el('div', 'body');
    li.append(who, body);
    markdown(body, text);
    $('messages').append(li);
    li.scrollIntoView({ block: 'end' });
    return {
      li,
      set(t) {
        markdown(body, t);
        li.scrollIntoView({ block: 'end' });
      },
      mark(cls, label, test) {
        const m = el('span', 'mark ' + cls, label);
        if (test) m.dataset.test = test;
        who.append(m);
      },
    };
  }

  function parseSse(buffer, onData) {
    // Returns what is left after the last complete event.
    let idx;
    while ((idx = buffer.indexOf('\n\n')) >= 0) {
      const event = buffer.slice(0, idx);
      buffer = buffer.slice(idx + 2);
      const data = event
        .split('\n')
        .filter((l) => l.startsWith('data:'))
        .map((l) => l.slice(5).replace(/^ /, ''))
        .join('\n');
      if (data) onData(data);
    }
    return buffer;
  }

  async function recoverBinding(resp, requestHash, clientPubHex, address) {
    const key = resp.headers.get('X-Enclaved-E2EE-Response-Key');
    const sig = resp.headers.get('X-Enclaved-E2EE-Binding-Signature');
    if (!key && !sig) return null;
    if (!key || !sig || !/^04[0-9a-f]{128}$/.test(key)) throw new CheckFailed('response key binding: malformed');
    const text = `enclaved-e2ee-binding/1:${requestHash}:${clientPubHex}:${key}`;
    let signer = '';
    try {
      signer = C.recoverAddress(text, sig);
    } catch (e) {
      throw new CheckFailed('response key binding: bad signature');
    }
    if (signer !== address) throw new CheckFailed('response key binding: signed by another key');
    return key;
  }

  async function checkSignature(model, requestId, requestBytes, responseBytes, address) {
    const url = `${API}/tee/signature?model=${encodeURIComponent(model)}&request_id=${encodeURIComponent(requestId)}`;
    let doc = null;
    for (let attempt = 0; attempt < 10 && !doc; attempt++) {
      const r = await fetch(url, { cache: 'no-store' });
      if (r.ok) doc = await r.json();
      else if (r.status === 404) await new Promise((ok) => setTimeout(ok, 200));
      else break;
    }
    if (!doc) throw new CheckFailed('signature: the node has none for this answer');
    const text = C.sha256Hex(requestBytes) + ':' + C.sha256Hex(responseBytes);
    if (doc.text !== text && !String(doc.text).endsWith(':' + text)) {
      throw new CheckFailed('signature: the node signed other bytes than this page sent and received');
    }
    let signer = '';
    try {
      signer = C.recoverAddress(doc.text, doc.signature);
    } catch (e) {
      throw new CheckFailed('signature: malformed');
    }
    if (signer !== address) throw new CheckFailed('signature: not by the attested key');
  }

  async function send(prompt) {
    const model = state.model;
    const privacy = privacyOf(model);
    state.history.push({ role: 'user', content: prompt });
    addMessage('user', prompt);
    const answer = addMessage('assistant', '');
    answer.li.setAttribute('aria-busy', 'true');
    const abort = new AbortController();
    state.abort = abort;
    setBusy(true);
    let text = '';
    try {
      let att = null;
      if (MODE === 'node' && privacy !== 'none') att = await attested(model);
      let retried = false;
      for (;;) {
        const headers = { 'Content-Type': 'application/json' };
        let messages = state.history;
        let session = null;
        if (MODE === 'node' && privacy === 'e2ee') {
          session = C.newKeyPair();
          messages = [];
          for (const m of foldHistory(state.history)) {
            messages.push(m.role === 'user' || m.role === 'system'
              ? { role: m.role, content: await seal(m.content, att.signingKey) } : m);
          }
          headers['X-Venice-TEE-Client-Pub-Key'] = hex(session.publicKey);
          headers['X-Venice-TEE-Model-Pub-Key'] = att.signingKeyHex;
          headers['X-Venice-TEE-Signing-Algo'] = 'ecdsa';
        }
        const requestBytes = enc.encode(JSON.stringify({ model: model.id, messages, stream: true }));
        const resp = await fetch(`${API}/chat/completions`, {
          method: 'POST', headers, body: requestBytes, signal: abort.signal, cache: 'no-store',
        });
        if (resp.status === 421 && session && !retried) {
          // The node's key changed: attest again, once, without a word.
          retried = true;
          state.attesting = null;
          att = await attested(model);
          continue;
        }
        if (!resp.ok) {
          let msg = `the node answered ${resp.status}`;
          try {
            msg = (await resp.json()).error.message || msg;
          } catch (e) { /* keep the status */ }
          throw new Error(msg);
        }
        let boundKey = null;
        if (session) {
          boundKey = await recoverBinding(resp, C.sha256Hex(requestBytes), hex(session.publicKey), att.address);
          if (boundKey) answer.mark('ok', 'sealed to you ✓', 'bound');
        }
        const open = session ? opener(session.secret, boundKey) : null;
        const reader = resp.body.getReader();
        const chunks = [];
        const streamDec = new TextDecoder();
        let buffer = '';
        let requestId = '';
        let done = false;
        const pending = [];
        for (;;) {
          const { value, done: end } = await reader.read();
          if (end) break;
          chunks.push(value);
          buffer = parseSse(buffer + streamDec.decode(value, { stream: true }), (data) => pending.push(data));
          while (pending.length) {
            const data = pending.shift();
            if (data === '[DONE]') {
              done = true;
              continue;
            }
            const obj = JSON.parse(data);
            if (obj.error) throw new Error(obj.error.message || 'the node failed mid-answer');
            if (obj.id) requestId = obj.id;
            for (const choice of obj.choices || []) {
              const c = (choice.delta || {}).content;
              if (typeof c === 'string' && c) text += open ? await open(c) : c;
              const r = (choice.delta || {}).reasoning_content;
              if (open && typeof r === 'string' && r) await open(r);
            }
            answer.set(text);
          }
        }
        if (!done) throw new Error('the answer ended before [DONE]');
        state.history.push({ role: 'assistant', content: text });
        if (session) answer.mark('ok', 'decrypted in this browser ✓', 'e2ee');
        if (MODE === 'proxy') {
          answer.mark('ok', 'verified and signed ✓ (by your enclaved proxy)', 'signed');
        } else if (privacy !== 'none') {
          const all = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
          let off = 0;
          for (const c of chunks) {
            all.set(c, off);
            off += c.length;
          }
          await checkSignature(model.id, requestId, requestBytes, all, att.address);
          answer.mark('ok', 'signed ✓', 'signed');
        } else {
          answer.mark('bad', 'not private: no TEE', 'plain');
        }
        break;
      }
    } catch (e) {
      if (e && e.name === 'AbortError') {
        answer.mark('bad', 'stopped (not signed)', 'stopped');
        if (text) state.history.push({ role: 'assistant', content: text });
      } else if (e instanceof CheckFailed) {
        // Fail closed: nothing of a refused answer stays on screen.
        answer.set('');
        answer.mark('bad', 'refused ✗', 'refused');
        state.blocked = true;
        state.attesting = null;
        showError(`Verification failed, chat stopped: ${e.message}. Start a new chat to attest again.`);
      } else {
        answer.mark('bad', 'error', 'error');
        showError(`Error: ${e && e.message ? e.message : e}`);
      }
    } finally {
      answer.li.removeAttribute('aria-busy');
      state.abort = null;
      setBusy(false);
    }
  }

  function setBusy(busy) {
    $('send').disabled = busy || state.blocked;
    $('stop').disabled = !busy;
    $('prompt').readOnly = busy;
  }

  function newChat() {
    if (state.abort) state.abort.abort();
    state.history = [];
    state.blocked = false;
    state.attesting = null;
    $('messages').replaceChildren();
    showError('');
    setBusy(false);
    $('prompt').focus();
    if (MODE === 'node' && state.model && privacyOf(state.model) !== 'none') {
      const model = state.model;
      attested(model).catch((e) => state.model === model && refuse(e));
    }
  }

  function selectModel() {
    state.model = state.models.find((m) => m.id === $('model').value) || null;
    const p = privacyOf(state.model);
    const badge = $('privacy');
    badge.className = 'badge ' + p;
    badge.textContent = { e2ee: 'end-to-end encrypted (e2ee)', tee: 'TEE, not encrypted in transit (tee)', none: 'not private (none)' }[p];
    $('checks').replaceChildren();
    $('measurements').replaceChildren();
    $('node-checks').replaceChildren();
    $('tee-banner').hidden = true;
    $('tee-flag').hidden = true;
    newChat();
  }

  async function init() {
    if (MODE === 'proxy') {
      $('node-title').textContent = 'Verified by your enclaved proxy (your own machine)';
      renderChecks($('checks'), [['info', 'this page talks to your local enclaved proxy, which attests the node, encrypts and checks every signature']]);
    }
    try {
      const r = await fetch(`${API}/models`, { cache: 'no-store' });
      state.models = (await r.json()).data || [];
    } catch (e) {
      showError('Could not list the models.');
      return;
    }
    const select = $('model');
    for (const m of state.models) {
      const o = el('option', null, `${m.id} — ${privacyOf(m)}`);
      o.value = m.id;
      select.append(o);
    }
    const first = state.models.find((m) => privacyOf(m) === 'e2ee') || state.models[0];
    if (first) select.value = first.id;
    selectModel();
    document.body.dataset.ready = 'true';
  }

  $('composer').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const prompt = $('prompt').value.trim();
    if (!prompt || state.abort || state.blocked || !state.model) return;
    $('prompt').value = '';
    showError('');
    send(prompt);
  });
  $('prompt').addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      $('composer').requestSubmit();
    } else if (ev.key === 'Escape' && state.abort) {
      state.abort.abort();
    }
  });
  $('stop').addEventListener('click', () => state.abort && state.abort.abort());
  $('new-chat').addEventListener('click', newChat);
  $('model').addEventListener('change', selectModel);
  // For the tests (and the curious): the page's own reading of a quote.
  window.EnclavedPage = Object.freeze({
    async inspectQuote(text) {
      const q = parseQuote(bytesFromQuote(text));
      return {
        version: q.version,
        debug: q.debug,
        mrtd: hex(q.mrtd),
        rtmrs: q.rtmrs.map(hex),
        reportData: hex(q.reportData),
        signatureValid: await quoteSignatureValid(q),
      };
    },
  });
  init();
})();
