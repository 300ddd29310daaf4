// The web console. Calls the public JSON API of this origin with the credentials the user
// typed, kept in memory and sessionStorage (never in a URL or a cookie). Everything that
// came from the API is written with textContent or input values, never parsed as markup,
// and no URL from storage ever becomes a link or any other navigation target.
'use strict';

(function () {
  const $ = (id) => document.getElementById(id);
  const STORAGE_KEY = 'person-webhooks-console';

  /** The signed-in principal: {kind: 'application'|'client', id, secret, token}. */
  let session = null;
  let syncTimer = null;

  // ------------------------------------------------------------------ API

  /** One API call; resolves to {status, ok, json}; a network failure is status 0. */
  async function call(method, path, options) {
    const opts = options || {};
    const headers = { Accept: 'application/json' };
    let body;
    if (opts.json !== undefined) {
      headers['Content-Type'] = 'application/json';
      body = JSON.stringify(opts.json);
    } else if (opts.form) {
      headers['Content-Type'] = 'application/x-www-form-urlencoded';
      body = new URLSearchParams(opts.form).toString();
    }
    if (opts.apiKey !== undefined) headers['x-access-token'] = opts.apiKey;
    if (opts.bearer !== undefined) headers.Authorization = 'Bearer ' + opts.bearer;
    let response;
    try {
      response = await fetch(path, {
        method, headers, body, credentials: 'omit', cache: 'no-store', redirect: 'error',
        referrerPolicy: 'no-referrer',
      });
    } catch (e) {
      return { status: 0, ok: false, json: null, message: 'cannot reach the API (' + e.message + ')' };
    }
    let json = null;
    const text = await response.text();
    if (text) {
      try { json = JSON.parse(text); } catch (e) { json = null; }
    }
    const message = json && typeof json.error_description === 'string'
      ? json.error_description
      : 'HTTP ' + response.status;
    return { status: response.status, ok: response.ok, json, message, code: json && json.error };
  }

  const seg = (text) => encodeURIComponent(text);

  /** An application call with its API key. */
  function appCall(method, suffix, json) {
    const path = '/application/' + seg(session.id) + suffix;
    return call(method, path, { apiKey: session.secret, json });
  }

  /** A client call with its bearer token; a fresh token once when it expired. */
  async function clientCall(method, path, json) {
    let r = await call(method, path, { bearer: session.token, json });
    if (r.status === 401 && r.code === 'invalid_token') {
      const t = await exchange(session.id, session.secret);
      if (!t.ok) return t;
      session.token = t.json.access_token;
      r = await call(method, path, { bearer: session.token, json });
    }
    return r;
  }

  function exchange(clientId, clientSecret) {
    return call('POST', '/oauth/token', {
      form: { client_id: clientId, client_secret: clientSecret, grant_type: 'client_credentials', scope: '/webhook' },
    });
  }

  // ------------------------------------------------------------------ helpers

  function say(id, text, good) {
    const el = $(id);
    el.textContent = text || '';
    el.classList.toggle('ok', good === true);
    el.classList.toggle('bad', good === false);
  }

  function cell(row, label, text, className) {
    const td = document.createElement('td');
    td.dataset.label = label;
    td.textContent = text === null || text === undefined ? '—' : String(text);
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  function button(parent, text, onClick, label) {
    const b = document.createElement('button');
    b.type = 'button';
    b.textContent = text;
    if (label) b.setAttribute('aria-label', label);
    b.addEventListener('click', onClick);
    parent.appendChild(b);
    return b;
  }

  async function busy(el, work) {
    el.disabled = true;
    try { return await work(); } finally { el.disabled = false; }
  }

  /** Marks `el` aria-busy while `work` reloads it: screen readers wait for the new
   *  content, and so can anyone else watching the page. */
  async function loading(el, work) {
    el.setAttribute('aria-busy', 'true');
    try { return await work(); } finally { el.removeAttribute('aria-busy'); }
  }

  const when = (iso) => {
    if (!iso) return '—';
    const d = new Date(iso);
    return isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
  };

  function lastStatus(attempt) {
    if (!attempt) return '—';
    if (attempt.outcome === 'acked') return (attempt.status === null ? '' : attempt.status + ' ') + 'acked';
    if (attempt.status !== null && attempt.status !== undefined) return attempt.status + ' failed';
    return String(attempt.outcome).replace(/_/g, ' ');
  }

  // ------------------------------------------------------------------ session

  function remember() {
    sessionStorage.setItem(STORAGE_KEY, JSON.stringify({ kind: session.kind, id: session.id, secret: session.secret }));
  }

  function show(kind) {
    $('sign-in').hidden = kind !== null;
    $('application').hidden = kind !== 'application';
    $('client').hidden = kind !== 'client';
    $('who').hidden = kind === null;
    $('who-text').textContent = kind === null ? '' : (kind === 'application' ? 'Application ' : 'Client ') + session.id;
  }

  function signOut() {
    if (syncTimer) clearTimeout(syncTimer);
    syncTimer = null;
    session = null;
    sessionStorage.removeItem(STORAGE_KEY);
    for (const id of ['app-key', 'client-secret', 'new-secret']) $(id).value = '';
    $('secret-box').hidden = true;
    show(null);
  }

  async function signInApplication(id, key) {
    if (!id || !key) return 'Enter the application ID and the API key.';
    const r = await call('GET', '/application/' + seg(id), { apiKey: key });
    if (r.status === 401) return 'Sign-in failed: the application ID or API key is wrong (' + r.message + ').';
    if (r.status === 403) return 'Sign-in failed: this API key belongs to another application (' + r.message + ').';
    if (!r.ok) return 'Sign-in failed: ' + r.message;
    session = { kind: 'application', id, secret: key };
    remember();
    $('application-id').textContent = id;
    renderApplication(r.json);
    show('application');
    loadDeliveries();
    return null;
  }

  async function signInClient(id, secret) {
    if (!id || !secret) return 'Enter the client ID and the client secret.';
    const t = await exchange(id, secret);
    if (t.status === 401) return 'Sign-in failed: the client ID or client secret is wrong (' + t.message + ').';
    if (!t.ok) return 'Sign-in failed: ' + t.message;
    session = { kind: 'client', id, secret, token: t.json.access_token };
    remember();
    $('client-name').textContent = id;
    show('client');
    loadClientWebhooks();
    return null;
  }

  // ------------------------------------------------------------------ application

  /** Fills the webhook form from the stored settings (after sign-in and after Save). */
  function renderApplication(app) {
    const webhook = (app && app.webhook) || {};
    $('webhook-url').value = webhook.url || '';
    $('webhook-interval').value = webhook.requestIntervalMs === undefined ? '' : String(webhook.requestIntervalMs);
    $('webhook-key').value = '';
    $('webhook-key-help').textContent = webhook.signingKey
      ? 'Current key: ' + webhook.signingKey + '. Leave empty to keep it.'
      : 'No signing key is set.';
    renderHealth(webhook);
  }

  /** Shows the endpoint's health: why it is disabled, and Re-enable. */
  function renderHealth(webhook) {
    const health = webhook.health || { status: 'enabled' };
    const status = $('health-status');
    status.textContent = webhook.url ? 'Webhook ' + health.status : 'No webhook is set.';
    status.className = webhook.url ? 'status-' + health.status : '';
    const disabled = health.status === 'disabled';
    $('re-enable').hidden = !disabled;
    $('health-reason').hidden = !disabled && !health.failingSince;
    const parts = [];
    if (disabled) parts.push('Disabled: ' + (health.disabledReason || 'no reason given') + (health.disabledAt ? ' (since ' + when(health.disabledAt) + ')' : '') + '.');
    if (health.failingSince) parts.push('Failing since ' + when(health.failingSince) + (health.lastError ? ': ' + health.lastError : '') + '.');
    $('health-reason').textContent = parts.join(' ');
  }

  /** Reads the application again and shows its health; leaves what is typed in the form. */
  async function reloadApplication() {
    const r = await appCall('GET', '');
    if (r.ok) renderHealth((r.json && r.json.webhook) || {});
    return r;
  }

  const FIELD_ERRORS = { url: 'webhook-url-error', signingKey: 'webhook-key-error', requestIntervalMs: 'webhook-interval-error' };

  async function saveWebhook(event) {
    event.preventDefault();
    for (const id of Object.values(FIELD_ERRORS)) say(id, '');
    say('webhook-form-result', '');
    const webhook = { url: $('webhook-url').value.trim() };
    const key = $('webhook-key').value;
    if (key !== '') webhook.signingKey = key;
    const interval = $('webhook-interval').value.trim();
    if (interval !== '') {
      if (!/^\d+$/.test(interval)) {
        say('webhook-interval-error', 'Enter a whole number of milliseconds (0 or more).');
        return;
      }
      webhook.requestIntervalMs = Number(interval);
    }
    const r = await busy(event.submitter || $('webhook-form'), () => appCall('PATCH', '', { webhook }));
    if (!r.ok) {
      const field = Object.keys(FIELD_ERRORS).find((f) => r.message.startsWith('webhook.' + f));
      say(field ? FIELD_ERRORS[field] : 'webhook-form-result', r.message, false);
      return;
    }
    renderApplication(r.json);
    say('webhook-form-result', webhook.url === '' ? 'Saved: the webhook is removed.' : 'Saved.', true);
  }

  async function runTest(event) {
    say('test-result', 'Sending…');
    const r = await busy(event.currentTarget, () => appCall('POST', '/webhook/test'));
    if (!r.ok) { say('test-result', 'Run Test failed: ' + r.message, false); return; }
    const t = r.json;
    const status = t.status === null ? 'no answer' : 'status ' + t.status;
    const text = (t.acknowledged ? 'Acknowledged' : 'Not acknowledged') + ': ' + status + ', ' + t.latencyMs + ' ms' +
      (t.error ? ' (' + t.error + ')' : '') + ' — message ' + t.messageId;
    say('test-result', text, t.acknowledged === true);
    reloadApplication();
  }

  function showSync(progress) {
    const done = progress.state !== 'running';
    const handled = (progress.delivered || 0) + (progress.failed || 0);
    let percent = 0;
    if (progress.state === 'completed') percent = 100;
    else if (progress.scanned > 0) percent = Math.min(99, Math.floor((100 * handled) / progress.scanned));
    const bar = $('sync-progress');
    bar.hidden = false;
    bar.setAttribute('aria-valuenow', String(percent));
    bar.setAttribute('aria-valuetext', percent + ' %');
    $('sync-bar').style.width = percent + '%';
    const counts = 'scanned ' + progress.scanned + ', delivered ' + progress.delivered + ', failed ' + progress.failed +
      (progress.queued ? ', queued ' + progress.queued : '');
    if (!done) say('sync-result', 'Sync running: ' + counts + '.');
    else say('sync-result', 'Sync ' + progress.state + ': ' + counts + '.', progress.state === 'completed' && !progress.failed);
  }

  async function syncData(event) {
    if (syncTimer) clearTimeout(syncTimer);
    const started = await busy(event.currentTarget, () => appCall('POST', '/webhook/sync'));
    if (!started.ok) { say('sync-result', 'Sync Data failed: ' + started.message, false); return; }
    showSync(started.json);
    const id = started.json.syncId;
    const owner = session;
    const poll = async () => {
      if (session !== owner) return;
      const r = await appCall('GET', '/webhook/sync/' + seg(id));
      if (!r.ok) { say('sync-result', 'Cannot read the sync\'s progress: ' + r.message, false); return; }
      showSync(r.json);
      if (r.json.state === 'running') syncTimer = setTimeout(poll, 300);
      else loadDeliveries();
    };
    syncTimer = setTimeout(poll, 300);
  }

  async function rotateSecret(event) {
    const r = await busy(event.currentTarget, () => appCall('POST', '/webhook/secret'));
    if (!r.ok) { say('secret-result', 'Rotate secret failed: ' + r.message, false); return; }
    $('new-secret').value = r.json.secret;
    $('secret-box').hidden = false;
    say('secret-result', 'New secret in use. The previous one keeps signing until ' + when(r.json.previousSecretValidUntil) + '. Copy it now: it is not shown again.', true);
  }

  async function copySecret() {
    const input = $('new-secret');
    try {
      await navigator.clipboard.writeText(input.value);
      say('secret-result', 'Copied.', true);
    } catch (e) {
      input.select();
      const copied = document.execCommand && document.execCommand('copy');
      say('secret-result', copied ? 'Copied.' : 'Select the secret and copy it (the browser refused).', copied);
    }
  }

  async function reEnable(event) {
    const r = await busy(event.currentTarget, () => appCall('PATCH', '', { webhook: { enabled: true } }));
    if (!r.ok) { say('re-enable-result', 'Re-enable failed: ' + r.message, false); return; }
    renderApplication(r.json);
    say('re-enable-result', 'Re-enabled.', true);
  }

  /** Attempts (newest first) grouped by message: one row per message, its latest attempt first. */
  function byMessage(attempts) {
    const messages = new Map();
    for (const a of attempts) {
      const m = messages.get(a.messageId);
      if (m) m.count += 1;
      else messages.set(a.messageId, { latest: a, count: 1 });
    }
    return [...messages.values()];
  }

  /** Refreshes the webhook's health and the deliveries table. */
  async function refresh() {
    await loading($('deliveries'), async () => {
      await reloadApplication();
      await loadDeliveries();
    });
  }

  async function loadDeliveries() {
    if (!session || session.kind !== 'application') return;
    const r = await appCall('GET', '/webhook/attempts?limit=100');
    if (!r.ok) { say('deliveries-result', 'Cannot list deliveries: ' + r.message, false); return; }
    const failuresOnly = $('failures-only').checked;
    const rows = byMessage(r.json.data).filter((m) => !failuresOnly || m.latest.outcome !== 'acked');
    const body = $('deliveries').tBodies[0];
    body.replaceChildren();
    for (const m of rows) {
      const a = m.latest;
      const tr = document.createElement('tr');
      tr.className = a.outcome === 'acked' ? 'acked' : 'failed';
      tr.dataset.messageId = a.messageId;
      cell(tr, 'Time', when(a.timestamp));
      cell(tr, 'Message ID', a.messageId, 'message');
      cell(tr, 'Attempts', m.count);
      const last = cell(tr, 'Last status', lastStatus(a), 'last');
      if (a.outcome !== 'acked' && a.response) last.title = a.response;
      cell(tr, 'Latency', a.latencyMs + ' ms');
      const actions = cell(tr, 'Actions', '');
      actions.textContent = '';
      button(actions, 'Redeliver', (e) => redeliver(e, a.messageId), 'Redeliver ' + a.messageId);
      button(actions, 'Details', () => showMessage(a.messageId), 'Details of ' + a.messageId);
      body.appendChild(tr);
    }
    $('deliveries-empty').hidden = rows.length > 0;
    say('deliveries-result', r.json.nextCursor ? 'The latest 100 attempts, by message.' : '');
  }

  async function redeliver(event, messageId) {
    const r = await busy(event.currentTarget, () => appCall('POST', '/webhook/messages/' + seg(messageId) + '/redeliver'));
    if (!r.ok) { say('deliveries-result', 'Redeliver failed: ' + r.message, false); return; }
    say('deliveries-result', 'Redelivery of ' + messageId + ' queued.', true);
    setTimeout(loadDeliveries, 1000);
  }

  async function showMessage(messageId) {
    const r = await appCall('GET', '/webhook/messages/' + seg(messageId));
    if (!r.ok) { say('deliveries-result', 'Cannot read the message: ' + r.message, false); return; }
    $('message-id').textContent = messageId;
    $('message-body').textContent = JSON.stringify(r.json.person !== undefined ? r.json.person : r.json, null, 2);
    $('message-box').hidden = false;
  }

  async function recover(event) {
    event.preventDefault();
    const value = $('recover-since').value;
    const since = new Date(value);
    if (!value || isNaN(since.getTime())) { say('recover-result', 'Choose a date and time.', false); return; }
    const r = await busy(event.submitter || event.currentTarget, () => appCall('POST', '/webhook/recover', { since: since.toISOString() }));
    if (!r.ok) { say('recover-result', 'Recover failed: ' + r.message, false); return; }
    say('recover-result', r.json.messages + ' failed message(s) since ' + when(r.json.since) + ' queued again' +
      (r.json.complete ? '.' : '; more are left: recover again later.'), true);
    setTimeout(loadDeliveries, 1000);
  }

  // ------------------------------------------------------------------ client

  const webhookPath = (record, callback) => '/' + seg(record) + '/webhook/' + seg(callback);

  function loadClientWebhooks() {
    return loading($('client-webhooks'), listClientWebhooks);
  }

  async function listClientWebhooks() {
    if (!session || session.kind !== 'client') return;
    const r = await clientCall('GET', '/webhooks');
    if (!r.ok) { say('client-webhooks-result', 'Cannot list webhooks: ' + r.message, false); return; }
    const webhooks = r.json.data;
    const attempts = await Promise.all(webhooks.map((w) => clientCall('GET', '/webhooks/' + seg(w.id) + '/attempts?limit=100')));
    const body = $('client-webhooks').tBodies[0];
    body.replaceChildren();
    webhooks.forEach((w, i) => {
      const tr = document.createElement('tr');
      tr.dataset.webhookId = w.id;
      cell(tr, 'Record', w.record, 'record');
      cell(tr, 'Callback', w.callback, 'callback');
      let health = w.status;
      if (w.status === 'disabled') health += ': ' + (w.disabledReason || 'no reason given');
      else if (w.failingSince) health += ', failing since ' + when(w.failingSince);
      cell(tr, 'Health', health, 'health');
      const page = attempts[i];
      let summary = 'cannot list: ' + page.message;
      if (page.ok) {
        const list = page.json.data;
        summary = list.length === 0 ? 'none yet' : list.length + (page.json.nextCursor ? '+' : '') + ', last ' + lastStatus(list[0]) + ' at ' + when(list[0].timestamp);
      }
      cell(tr, 'Attempts', summary, 'attempts');
      const actions = cell(tr, 'Actions', '');
      actions.textContent = '';
      if (w.status === 'disabled') button(actions, 'Re-enable', (e) => registerAgain(e, w), 'Re-enable the webhook of ' + w.record);
      button(actions, 'Unregister', (e) => unregister(e, w), 'Unregister the webhook of ' + w.record);
      body.appendChild(tr);
    });
    $('client-webhooks-empty').hidden = webhooks.length > 0;
  }

  async function register(event) {
    event.preventDefault();
    for (const id of ['record-id-error', 'callback-url-error', 'register-result']) say(id, '');
    const record = $('record-id').value.trim();
    const callback = $('callback-url').value.trim();
    if (!record) { say('record-id-error', 'Enter the record ID.'); return; }
    if (!callback) { say('callback-url-error', 'Enter the callback URL.'); return; }
    const r = await busy(event.submitter || event.currentTarget, () => clientCall('PUT', webhookPath(record, callback)));
    if (!r.ok) {
      const target = { invalid_record_id: 'record-id-error', unknown_record: 'record-id-error', invalid_callback_url: 'callback-url-error', callback_url_query: 'callback-url-error' }[r.code];
      say(target || 'register-result', r.message, false);
      return;
    }
    say('register-result', r.status === 201 ? 'Registered.' : 'Already registered (enabled).', true);
    loadClientWebhooks();
  }

  async function registerAgain(event, w) {
    const r = await busy(event.currentTarget, () => clientCall('PUT', webhookPath(w.record, w.callback)));
    say('client-webhooks-result', r.ok ? 'Re-enabled.' : 'Re-enable failed: ' + r.message, r.ok);
    loadClientWebhooks();
  }

  async function unregister(event, w) {
    const r = await busy(event.currentTarget, () => clientCall('DELETE', webhookPath(w.record, w.callback)));
    say('client-webhooks-result', r.ok ? 'Unregistered the webhook of ' + w.record + '.' : 'Unregister failed: ' + r.message, r.ok);
    loadClientWebhooks();
  }

  // ------------------------------------------------------------------ wiring

  function onSubmit(formId, errorId, signIn, idField, secretField) {
    $(formId).addEventListener('submit', async (event) => {
      event.preventDefault();
      say(errorId, '');
      const error = await busy(event.submitter || $(formId), () => signIn($(idField).value.trim(), $(secretField).value));
      if (error) say(errorId, error, false);
      else $(secretField).value = '';
    });
  }

  document.addEventListener('DOMContentLoaded', async () => {
    onSubmit('app-sign-in', 'app-sign-in-error', signInApplication, 'app-id', 'app-key');
    onSubmit('client-sign-in', 'client-sign-in-error', signInClient, 'client-id', 'client-secret');
    $('sign-out').addEventListener('click', signOut);
    $('webhook-form').addEventListener('submit', saveWebhook);
    $('run-test').addEventListener('click', runTest);
    $('sync-data').addEventListener('click', syncData);
    $('rotate-secret').addEventListener('click', rotateSecret);
    $('copy-secret').addEventListener('click', copySecret);
    $('re-enable').addEventListener('click', reEnable);
    $('refresh-deliveries').addEventListener('click', refresh);
    $('failures-only').addEventListener('change', loadDeliveries);
    $('recover-form').addEventListener('submit', recover);
    $('register-form').addEventListener('submit', register);
    $('refresh-webhooks').addEventListener('click', loadClientWebhooks);

    let saved = null;
    try { saved = JSON.parse(sessionStorage.getItem(STORAGE_KEY) || 'null'); } catch (e) { saved = null; }
    if (saved && typeof saved.id === 'string' && typeof saved.secret === 'string') {
      const error = saved.kind === 'client'
        ? await signInClient(saved.id, saved.secret)
        : await signInApplication(saved.id, saved.secret);
      if (error) { sessionStorage.removeItem(STORAGE_KEY); say(saved.kind === 'client' ? 'client-sign-in-error' : 'app-sign-in-error', error, false); }
    }
  });
})();
