// Drives a published Segment-protocol Node client, unmodified, against Sori's
// Segment-compatible ingestion API (`POST /v1/batch`), then reads the results back
// through the Open API.
//
//   CLIENT=segment|rudder SORI_URL=http://127.0.0.1:PORT SORI_WRITE_KEY=… \
//   SORI_ACCESS_KEY=… SORI_ACCESS_SECRET=… node tests/js/segment.mjs
//
// Optional: SORI_POLL_MS (how long to wait for a write to become visible, default 5000),
// SORI_RUN (suffix for member ids, to rerun against a server that kept an earlier run's data).
//
// Exit 0 when every check passes; otherwise each failure (expected vs actual) goes to
// stderr and the exit status is 1. Status 2 means the script was misconfigured.
//
// What the two libraries send (both to `${SORI_URL}/v1/batch`, both with
// `Authorization: Basic base64("<writeKey>:")`):
//   segment (@segment/analytics-node 3.1.0): `Content-Type: application/json`, plain body
//     {"batch": [msg…], "writeKey": "…", "sentAt": "…"}; each msg has `timestamp` (always),
//     `messageId`, `type`, `context.library`, `integrations`, `_metadata`.
//   rudder (@rudderstack/rudder-sdk-node 3.0.13): `Content-Encoding: gzip` and
//     `Content-Type: application/x-www-form-urlencoded` (axios' default for a Buffer), body
//     {"batch": [msg…], "timestamp": "…", "sentAt": "…"} with no writeKey; each msg has
//     `originalTimestamp` (always), `timestamp` only when the caller gave one, `messageId`,
//     `sentAt`, `channel: "server"`, `context.library`, `_metadata`, and identify traits are
//     copied into `context.traits` too.

import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { inspect } from 'node:util';

const CLIENT = process.env.CLIENT;
const SORI_URL = process.env.SORI_URL;
const WRITE_KEY = process.env.SORI_WRITE_KEY;
const ACCESS_KEY = process.env.SORI_ACCESS_KEY;
const ACCESS_SECRET = process.env.SORI_ACCESS_SECRET;
const POLL_MS = Number(process.env.SORI_POLL_MS ?? 5000);
const RUN = process.env.SORI_RUN ? `-${process.env.SORI_RUN}` : '';

{
  const missing = Object.entries({ SORI_URL, SORI_WRITE_KEY: WRITE_KEY, SORI_ACCESS_KEY: ACCESS_KEY, SORI_ACCESS_SECRET: ACCESS_SECRET })
    .filter(([, v]) => !v)
    .map(([k]) => k);
  if (!['segment', 'rudder'].includes(CLIENT)) missing.push('CLIENT (segment|rudder)');
  if (missing.length) {
    console.error(`segment.mjs: missing or invalid environment: ${missing.join(', ')}`);
    process.exit(2);
  }
}

const BASE = SORI_URL.replace(/\/+$/, '');
const id = (name) => `${CLIENT}${RUN}-${name}`;

// ---------------------------------------------------------------------------------------
// The library under test, behind one small interface:
//   send(method, message) → Promise<null | Error>, settled when the library reports the
//                           delivery outcome of that message (its per-call callback);
//   flush()               → Promise, resolved when everything queued so far was posted;
//   close()               → Promise.
// Both libraries are configured so that nothing leaves before flush() (large flushAt, long
// flushInterval) and so that a broken server fails the run quickly (few retries).
// ---------------------------------------------------------------------------------------

async function makeClient() {
  if (CLIENT === 'segment') {
    const { Analytics } = await import('@segment/analytics-node');
    // The library builds its URL as `new URL(path, host)`, so a path prefix in SORI_URL
    // must go into `path`.
    const u = new URL(`${BASE}/`);
    const analytics = new Analytics({
      writeKey: WRITE_KEY,
      host: u.origin,
      path: `${u.pathname}v1/batch`,
      flushAt: 100,
      flushInterval: 60_000,
      maxRetries: 2,
      httpRequestTimeout: 10_000,
    });
    // Delivery failures are also emitted as 'error'; the per-call callback reports them too.
    analytics.on('error', () => {});
    return {
      send: (method, message) =>
        new Promise((resolve) => analytics[method](message, (err) => resolve(err ?? null))),
      flush: () => analytics.flush({ timeout: 30_000 }),
      close: () => analytics.closeAndFlush({ timeout: 10_000 }),
    };
  }

  const { default: RudderAnalytics } = await import('@rudderstack/rudder-sdk-node');
  // URL is `${dataPlaneUrl}${path}`; path defaults to /v1/batch. Bodies are gzipped (default).
  const analytics = new RudderAnalytics(WRITE_KEY, {
    dataPlaneUrl: BASE,
    flushAt: 100,
    flushInterval: 60_000,
    retryCount: 2,
    timeout: 10_000,
    logLevel: 'error',
    // Without an errorHandler a failed background flush is an unhandled rejection; with one,
    // the failure still reaches each message's callback.
    errorHandler: () => {},
  });
  return {
    send: (method, message) =>
      new Promise((resolve) => analytics[method](message, (err) => resolve(err ?? null))),
    flush: () => analytics.flush(),
    close: () => analytics.flush(),
  };
}

// Fail fast (rather than through every check's retries) when the server is not there.
try {
  await fetch(`${BASE}/open/v5/events/catalog`, { headers: { 'x-access-key': ACCESS_KEY, 'x-access-secret': ACCESS_SECRET } });
} catch (err) {
  console.error(`segment.mjs: cannot reach ${BASE}: ${err.cause?.message ?? err.message}`);
  process.exit(1);
}

const client = await makeClient();

/** Queues `calls` ([method, message] pairs) in order, flushes once, and requires that the
 *  library reports every one of them delivered. */
async function deliver(...calls) {
  const outcomes = calls.map(([method, message]) => client.send(method, message));
  await client.flush();
  const errors = await Promise.all(outcomes);
  errors.forEach((err, i) => {
    if (err) {
      const [method, message] = calls[i];
      const status = err.response?.status ? ` (HTTP ${err.response.status})` : '';
      throw new Error(
        `${CLIENT} ${method}(${message.event ?? message.name ?? message.userId ?? ''}) not delivered: ` +
          `expected success, got ${err.message ?? err}${status}`,
      );
    }
  });
}

// ---------------------------------------------------------------------------------------
// Open API helpers
// ---------------------------------------------------------------------------------------

async function api(path) {
  const res = await fetch(`${BASE}${path}`, {
    headers: { 'x-access-key': ACCESS_KEY, 'x-access-secret': ACCESS_SECRET, accept: 'application/json' },
  });
  const text = await res.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    body = text;
  }
  return { status: res.status, body };
}

async function getUser(memberId) {
  const { status, body } = await api(`/open/v5/users/@${encodeURIComponent(memberId)}`);
  assert.equal(status, 200, `GET /open/v5/users/@${memberId}: expected 200, got ${status} ${inspect(body)}`);
  assert.ok(body?.user?.id, `GET /open/v5/users/@${memberId}: no user.id in ${inspect(body)}`);
  return body.user;
}

async function getEvents(userId) {
  const { status, body } = await api(`/open/v5/users/${encodeURIComponent(userId)}/events?limit=100`);
  assert.equal(status, 200, `GET /open/v5/users/${userId}/events: expected 200, got ${status} ${inspect(body)}`);
  assert.ok(Array.isArray(body?.events), `GET /open/v5/users/${userId}/events: no events array in ${inspect(body)}`);
  return body.events;
}

async function eventsOf(memberId) {
  const user = await getUser(memberId);
  return { user, events: await getEvents(user.id) };
}

async function getCatalog() {
  const { status, body } = await api('/open/v5/events/catalog');
  assert.equal(status, 200, `GET /open/v5/events/catalog: expected 200, got ${status} ${inspect(body)}`);
  assert.ok(Array.isArray(body?.events), `GET /open/v5/events/catalog: no events array in ${inspect(body)}`);
  return body.events;
}

/** Retries `fn` until it stops throwing or SORI_POLL_MS passes (then rethrows its last error). */
async function eventually(fn) {
  const deadline = Date.now() + POLL_MS;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (Date.now() >= deadline) throw err;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

/** Milliseconds of an API time (epoch ms number or an RFC 3339 string). */
function ms(v, what) {
  const t = typeof v === 'number' ? v : typeof v === 'string' ? Date.parse(v) : NaN;
  assert.ok(Number.isFinite(t), `${what}: expected a time, got ${inspect(v)}`);
  return t;
}

function pick(obj, keys) {
  return Object.fromEntries(keys.map((k) => [k, obj?.[k]]));
}

function findOne(events, name, what) {
  const found = events.filter((e) => e.name === name);
  assert.ok(found.length > 0, `${what}: expected an event named ${inspect(name)}, got names ${inspect(events.map((e) => e.name))}`);
  return found[0];
}

// ---------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------

const failures = [];

async function check(title, fn) {
  try {
    await fn();
    console.log(`ok    ${CLIENT}: ${title}`);
  } catch (err) {
    failures.push({ title, err });
    console.log(`FAIL  ${CLIENT}: ${title}`);
  }
}

const m1 = id('m1');

await check('1 identify creates the member with name, email, plan and a normalised mobile number', async () => {
  await deliver([
    'identify',
    { userId: m1, traits: { name: '김민수', email: 'minsu@example.com', plan: 'pro', phone: '010-1234-5678' } },
  ]);
  await eventually(async () => {
    const user = await getUser(m1);
    assert.equal(user.memberId, m1, 'user.memberId');
    assert.deepEqual(
      pick(user.profile, ['name', 'email', 'plan', 'mobileNumber']),
      { name: '김민수', email: 'minsu@example.com', plan: 'pro', mobileNumber: '+821012345678' },
      'user.profile',
    );
  });
});

await check('2 track stores name, property, page and source; campaign fills the UTM fields; catalog knows it', async () => {
  const before = Date.now();
  await deliver([
    'track',
    {
      userId: m1,
      event: 'Order Completed',
      properties: { revenue: 39000, orderId: 'o-1', items: ['a', 'b'] },
      context: {
        page: { url: 'https://shop.example/checkout' },
        campaign: { source: 'newsletter', medium: 'email', name: 'winter' },
      },
    },
  ]);
  await eventually(async () => {
    const { user, events } = await eventsOf(m1);
    const e = findOne(events, 'Order Completed', `events of @${m1}`);
    assert.deepEqual(
      { name: e.name, userId: e.userId, property: e.property, page: e.page, source: e.source },
      {
        name: 'Order Completed',
        userId: user.id,
        property: { revenue: 39000, orderId: 'o-1', items: ['a', 'b'] },
        page: 'https://shop.example/checkout',
        source: 'segment',
      },
      'the Order Completed event',
    );
    const at = ms(e.createdAt, 'event createdAt');
    assert.ok(at >= before - 60_000 && at <= Date.now() + 60_000, `event createdAt: expected about now, got ${new Date(at).toISOString()}`);
    assert.deepEqual(
      pick(user.profile, ['utmSource', 'utmMedium', 'utmCampaign', 'lastUtmSource', 'lastUtmMedium', 'lastUtmCampaign']),
      {
        utmSource: 'newsletter',
        utmMedium: 'email',
        utmCampaign: 'winter',
        lastUtmSource: 'newsletter',
        lastUtmMedium: 'email',
        lastUtmCampaign: 'winter',
      },
      'UTM fields of the profile',
    );
    const entry = (await getCatalog()).find((c) => c.name === 'Order Completed');
    assert.ok(entry, 'catalog: expected an entry for Order Completed');
    assert.equal(entry.revenue, true, 'catalog Order Completed revenue');
    assert.ok(entry.count >= 1, `catalog Order Completed count: expected >= 1, got ${inspect(entry.count)}`);
  });
});

await check('3 page is stored as PageView on properties.url', async () => {
  await deliver(['page', { userId: m1, name: 'Home', properties: { url: 'https://shop.example/', title: 'Home' } }]);
  await eventually(async () => {
    const { events } = await eventsOf(m1);
    const views = events.filter((e) => e.name === 'PageView');
    assert.ok(views.length > 0, `events of @${m1}: expected a PageView, got names ${inspect(events.map((e) => e.name))}`);
    assert.deepEqual(
      pick(views[0], ['name', 'page', 'source']),
      { name: 'PageView', page: 'https://shop.example/', source: 'segment' },
      'the PageView event',
    );
  });
});

await check('4 a historical track keeps its time; a later one moves lastSeenAt only', async () => {
  const old = id('old');
  const T = new Date('2024-01-02T03:04:05Z');
  const { status } = await api(`/open/v5/users/@${encodeURIComponent(old)}`);
  assert.equal(status, 404, `@${old} must not exist before the test (rerun with SORI_RUN=<unique> against a used server)`);

  await deliver(['track', { userId: old, event: 'Old Order', properties: { revenue: 1000 }, timestamp: T }]);
  const createdAt = await eventually(async () => {
    const { user, events } = await eventsOf(old);
    const e = findOne(events, 'Old Order', `events of @${old}`);
    assert.equal(new Date(ms(e.createdAt, 'event createdAt')).toISOString(), T.toISOString(), 'Old Order createdAt');
    const created = ms(user.createdAt, 'user createdAt');
    assert.ok(created <= T.getTime(), `user createdAt: expected <= ${T.toISOString()}, got ${new Date(created).toISOString()}`);
    assert.equal(new Date(ms(user.lastSeenAt, 'user lastSeenAt')).toISOString(), T.toISOString(), 'user lastSeenAt');
    return user.createdAt;
  });

  const before = Date.now();
  await deliver(['track', { userId: old, event: 'Came Back' }]);
  await eventually(async () => {
    const { user, events } = await eventsOf(old);
    findOne(events, 'Came Back', `events of @${old}`);
    const seen = ms(user.lastSeenAt, 'user lastSeenAt');
    assert.ok(
      seen >= before - 60_000 && seen <= Date.now() + 60_000,
      `user lastSeenAt: expected about now (${new Date(before).toISOString()}), got ${new Date(seen).toISOString()}`,
    );
    assert.equal(user.createdAt, createdAt, 'user createdAt after a current track (unchanged)');
  });
});

await check('5 anonymous history is merged into the member identified with that anonymousId', async () => {
  const anon = id('anon-1');
  const m2 = id('m2');
  await deliver(['track', { anonymousId: anon, event: 'Browse', properties: { sku: 'p-1' } }]);
  await deliver(['identify', { userId: m2, anonymousId: anon, traits: { plan: 'free' } }]);
  await eventually(async () => {
    const { user, events } = await eventsOf(m2);
    assert.equal(user.profile?.plan, 'free', `@${m2} profile.plan`);
    const e = findOne(events, 'Browse', `events of @${m2}`);
    assert.deepEqual(pick(e, ['userId', 'property']), { userId: user.id, property: { sku: 'p-1' } }, 'the merged Browse event');
  });
});

await check('6 the same messageId twice stores one event', async () => {
  const messageId = `${CLIENT}-retry-${randomUUID()}`;
  const message = { userId: m1, event: 'Retried Track', properties: { retryOf: messageId }, messageId };
  await deliver(['track', message]);
  await deliver(['track', { ...message }]);
  // A later, distinct event: once it is visible, so is anything the retry could have stored.
  await deliver(['track', { userId: m1, event: 'After Retry' }]);
  await eventually(async () => {
    const { events } = await eventsOf(m1);
    findOne(events, 'After Retry', `events of @${m1}`);
    const n = events.filter((e) => e.name === 'Retried Track' && e.property?.retryOf === messageId).length;
    assert.equal(n, 1, `number of Retried Track events stored for messageId ${messageId}`);
  });
});

await check('7 an invalid item in a batch does not drop the valid one', async () => {
  const m3 = id('m3');
  const longName = 'N'.repeat(31);
  await deliver(
    ['track', { userId: m3, event: longName, properties: { bad: true } }],
    ['track', { userId: m3, event: 'Valid Neighbour', properties: { good: true } }],
  );
  await eventually(async () => {
    const { events } = await eventsOf(m3);
    const e = findOne(events, 'Valid Neighbour', `events of @${m3}`);
    assert.deepEqual(e.property, { good: true }, 'Valid Neighbour property');
    assert.deepEqual(
      events.filter((x) => x.name === longName || x.property?.bad === true).map((x) => x.name),
      [],
      'events stored from the 31-character name',
    );
  });
  const catalogued = (await getCatalog()).filter((c) => c.name === longName);
  assert.deepEqual(catalogued, [], 'catalog entries for the 31-character name');
});

await client.close();

if (failures.length) {
  for (const { title, err } of failures) {
    console.error(`\nFAIL ${CLIENT}: ${title}`);
    console.error(`  ${String(err?.message ?? err).split('\n').join('\n  ')}`);
    if (err && typeof err === 'object' && 'expected' in err && 'actual' in err) {
      console.error(`  expected: ${inspect(err.expected, { depth: null })}`);
      console.error(`  actual:   ${inspect(err.actual, { depth: null })}`);
    }
  }
  console.error(`\n${failures.length} of 7 ${CLIENT} checks failed`);
  process.exit(1);
}
console.log(`all 7 ${CLIENT} checks passed`);
process.exit(0);
