// Drives the web SDK (`/sdk/sori.js`) in headless Chromium against a running Sori server
// and checks the results through the Open API. Run by the Rust integration tests; see
// README.md for the environment. Exits 0 when every check passes, 1 when one fails, 2 when
// the environment is incomplete.

import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import http from 'node:http';
import { inspect } from 'node:util';
import { chromium } from 'playwright-core';

function env(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`missing environment variable ${name}`);
    process.exit(2); // misconfigured, as in segment.mjs
  }
  return v;
}

const SORI_URL = env('SORI_URL').replace(/\/+$/, '');
const PLUGIN_KEY = env('SORI_PLUGIN_KEY');
const ACCESS_KEY = env('SORI_ACCESS_KEY');
const ACCESS_SECRET = env('SORI_ACCESS_SECRET');
const MEMBER_HASH_SECRET = env('SORI_MEMBER_HASH_SECRET');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

const WAIT_MS = 10_000; // deadline for any single condition
const TOTAL_MS = 180_000; // deadline for the whole script

// A hung browser or server must not hang the Rust test forever.
setTimeout(() => {
  console.error(`browser.mjs: gave up after ${TOTAL_MS} ms`);
  process.exit(1);
}, TOTAL_MS).unref();

// ---------------------------------------------------------------- test pages

// The loader snippet of docs/sdk.md, pointing at the server under test. `extra` is more
// inline script run right after it (calls there are queued until sori.js loads).
// `oldLoader`: the snippet as it was before 2026-12-01, which did not note each call's URL.
function html({ title, canonical, extra = '', oldLoader = false }) {
  return `<!doctype html>
<html><head><meta charset="utf-8"><title>${title}</title>
${canonical ? `<link rel="canonical" href="${canonical}">` : ''}
<script>
  (function () {
    var w = window;
    if (w.Sori) return;
    var s = function () { s.c(arguments); };
    s.q = [];
    s.c = function (args) { ${oldLoader ? '' : 'args.u = location.href; '}s.q.push(args); };
    w.Sori = s;
    function l() {
      var x = document.createElement('script');
      x.async = true;
      x.src = ${JSON.stringify(`${SORI_URL}/sdk/sori.js`)};
      document.head.appendChild(x);
    }
    if (document.readyState === 'complete') l(); else w.addEventListener('load', l);
  })();
  ${extra}
</script>
</head><body><h1>${title}</h1></body></html>`;
}

// The first page boots from its own inline script, so the boot is always replayed from
// the loader's queue.
const BOOT_INLINE = `Sori('boot', { pluginKey: ${JSON.stringify(PLUGIN_KEY)} }, function (e, u) {
    window.__boot = { error: e ? { status: e.status, message: e.message } : null, user: u };
  });`;

const UTM_INLINE = `Sori('boot', { pluginKey: ${JSON.stringify(PLUGIN_KEY)} }, function (e, u) {
    window.__boot23 = { error: e ? e.message : null, user: u };
  });
  Sori('track', 'Cta23');
  history.replaceState(null, '', location.pathname);`;
const ROUTE_ON = `history.pushState({}, '', location.pathname + '/home');`;
// A search app's move to another query (no cleaning: that would drop q too).
const QUERY_ON = UTM_INLINE.replace(
  "history.replaceState(null, '', location.pathname);",
  "history.pushState({}, '', location.pathname + '?q=b');",
);

const PAGES = {
  '/shop/product-1': html({ title: 'Product 1', canonical: '/canonical/product-1', extra: BOOT_INLINE }),
  '/shop/second': html({ title: 'Second' }),
  '/shop/fresh': html({ title: 'Fresh' }),
  '/shop/landing': html({ title: 'Landing', canonical: '/canonical/landing#offer' }),
  // Boot and track from their inline script, then clean utm_* from their URL (and route
  // on), all before their `load` event, so before sori.js runs.
  '/shop/utm': html({ title: 'UTM', extra: UTM_INLINE + ROUTE_ON }),
  '/shop/canon': html({ title: 'Canonical', canonical: '/canonical/canon23', extra: UTM_INLINE }),
  '/shop/old': html({ title: 'Old loader', extra: UTM_INLINE, oldLoader: true }),
  '/shop/search': html({ title: 'Search', extra: QUERY_ON }),
};

function startPageServer() {
  const server = http.createServer((req, res) => {
    const path = new URL(req.url, 'http://x').pathname;
    // SPA routes render the same document as their parent page.
    const key = Object.keys(PAGES).find((p) => path === p || path.startsWith(`${p}/`));
    if (!key) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
      return;
    }
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
    res.end(PAGES[key]);
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve(server));
  });
}

// ---------------------------------------------------------------- Open API

async function api(method, path, body) {
  const headers = { 'x-access-key': ACCESS_KEY, 'x-access-secret': ACCESS_SECRET };
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(`${SORI_URL}/open/v5${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  return { status: res.status, body: json, text };
}

async function apiOk(method, path, body) {
  const r = await api(method, path, body);
  assert.equal(r.status, 200, `${method} ${path} -> ${r.status} ${r.text}`);
  return r.body;
}

const userPath = (id) => `/users/${encodeURIComponent(id)}`;
const memberPath = (memberId) => `/users/@${encodeURIComponent(memberId)}`;

async function getUser(id) {
  return (await apiOk('GET', userPath(id))).user;
}

async function events(userId, limit = 50) {
  return (await apiOk('GET', `${userPath(userId)}/events?limit=${limit}`)).events;
}

// Polls `probe` until it returns a truthy value; fails after WAIT_MS with `what`.
async function until(what, probe) {
  const deadline = Date.now() + WAIT_MS;
  let last;
  for (;;) {
    last = await probe();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

// Waits until the user's stored events include one named `name`; returns all events.
// Holds the page's first boot request `ms` before sending it on (a slow uplink). `sent`
// resolves when that request has left the page (wrapped: an async function's result
// would adopt the promise and wait for it).
async function holdFirstBoot(p, ms) {
  let held = 0;
  let holding;
  const sent = new Promise((r) => {
    holding = r;
  });
  await p.route('**/sdk/v1/boot', async (route) => {
    if (held++ === 0) {
      holding();
      await new Promise((r) => setTimeout(r, ms));
    }
    // Unrouted meanwhile (the page was left), it may have gone on by itself.
    await route.continue().catch(() => {});
  });
  return { sent };
}

// Holds the page's `/sdk/v1/events` requests (the first call, sent alone) until
// `release()`, so that the calls after it are still queued when the page is left and go
// in the one request sent then; at most WAIT_MS, so a failing step cannot hold it forever.
async function holdEvents(p) {
  let release;
  const released = new Promise((r) => {
    release = r;
  });
  await p.route('**/sdk/v1/events', async (route) => {
    await Promise.race([released, new Promise((r) => setTimeout(r, WAIT_MS))]);
    await route.continue().catch(() => {});
  });
  return release;
}

async function eventsWith(userId, name) {
  return until(`event ${name} of user ${userId}`, async () => {
    const list = await events(userId);
    return list.some((e) => e.name === name) ? list : null;
  });
}

const named = (list, name) => list.filter((e) => e.name === name);

function memberHash(memberId) {
  return createHmac('sha256', Buffer.from(MEMBER_HASH_SECRET, 'hex')).update(memberId).digest('hex');
}

// Leaves `page` for /shop/second while its first boot is held on its way (see
// holdFirstBoot; later boots pass the route at once), and boots the next page; the
// answer. The route stays: removed while the next page loads, it could leave that page's
// sori.js request paused in the interception for good (seen: the script never arrived).
async function leaveAndBootNext(page) {
  await page.evaluate(() => {
    location.href = '/shop/second';
  });
  await page.waitForURL('**/shop/second');
  await page.waitForFunction(() => window.Sori && window.Sori.__soriSdk, null, { timeout: WAIT_MS });
  const next = await sdkCall(page, 'boot', { pluginKey: PLUGIN_KEY });
  assert.equal(next.error, null, 'boot error');
  return next;
}

// ---------------------------------------------------------------- SDK calls in the page

let seq = 0;

// Calls Sori(method, ...args, cb) in the page and waits for the callback;
// returns { error: {status, message} | null, user }.
async function sdkCall(page, method, ...args) {
  return sdkCallWithin(WAIT_MS, page, method, ...args);
}

// sdkCall for a call whose answer may take longer than WAIT_MS by design (`ms`).
async function sdkCallWithin(ms, page, method, ...args) {
  const key = `__sori_result_${++seq}`;
  await page.evaluate(
    ([method, args, key]) => {
      window.Sori(method, ...args, (e, u) => {
        window[key] = { error: e ? { status: e.status, message: e.message } : null, user: u };
      });
    },
    [method, args, key],
  );
  await page.waitForFunction((key) => window[key] !== undefined, key, { timeout: ms });
  return page.evaluate((key) => window[key], key);
}

// Resolves once the SDK's wait for a render after a navigation has passed for certain (two
// frames, then longer than its 100 ms fallback; 400 ms where frames do not come): a
// PageView it was to send is queued by then, so a call made after this goes out behind it.
async function pastRender(page) {
  await page.evaluate(
    () =>
      new Promise((r) => {
        setTimeout(r, 400);
        requestAnimationFrame(() => requestAnimationFrame(() => setTimeout(r, 150)));
      }),
  );
}

// Calls Sori(method, ...args) without a callback.
async function sdk(page, method, ...args) {
  await page.evaluate(([method, args]) => window.Sori(method, ...args), [method, args]);
}

// ---------------------------------------------------------------- the checks

const pageErrors = [];

function watch(page) {
  page.on('pageerror', (e) => pageErrors.push(`${page.url()}: ${e.message}`));
}

async function run(browser, pagesOrigin) {
  // A Korean browser: the SDK sends navigator.language at boot, stored as `ko`.
  const ctx = await browser.newContext({ locale: 'ko-KR' });
  const page = await ctx.newPage();
  watch(page);
  const canonical = `${pagesOrigin}/canonical/product-1`;
  const steps = [];
  const step = (name, fn) => steps.push([name, fn]);
  const s = {}; // state shared by the steps

  step('1 anonymous boot on the canonical page', async () => {
    // Arriving from another site (Playwright passes the full URL as the referrer).
    await page.goto(`${pagesOrigin}/shop/product-1?utm_source=news&utm_medium=email&utm_campaign=fall`, {
      referer: 'http://search.example/results?q=shoes',
    });
    await page.waitForFunction(() => window.__boot !== undefined, null, { timeout: WAIT_MS });
    const boot = await page.evaluate(() => window.__boot);
    assert.equal(boot.error, null, 'boot error');
    assert.ok(boot.user && boot.user.id, 'booted user has an id');
    assert.equal(boot.user.memberId, undefined, 'anonymous user has no memberId');
    assert.equal(await page.evaluate(() => typeof window.Sori.q), 'undefined', 'loader stub replaced');
    s.anonId = boot.user.id;

    const list = await eventsWith(s.anonId, 'PageView');
    const views = named(list, 'PageView');
    assert.equal(views.length, 1, 'one PageView after boot');
    assert.equal(views[0].page, canonical, 'PageView page is the absolute canonical URL');
    assert.equal(views[0].source, 'sdk', 'event source');

    const user = await getUser(s.anonId);
    const p = user.profile;
    assert.deepEqual(
      [p.utmSource, p.utmMedium, p.utmCampaign],
      ['news', 'email', 'fall'],
      'initial UTM profile',
    );
    assert.deepEqual(
      [p.lastUtmSource, p.lastUtmMedium, p.lastUtmCampaign],
      ['news', 'email', 'fall'],
      'last UTM profile',
    );
    assert.equal(p.referrer, 'http://search.example/results?q=shoes', 'referrer from the arriving page');
    assert.equal(user.sessionsCount, 1, 'sessionsCount');
    assert.equal(user.language, 'ko', 'language from navigator.language (ko-KR)');
    assert.ok(user.web && typeof user.web.browserName === 'string' && user.web.browserName, 'web.browserName set');
    return `user ${s.anonId}, PageView ${views[0].page}, browser ${user.web.browserName}`;
  });

  step('2 second page keeps the veilId', async () => {
    await page.goto(`${pagesOrigin}/shop/second?utm_source=ads#top`);
    const boot = await sdkCall(page, 'boot', { pluginKey: PLUGIN_KEY });
    assert.equal(boot.error, null, 'boot error');
    assert.equal(boot.user.id, s.anonId, 'same user (veilId kept in localStorage)');

    const user = await getUser(s.anonId);
    const stored = await page.evaluate(() => localStorage.getItem('sori:veilId'));
    assert.ok(stored, 'sori:veilId in localStorage');
    if (user.veilId !== undefined) assert.equal(user.veilId, stored, 'stored veilId is the user\'s');
    const p = user.profile;
    assert.equal(p.utmSource, 'news', 'utmSource is set once');
    assert.equal(p.lastUtmSource, 'ads', 'lastUtmSource updated');
    assert.equal(p.lastUtmMedium, 'email', 'lastUtmMedium kept when absent');
    return `same user ${s.anonId}, utmSource ${p.utmSource}, lastUtmSource ${p.lastUtmSource}`;
  });

  step('3 track with setPage and resetPage', async () => {
    const property = { sku: 'A-1', price: 1200, tags: ['x', 'y'] };
    await sdk(page, 'setPage', '/custom/page');
    await sdk(page, 'track', 'AddToCart', property);
    let list = await eventsWith(s.anonId, 'AddToCart');
    const cart = named(list, 'AddToCart');
    assert.equal(cart.length, 1, 'one AddToCart');
    assert.equal(cart[0].page, '/custom/page', 'AddToCart page from setPage');
    assert.deepEqual(cart[0].property, property, 'AddToCart property');
    assert.equal(cart[0].source, 'sdk', 'event source');

    await sdk(page, 'resetPage');
    await sdk(page, 'track', 'Viewed');
    list = await eventsWith(s.anonId, 'Viewed');
    const viewed = named(list, 'Viewed');
    assert.equal(viewed.length, 1, 'one Viewed');
    assert.equal(viewed[0].page, `${pagesOrigin}/shop/second?utm_source=ads`, 'Viewed page is the URL without hash');
    return `AddToCart on ${cart[0].page}, Viewed on ${viewed[0].page}`;
  });

  step('3b single-page-app navigation', async () => {
    const before = named(await events(s.anonId), 'PageView').length;
    await page.evaluate(() => history.pushState({}, '', '/shop/second/spa-2'));
    // A hash-only change and a same-URL replaceState are not page views.
    await page.evaluate(() => history.replaceState({}, '', '/shop/second/spa-2#section'));
    // The PageView goes out once the page has rendered, after any `track` made in the
    // meantime: wait for it, then send a marker behind anything else the SDK queued.
    await until('the SPA PageView', async () =>
      named(await events(s.anonId), 'PageView').length > before);
    await pastRender(page);
    await sdk(page, 'track', 'SpaMarker');
    const list = await eventsWith(s.anonId, 'SpaMarker');
    const views = named(list, 'PageView');
    assert.equal(views.length, before + 1, 'exactly one new PageView');
    assert.equal(views[0].page, `${pagesOrigin}/shop/second/spa-2`, 'SPA PageView page (newest first)');
    return `PageView ${views[0].page}`;
  });

  step('4 updateUser and addTags', async () => {
    const upd = await sdkCall(page, 'updateUser', { profile: { nickname: 'Kim' } });
    assert.equal(upd.error, null, 'updateUser error');
    assert.equal(upd.user && upd.user.profile && upd.user.profile.nickname, 'Kim', 'profile.nickname');

    const tags = await sdkCall(page, 'addTags', ['VIP', 'vip', 'new']);
    assert.equal(tags.error, null, 'addTags error');
    assert.deepEqual([...tags.user.tags].sort(), ['new', 'vip'], 'tags lowercased and de-duplicated');
    return `nickname ${upd.user.profile.nickname}, tags ${tags.user.tags.join(',')}`;
  });

  step('5 wrong memberHash is refused', async () => {
    await apiOk('PATCH', '/channel', { memberHashRequired: true });
    const beforeUser = await getUser(s.anonId);
    const beforeCount = (await events(s.anonId)).length;

    const boot = await sdkCall(page, 'boot', {
      pluginKey: PLUGIN_KEY,
      memberId: 'member-42',
      memberHash: memberHash('member-43'),
    });
    assert.equal(boot.user, null, 'no user on a refused boot');
    assert.equal(boot.error && boot.error.status, 401, 'error status');
    assert.ok(boot.error.message, 'error message');

    const member = await api('GET', memberPath('member-42'));
    assert.equal(member.status, 404, `no user @member-42: ${member.text}`);
    const afterUser = await getUser(s.anonId);
    assert.equal((await events(s.anonId)).length, beforeCount, 'anonymous events unchanged');
    assert.equal(afterUser.memberId, undefined, 'anonymous user still anonymous');
    assert.equal(afterUser.sessionsCount, beforeUser.sessionsCount, 'sessionsCount unchanged');
    assert.deepEqual(afterUser.profile, beforeUser.profile, 'profile unchanged');
    assert.deepEqual(afterUser.tags, beforeUser.tags, 'tags unchanged');
    return `401 "${boot.error.message}", ${beforeCount} events unchanged`;
  });

  step('6 member boot merges the anonymous user', async () => {
    // The business already knows member-42 (server-side upsert), so the browser's anonymous
    // history has to be merged into that existing member.
    const existing = (await apiOk('PUT', memberPath('member-42'), { profile: { name: '민수', nickname: 'server' } })).user;
    await apiOk('PATCH', userPath(existing.id), { profile: { nickname: null } });
    const boot = await sdkCall(page, 'boot', {
      pluginKey: PLUGIN_KEY,
      memberId: 'member-42',
      memberHash: memberHash('member-42'),
    });
    assert.equal(boot.error, null, 'boot error');
    assert.equal(boot.user.memberId, 'member-42', 'memberId');

    const member = (await apiOk('GET', memberPath('member-42'))).user;
    assert.equal(member.memberId, 'member-42', 'GET @member-42');
    assert.equal(member.id, existing.id, 'the existing member kept its id');
    assert.equal(member.profile.name, '민수', "the member's own values win");
    assert.equal(member.profile.nickname, 'Kim', 'nickname merged from the anonymous user');
    const list = await events(member.id);
    const cart = named(list, 'AddToCart');
    assert.equal(cart.length, 1, 'AddToCart merged');
    assert.equal(cart[0].page, '/custom/page', 'merged AddToCart page');
    assert.ok(
      named(list, 'PageView').some((e) => e.page === canonical),
      'first PageView (canonical page) merged',
    );
    const gone = await api('GET', userPath(s.anonId));
    assert.equal(gone.status, 404, `anonymous user merged away: ${gone.text}`);
    const merges = (await apiOk('GET', `${userPath(member.id)}/merges`)).merges;
    assert.equal(merges.length, 1, 'one merge recorded');
    assert.equal(merges[0].fromUserId, s.anonId, 'merge record names the anonymous user');
    return `member ${member.id} has ${list.length} events, anonymous ${s.anonId} gone`;
  });

  // A fresh browser: a new context has empty localStorage, so a new anonymous user.
  let fresh;
  step('7 trackDefaultEvent:false records no PageView', async () => {
    const ctx2 = await browser.newContext();
    fresh = await ctx2.newPage();
    watch(fresh);
    await fresh.goto(`${pagesOrigin}/shop/fresh`);
    const boot = await sdkCall(fresh, 'boot', { pluginKey: PLUGIN_KEY, trackDefaultEvent: false });
    assert.equal(boot.error, null, 'boot error');
    assert.notEqual(boot.user.id, s.anonId, 'a new user');
    s.freshId = boot.user.id;
    // Neither the boot nor an SPA navigation may record a PageView; the marker, sent after
    // both, proves the requests before it were handled.
    await fresh.evaluate(() => history.pushState({}, '', '/shop/fresh/next'));
    await pastRender(fresh);
    await sdk(fresh, 'track', 'Marker7');
    const list = await eventsWith(s.freshId, 'Marker7');
    assert.deepEqual(named(list, 'PageView'), [], 'no PageView');
    return `user ${s.freshId}: ${list.map((e) => e.name).join(',')}`;
  });

  step('8 bad input does not throw and stores nothing', async () => {
    const long = 'x'.repeat(31);
    await fresh.evaluate((long) => {
      window.Sori('track', long);
      window.Sori('noSuchMethod', 1, 2);
      window.Sori('track');
      window.Sori(42);
      const circular = {};
      circular.self = circular;
      window.Sori('track', 'Circular', circular);
      window.Sori('track', 'TooBig', { s: 'x'.repeat(5000) });
      window.Sori('setPage', { toString() { throw new Error('boom'); } });
      window.Sori('resetPage');
    }, long);
    // Calls with callbacks hear why: the server's 400, or a body JSON cannot hold.
    const bad = await sdkCall(fresh, 'updateUser', { profile: 'not an object' });
    assert.equal(bad.error && bad.error.status, 400, `updateUser 400: ${JSON.stringify(bad)}`);
    assert.equal(bad.user, null, 'no user with the error');
    const unsendable = await fresh.evaluate(
      () =>
        new Promise((resolve) => {
          const circular = {};
          circular.self = circular;
          window.Sori('updateUser', { profile: circular }, (e, u) =>
            resolve({ status: e && e.status, message: e && e.message, user: u }));
        }),
    );
    assert.equal(unsendable.status, 0, `circular updateUser: ${JSON.stringify(unsendable)}`);
    assert.equal(unsendable.user, null, 'no user with the error');
    await sdk(fresh, 'track', 'Marker8');
    const list = await eventsWith(s.freshId, 'Marker8');
    assert.deepEqual(named(list, long), [], 'no event with a 31-character name');
    assert.deepEqual(named(list, 'Circular'), [], 'no event with a circular property');
    assert.deepEqual(named(list, 'TooBig'), [], 'no event with a 5,000-byte property');
    assert.equal(
      named(list, 'Marker8')[0].page,
      named(list, 'Marker7')[0].page,
      'a setPage that threw changed nothing',
    );
    assert.deepEqual(pageErrors, [], 'no uncaught errors in the pages');
    return `rejected quietly; updateUser heard ${bad.error.status} and ${unsendable.status}`;
  });

  step('9 own-site referrer, trackUtmSource:false, removeTags, shutdown', async () => {
    // A link between the site's own pages is not where the visitor came from.
    await fresh.goto(`${pagesOrigin}/shop/fresh/inner`, { referer: `${pagesOrigin}/shop/fresh` });
    assert.equal(await fresh.evaluate(() => document.referrer), `${pagesOrigin}/shop/fresh`, 'browser referrer');
    let boot = await sdkCall(fresh, 'boot', { pluginKey: PLUGIN_KEY, trackDefaultEvent: false });
    assert.equal(boot.error, null, 'boot error');
    assert.equal(boot.user.id, s.freshId, 'same user');
    assert.equal((await getUser(s.freshId)).profile?.referrer, undefined, 'no referrer from the own site');

    // trackUtmSource:false sends neither UTM parameters nor the referrer.
    await fresh.goto(`${pagesOrigin}/shop/fresh/x?utm_source=zzz`, { referer: 'http://other.example/page' });
    boot = await sdkCall(fresh, 'boot', { pluginKey: PLUGIN_KEY, trackDefaultEvent: false, trackUtmSource: false });
    assert.equal(boot.error, null, 'boot error');
    let p = (await getUser(s.freshId)).profile || {};
    assert.deepEqual([p.utmSource, p.lastUtmSource, p.referrer], [undefined, undefined, undefined], 'nothing tracked');

    // removeTags takes away only the named tags.
    const added = await sdkCall(fresh, 'addTags', ['a', 'b', 'c']);
    assert.equal(added.error, null, 'addTags error');
    const removed = await sdkCall(fresh, 'removeTags', ['B', 'c']);
    assert.equal(removed.error, null, 'removeTags error');
    assert.deepEqual(removed.user.tags, ['a'], 'tags after removeTags');

    // After shutdown calls fail with an error and write nothing, until the next boot.
    await sdk(fresh, 'shutdown');
    const upd = await sdkCall(fresh, 'updateUser', { profile: { afterShutdown: 1 } });
    assert.ok(upd.error, 'updateUser after shutdown fails');
    await sdk(fresh, 'track', 'AfterShutdown');
    boot = await sdkCall(fresh, 'boot', { pluginKey: PLUGIN_KEY, trackDefaultEvent: false });
    assert.equal(boot.error, null, 'boot error');
    await sdk(fresh, 'track', 'Marker9');
    const list = await eventsWith(s.freshId, 'Marker9');
    assert.deepEqual(named(list, 'AfterShutdown'), [], 'no event sent while shut down');
    p = (await getUser(s.freshId)).profile || {};
    assert.equal(p.afterShutdown, undefined, 'no profile change while shut down');
    return `referrer none, tags ${removed.user.tags.join(',')}, shutdown dropped calls`;
  });

  step('10 SPA PageView pages, a lost session, a refused stored id', async () => {
    // A router changes the canonical link right after pushState, in the same task: the
    // PageView carries the new page, not the one being left.
    const boot = await sdkCall(fresh, 'boot', { pluginKey: PLUGIN_KEY });
    assert.equal(boot.error, null, 'boot error');
    await fresh.evaluate(() => {
      history.pushState({}, '', '/shop/fresh/shoes');
      let link = document.querySelector('link[rel=canonical]');
      if (!link) {
        link = document.createElement('link');
        link.rel = 'canonical';
        document.head.appendChild(link);
      }
      link.href = '/canonical/shoes';
    });
    const shoes = `${pagesOrigin}/canonical/shoes`;
    await until('the SPA PageView', async () =>
      named(await events(s.freshId), 'PageView').some((e) => e.page === shoes));
    // A redirect in one task (pushState, then replaceState) is one PageView, of the page
    // it ends on.
    await fresh.evaluate(() => {
      document.querySelector('link[rel=canonical]').remove();
      history.pushState({}, '', '/shop/fresh/redirect');
      history.replaceState({}, '', '/shop/fresh/final');
    });
    const final = `${pagesOrigin}/shop/fresh/final`;
    const views = await until('the redirect PageView', async () => {
      const v = named(await events(s.freshId), 'PageView');
      return v.some((e) => e.page === final) ? v : null;
    });
    const redirect = `${pagesOrigin}/shop/fresh/redirect`;
    assert.deepEqual(
      views.filter((e) => e.page === redirect || e.page === final).map((e) => e.page),
      [final],
      'one PageView for the redirect, of its last page',
    );
    // A router that sets the canonical link in a later task (or frame) still gets its page.
    await fresh.evaluate(() => {
      history.pushState({}, '', '/shop/fresh/later');
      setTimeout(() => {
        const link = document.createElement('link');
        link.rel = 'canonical';
        link.href = '/canonical/later';
        document.head.appendChild(link);
      }, 0);
    });
    const later = `${pagesOrigin}/canonical/later`;
    await until('the PageView of a later canonical', async () =>
      named(await events(s.freshId), 'PageView').some((e) => e.page === later));

    // The user behind this browser's session is deleted (or merged into a member in
    // another tab): the next calls boot again quietly and land, instead of being lost.
    const deleted = await api('DELETE', userPath(s.freshId));
    assert.equal(deleted.status, 204, `delete: ${deleted.text}`);
    const upd = await sdkCall(fresh, 'updateUser', { profile: { nickname: 'Again' } });
    assert.equal(upd.error, null, `updateUser after the user was deleted: ${JSON.stringify(upd)}`);
    assert.notEqual(upd.user.id, s.freshId, 'a new user');
    await sdk(fresh, 'track', 'Marker10');
    const list = await eventsWith(upd.user.id, 'Marker10');
    assert.deepEqual(named(list, 'PageView'), [], 'the quiet boot records no PageView');
    assert.equal((await getUser(upd.user.id)).sessionsCount, 0, 'nor a second visit');

    // A visitor id the server refuses, left in storage by something else, is dropped and
    // the boot goes through as a new visitor's (it would otherwise fail for good).
    await fresh.evaluate(() => localStorage.setItem('sori:veilId', 'not a valid id!'));
    await fresh.reload();
    const again = await sdkCall(fresh, 'boot', { pluginKey: PLUGIN_KEY, trackDefaultEvent: false });
    assert.equal(again.error, null, `boot with a refused stored id: ${JSON.stringify(again)}`);
    const stored = await fresh.evaluate(() => localStorage.getItem('sori:veilId'));
    assert.ok(stored && stored !== 'not a valid id!', `a new stored id: ${stored}`);
    // A boot whose profile holds a key the channel has not registered still boots (the
    // visit counts); the profile is left out, with a warning in the console.
    const unknown = await sdkCall(fresh, 'boot', {
      pluginKey: PLUGIN_KEY, trackDefaultEvent: false, profile: { notRegistered: 1 },
    });
    assert.equal(unknown.error, null, `boot with an unregistered key: ${JSON.stringify(unknown)}`);
    assert.equal(unknown.user.profile.notRegistered, undefined, 'the key was left out');
    // That session lost, its calls boot again quietly, where the refused profile is left
    // out again as the first boot left it, and land.
    const gone = await api('DELETE', userPath(unknown.user.id));
    assert.equal(gone.status, 204, `delete: ${gone.text}`);
    const renewed = await sdkCall(fresh, 'updateUser', { profile: { nickname: 'Renewed' } });
    assert.equal(renewed.error, null, `updateUser after the session was lost: ${JSON.stringify(renewed)}`);
    assert.notEqual(renewed.user.id, unknown.user.id, 'a new user');
    // A boot, then another before the first is answered (an anonymous boot, then the
    // member's after sign-in): a call made between the two goes with the second.
    const between = await fresh.evaluate(
      (pk) =>
        new Promise((resolve) => {
          window.Sori('boot', { pluginKey: pk, trackDefaultEvent: false });
          window.Sori('track', 'BetweenBoots');
          window.Sori('boot', { pluginKey: pk, trackDefaultEvent: false }, (e, u) => resolve(u && u.id));
        }),
      PLUGIN_KEY,
    );
    assert.ok(between, 'the second boot answered');
    await eventsWith(between, 'BetweenBoots');
    return `PageView ${shoes}; re-booted as ${upd.user.id}; refused id replaced; a call between boots kept`;
  });

  step('11 two tabs of a first visit boot at once as one visitor', async () => {
    const ctx3 = await browser.newContext();
    const tabs = [await ctx3.newPage(), await ctx3.newPage()];
    for (const tab of tabs) {
      watch(tab);
      await tab.goto(`${pagesOrigin}/shop/fresh`);
    }
    const boots = await Promise.all(
      tabs.map((tab) => sdkCall(tab, 'boot', { pluginKey: PLUGIN_KEY, trackDefaultEvent: false })),
    );
    for (const b of boots) assert.equal(b.error, null, 'boot error');
    assert.equal(boots[0].user.id, boots[1].user.id, 'both tabs are one user');
    await ctx3.close();
    return `both tabs booted as ${boots[0].user.id}`;
  });

  // A page of its own in a fresh browser (empty localStorage): a first visit.
  async function firstVisit(path = '/shop/fresh') {
    const c = await browser.newContext();
    const p = await c.newPage();
    watch(p);
    await p.goto(`${pagesOrigin}${path}`);
    // The loader fetches sori.js after the load event: calls made before it arrives wait in
    // the loader's queue and are replayed at once, which is not the timing a step means.
    await p.waitForFunction(() => window.Sori && window.Sori.__soriSdk, null, { timeout: WAIT_MS });
    return [c, p];
  }

  step('12 a boot replaced before it answered hands its visitor to the next', async () => {
    const [c, p] = await firstVisit();
    // Boots reach the server 300 ms late, so the member's boot (sign-in right after load)
    // is made while the anonymous one is on its way. The anonymous boot records the
    // PageView and the member's records none: the member's PageView can only come from
    // the first boot's visitor.
    await p.route('**/sdk/v1/boot', async (route) => {
      await new Promise((r) => setTimeout(r, 300));
      await route.continue();
    });
    const results = await p.evaluate(
      ([pk, hash]) =>
        new Promise((resolve) => {
          const out = {};
          window.Sori('boot', { pluginKey: pk }, (e) => {
            out.first = e ? e.message : null;
          });
          window.Sori('track', 'BetweenSignIn');
          setTimeout(() => {
            window.Sori(
              'boot',
              { pluginKey: pk, memberId: 'late-member', memberHash: hash, trackDefaultEvent: false },
              (e, u) => {
                out.second = e ? e.message : null;
                out.user = u && u.id;
                resolve(out);
              },
            );
          }, 50);
        }),
      [PLUGIN_KEY, memberHash('late-member')],
    );
    assert.equal(results.first, 'boot replaced by a later boot', 'first callback');
    assert.equal(results.second, null, 'second boot');
    const list = await eventsWith(results.user, 'BetweenSignIn');
    assert.equal(named(list, 'PageView').length, 1, "the first boot's PageView is the member's");
    const member = await getUser(results.user);
    assert.equal(member.memberId, 'late-member');
    assert.equal(member.web.sessionsCount, 1, 'one visit');
    await c.close();
    return `member ${results.user}: ${list.map((e) => e.name).join(',')}`;
  });

  step('13 calls made as the page is left are all sent, in order', async () => {
    const [c, p] = await firstVisit();
    const boot = await sdkCall(p, 'boot', { pluginKey: PLUGIN_KEY, trackDefaultEvent: false });
    assert.equal(boot.error, null, 'boot error');
    // The first call is held on its way until the rest have landed (answered first, it
    // would let the next call, a tag change, be the one on its way, landing apart from
    // the rest).
    const release = await holdEvents(p);
    await p.evaluate(() => {
      window.Sori('track', 'LeaveOne');
      window.Sori('addTags', ['a']);
      window.Sori('removeTags', ['a']);
      window.Sori('addTags', ['b']);
      window.Sori('updateUser', { profile: { nickname: 'Leaving' } });
      window.Sori('track', 'LeaveTwo');
      window.Sori('track', 'LeaveThree');
      // The site's own handler, after the SDK's.
      window.addEventListener('pagehide', () => window.Sori('track', 'LeaveFour'));
      location.href = '/shop/second';
    });
    await p.waitForURL('**/shop/second');
    await eventsWith(boot.user.id, 'LeaveThree');
    release();
    // The batch and the handler's request are applied side by side: wait for all four.
    const order = ['LeaveOne', 'LeaveTwo', 'LeaveThree', 'LeaveFour'];
    const list = await until('the four tracks made on leaving', async () => {
      const now = await events(boot.user.id);
      return order.every((n) => named(now, n).length > 0) && now;
    });
    const times = order.map((n) => {
      const found = named(list, n);
      assert.equal(found.length, 1, `${n} stored once`);
      return found[0].createdAt;
    });
    // The queued calls keep their order (one batch); LeaveOne was already on its way and
    // the handler's call goes in a request of its own, so either may land apart (docs/sdk.md).
    const queued = times.slice(1, 3);
    assert.deepEqual([...queued].sort((a, b) => a - b), queued, 'in call order');
    const user = await getUser(boot.user.id);
    assert.deepEqual(user.tags, ['b'], 'tags applied in order');
    assert.equal(user.profile.nickname, 'Leaving');
    await c.close();
    return 'tracks, tags and profile made on leaving stored in order';
  });

  step('14 a refused boot keeps the running session', async () => {
    const [c, p] = await firstVisit();
    const boot = await sdkCall(p, 'boot', { pluginKey: PLUGIN_KEY, trackDefaultEvent: false });
    assert.equal(boot.error, null, 'boot error');
    const bad = await sdkCall(p, 'boot', { pluginKey: '' });
    assert.equal(bad.error && bad.error.message, 'pluginKey is required');
    await sdk(p, 'track', 'AfterRefusedBoot');
    await eventsWith(boot.user.id, 'AfterRefusedBoot');
    await c.close();
    return 'track after a refused boot stored';
  });

  step('15 a boot answered 200 with something other than JSON fails', async () => {
    const [c, p] = await firstVisit();
    await p.route('**/sdk/v1/boot', (route) =>
      route.fulfill({
        status: 200,
        headers: { 'access-control-allow-origin': '*' },
        contentType: 'text/html',
        body: '<html>captive portal</html>',
      }),
    );
    const boot = await sdkCall(p, 'boot', { pluginKey: PLUGIN_KEY });
    assert.ok(boot.error, 'the callback hears an error');
    assert.equal(boot.user, null);
    await c.close();
    return `boot error: ${boot.error.message}`;
  });

  step('16 an event over the keepalive budget is stored', async () => {
    const [c, p] = await firstVisit();
    const boot = await sdkCall(p, 'boot', { pluginKey: PLUGIN_KEY, trackDefaultEvent: false });
    assert.equal(boot.error, null, 'boot error');
    // 20 arrays of 9 × 400 characters: ~72 KB, inside the event limits (4 KB per value).
    await p.evaluate(() => {
      const property = {};
      for (let k = 0; k < 20; k++) property[`k${k}`] = Array(9).fill('x'.repeat(400));
      window.Sori('track', 'BigEvent', property);
      window.Sori('track', 'AfterBig');
    });
    const list = await eventsWith(boot.user.id, 'AfterBig');
    assert.equal(named(list, 'BigEvent').length, 1, 'the large event');
    await c.close();
    return 'a 72 KB event stored';
  });

  step('17 tabs behind a stuck first boot boot as one visitor', async () => {
    const c = await browser.newContext();
    const stuck = await c.newPage();
    watch(stuck);
    await stuck.goto(`${pagesOrigin}/shop/fresh`);
    await stuck.waitForFunction(() => window.Sori && window.Sori.__soriSdk, null, { timeout: WAIT_MS });
    // This tab's boot never reaches the server: it holds the visitor lock for good.
    await stuck.route('**/sdk/v1/boot', () => {});
    await stuck.evaluate((pk) => window.Sori('boot', { pluginKey: pk, trackDefaultEvent: false }), PLUGIN_KEY);
    const tabs = [];
    for (let i = 0; i < 2; i++) {
      const t = await c.newPage();
      watch(t);
      await t.goto(`${pagesOrigin}/shop/fresh`);
      await t.waitForFunction(() => window.Sori && window.Sori.__soriSdk, null, { timeout: WAIT_MS });
      tabs.push(t);
    }
    const boots = await Promise.all(
      // Both wait LOCK_WAIT_MS (5 s) for the stuck tab's lock first.
      tabs.map((t) => sdkCallWithin(2 * WAIT_MS, t, 'boot', { pluginKey: PLUGIN_KEY, trackDefaultEvent: false })),
    );
    for (const b of boots) assert.equal(b.error, null, 'boot error');
    assert.equal(boots[0].user.id, boots[1].user.id, 'the tabs behind the stuck one are one user');
    await c.close();
    return `both waiting tabs booted as ${boots[0].user.id}`;
  });

  step('18 over a hundred calls made as the page is left are all sent, in order', async () => {
    const [c, p] = await firstVisit();
    const boot = await sdkCall(p, 'boot', { pluginKey: PLUGIN_KEY, trackDefaultEvent: false });
    assert.equal(boot.error, null, 'boot error');
    // The first call is held on its way until the rest have landed (as in step 13), so
    // the rest are all queued when the page is left.
    const release = await holdEvents(p);
    await p.evaluate(() => {
      for (let i = 0; i < 150; i++) window.Sori('track', `Many${i}`);
      window.Sori('addTags', ['flip']);
      window.Sori('removeTags', ['flip']);
      window.Sori('addTags', ['many']);
      window.Sori('track', 'ManyLast');
      location.href = '/shop/second';
    });
    await p.waitForURL('**/shop/second');
    await eventsWith(boot.user.id, 'ManyLast');
    release();
    const list = await until('all 151 tracks', async () => {
      const now = await events(boot.user.id, 500);
      return now.filter((e) => e.name.startsWith('Many')).length === 151 && now;
    });
    // One request for the whole queue: applied in call order. (Many0 went out on its own
    // before the page was left, so it may land after the batch: docs/sdk.md.)
    const last = named(list, 'ManyLast')[0].createdAt;
    const before = list.filter((e) => /^Many[1-9][0-9]*$/.test(e.name)).map((e) => e.createdAt);
    assert.ok(before.every((t) => t <= last), 'the last call is stored last');
    assert.deepEqual((await getUser(boot.user.id)).tags, ['many'], 'tags applied in order');
    await c.close();
    return '151 tracks and three tag calls sent as one request, applied in order';
  });

  step('19 a page left before its boot answered: the next page is the same visitor', async () => {
    const c = await browser.newContext();
    const p = await c.newPage();
    watch(p);
    await p.goto(`${pagesOrigin}/shop/landing?utm_source=letter`, { referer: 'http://mail.example/inbox' });
    await p.waitForFunction(() => window.Sori && window.Sori.__soriSdk, null, { timeout: WAIT_MS });
    // The boot reaches the server, which creates the visitor, but its answer never
    // reaches the page (the visitor clicked on before it came).
    await p.route('**/sdk/v1/boot', async (route) => {
      await route.fetch();
      await route.abort();
    });
    const lost = await sdkCall(p, 'boot', { pluginKey: PLUGIN_KEY });
    assert.notEqual(lost.error, null, 'the first boot heard no answer');
    await p.unroute('**/sdk/v1/boot');
    await p.goto(`${pagesOrigin}/shop/second`);
    await p.waitForFunction(() => window.Sori && window.Sori.__soriSdk, null, { timeout: WAIT_MS });
    const next = await sdkCall(p, 'boot', { pluginKey: PLUGIN_KEY });
    assert.equal(next.error, null, 'boot error');
    const user = await getUser(next.user.id);
    assert.equal(user.profile.utmSource, 'letter', "the landing page's UTM is this visitor's");
    assert.equal(user.profile.referrer, 'http://mail.example/inbox', "and its referrer");
    assert.equal(user.web.sessionsCount, 1, 'one visit');
    const views = named(await eventsWith(next.user.id, 'PageView'), 'PageView');
    assert.deepEqual(
      views.map((e) => e.page).sort(),
      [`${pagesOrigin}/canonical/landing`, `${pagesOrigin}/shop/second`].sort(),
      "both pages' views, the canonical one without its fragment",
    );
    // A boot still on its way when its page is left (a slow uplink) reaches the server:
    // it goes with keepalive, as a simple request with no preflight to wait for.
    const c2 = await browser.newContext();
    const p2 = await c2.newPage();
    watch(p2);
    await p2.goto(`${pagesOrigin}/shop/fresh?utm_source=slow`);
    await p2.waitForFunction(() => window.Sori && window.Sori.__soriSdk, null, { timeout: WAIT_MS });
    const { sent } = await holdFirstBoot(p2, 300);
    await p2.evaluate((pk) => window.Sori('boot', { pluginKey: pk }), PLUGIN_KEY);
    await sent;
    await p2.evaluate(() => {
      location.href = '/shop/second';
    });
    await p2.waitForURL('**/shop/second');
    await p2.waitForFunction(() => window.Sori && window.Sori.__soriSdk, null, { timeout: WAIT_MS });
    const after = await sdkCall(p2, 'boot', { pluginKey: PLUGIN_KEY });
    assert.equal(after.error, null, 'boot error');
    await until('the slow boot of the page left', async () => (await getUser(after.user.id)).profile.utmSource === 'slow');
    // A boot the page is left before it could even be sent (still waiting for the
    // new-visitor lock) is sent as the page goes.
    await p2.unroute('**/sdk/v1/boot');
    // Another tab holds the lock, so the boot waits for it until the page is left.
    const holder = await c2.newPage();
    await holder.goto(`${pagesOrigin}/shop/fresh`);
    await holder.evaluate(() => {
      navigator.locks.request('sori:new-visitor:0', () => new Promise(() => {}));
    });
    await p2.goto(`${pagesOrigin}/shop/fresh?utm_source=quick`);
    await p2.waitForFunction(() => window.Sori && window.Sori.__soriSdk, null, { timeout: WAIT_MS });
    await p2.evaluate(() => localStorage.clear());
    await p2.evaluate((pk) => {
      window.Sori('boot', { pluginKey: pk });
      location.href = '/shop/second';
    }, PLUGIN_KEY);
    await p2.waitForURL('**/shop/second');
    await p2.waitForFunction(() => window.Sori && window.Sori.__soriSdk, null, { timeout: WAIT_MS });
    const quick = await sdkCall(p2, 'boot', { pluginKey: PLUGIN_KEY });
    assert.equal(quick.error, null, 'boot error');
    assert.notEqual(quick.user.id, after.user.id, 'a new visitor after the storage was cleared');
    await until('the boot of the page left at once', async () => (await getUser(quick.user.id)).profile.utmSource === 'quick');
    // One cancelled by a shutdown while it waited is not sent, not even as the page goes.
    await p2.goto(`${pagesOrigin}/shop/fresh?utm_source=shut`);
    await p2.waitForFunction(() => window.Sori && window.Sori.__soriSdk, null, { timeout: WAIT_MS });
    await p2.evaluate(() => localStorage.clear());
    // The boot is waiting for the lock (the holder tab has it) when the shutdown comes.
    await p2.evaluate((pk) => window.Sori('boot', { pluginKey: pk }), PLUGIN_KEY);
    await new Promise((r) => setTimeout(r, 200));
    await p2.evaluate(() => {
      window.Sori('shutdown');
      location.href = '/shop/second';
    });
    await p2.waitForURL('**/shop/second');
    await p2.waitForFunction(() => window.Sori && window.Sori.__soriSdk, null, { timeout: WAIT_MS });
    // A boot on its way would land within this second (the ones above took milliseconds).
    await new Promise((r) => setTimeout(r, 1000));
    const { users } = await apiOk('GET', '/users?limit=500');
    assert.equal(users.filter((u) => u.profile.utmSource === 'shut').length, 0, 'no visitor for a shut-down boot');
    await c2.close();
    // A member id kept as a number is its digits.
    const member = await sdkCall(p, 'boot', {
      pluginKey: PLUGIN_KEY, memberId: 4242, memberHash: memberHash('4242'), trackDefaultEvent: false,
    });
    assert.equal(member.error, null, 'numeric memberId boot');
    assert.equal((await getUser(member.user.id)).memberId, '4242');
    await c.close();
    return `visitor ${next.user.id} kept its landing page; member 4242 booted from a number`;
  });

  step('20 calls made with a boot that has not answered are sent as the page goes', async () => {
    const c = await browser.newContext();
    const p = await c.newPage();
    watch(p);
    await p.goto(`${pagesOrigin}/shop/fresh?utm_source=eager`);
    await p.waitForFunction(() => window.Sori && window.Sori.__soriSdk, null, { timeout: WAIT_MS });
    // A slow uplink: the boot is still on its way when the visitor clicks on.
    const { sent } = await holdFirstBoot(p, 400);
    await p.evaluate((pk) => {
      window.Sori('boot', { pluginKey: pk, language: 'ko-KR' });
      window.Sori('track', 'Eager', { plan: 'pro' });
      window.Sori('addTags', ['lead']);
    }, PLUGIN_KEY);
    await sent;
    const next = await leaveAndBootNext(p);
    // The held boot may land after the calls (sent with a quiet boot as the page went):
    // wait for both.
    const user = await until('the calls and the visit made with the first boot', async () => {
      const u = await getUser(next.user.id);
      return u.tags.includes('lead') && u.profile.utmSource === 'eager' && u;
    });
    const eager = named(await events(next.user.id), 'Eager');
    assert.equal(eager.length, 1, 'the track made with the boot, once');
    assert.equal(eager[0].property.plan, 'pro');
    assert.equal(user.profile.utmSource, 'eager', "the first page's visit");
    assert.equal(user.web.sessionsCount, 1, 'one visit: the boot that carried the calls counts none');
    assert.equal(user.language, 'ko', "the site's language, whichever boot created the visitor");
    await c.close();
    // The same with boot options the server refuses in part (an unregistered profile
    // key): the calls still land, since the server leaves the refused part out of the
    // (partial) boot that carries them.
    const c2 = await browser.newContext();
    const p2 = await c2.newPage();
    watch(p2);
    await p2.goto(`${pagesOrigin}/shop/fresh`);
    await p2.waitForFunction(() => window.Sori && window.Sori.__soriSdk, null, { timeout: WAIT_MS });
    const { sent: heldBoot } = await holdFirstBoot(p2, 400);
    await p2.evaluate((pk) => {
      window.Sori('boot', { pluginKey: pk, profile: { notRegistered20: 'x' } });
      window.Sori('track', 'EagerRefused');
    }, PLUGIN_KEY);
    await heldBoot;
    const again = await leaveAndBootNext(p2);
    // That first boot, refused for its profile and answered once the page was gone, still
    // counts its visit: the server leaves the profile out (a partial boot) instead of
    // refusing the boot, which the page could no longer send again without it. (It may
    // land after the call.)
    const list = await until("the call and the first page's PageView", async () => {
      const l = await events(again.user.id);
      const first = named(l, 'PageView').some((e) => e.page.endsWith('/shop/fresh'));
      return named(l, 'EagerRefused').length >= 1 && first && l;
    });
    assert.equal(named(list, 'EagerRefused').length, 1, 'the call made with a partly refused boot, once');
    // A new visitor whose boot still waits for another tab's new-visitor lock: the calls
    // and the boot, both sent as the page goes, name one visitor id made then.
    const holder = await c2.newPage();
    await holder.goto(`${pagesOrigin}/shop/fresh`);
    await holder.evaluate(() => {
      navigator.locks.request('sori:new-visitor:0', () => new Promise(() => {}));
    });
    await p2.goto(`${pagesOrigin}/shop/fresh?utm_source=locked`);
    await p2.waitForFunction(() => window.Sori && window.Sori.__soriSdk, null, { timeout: WAIT_MS });
    await p2.evaluate(() => localStorage.clear());
    await p2.evaluate((pk) => {
      window.Sori('boot', { pluginKey: pk });
      window.Sori('track', 'EagerLocked');
      // The site's own handler, after the SDK's: its call goes too.
      window.addEventListener('pagehide', () => window.Sori('track', 'EagerLeaving'));
      location.href = '/shop/second';
    }, PLUGIN_KEY);
    await p2.waitForURL('**/shop/second');
    await p2.waitForFunction(() => window.Sori && window.Sori.__soriSdk, null, { timeout: WAIT_MS });
    const locked = await sdkCall(p2, 'boot', { pluginKey: PLUGIN_KEY });
    assert.equal(locked.error, null, 'boot error');
    const lockedUser = await until('the calls and the visit of the locked boot', async () => {
      const u = await getUser(locked.user.id);
      const list = await events(locked.user.id);
      return u.profile.utmSource === 'locked' &&
        named(list, 'EagerLocked').length === 1 && named(list, 'EagerLeaving').length === 1 && u;
    });
    assert.equal(lockedUser.web.sessionsCount, 1, 'one visit');
    await c2.close();
    return `visitor ${next.user.id}: Eager and tag lead stored though the boot had not answered; also with a refused profile, and behind another tab's lock`;
  });

  step('21 trackDefaultEvent given as the text "false" records no PageView', async () => {
    const c = await browser.newContext();
    const p = await c.newPage();
    watch(p);
    await p.goto(`${pagesOrigin}/shop/fresh`);
    await p.waitForFunction(() => window.Sori && window.Sori.__soriSdk, null, { timeout: WAIT_MS });
    const boot = await sdkCall(p, 'boot', { pluginKey: PLUGIN_KEY, trackDefaultEvent: 'false' });
    assert.equal(boot.error, null, 'boot error');
    await p.evaluate(() => history.pushState({}, '', '/shop/fresh/next'));
    await pastRender(p);
    await sdk(p, 'track', 'Marker21');
    const list = await eventsWith(boot.user.id, 'Marker21');
    assert.deepEqual(named(list, 'PageView'), [], 'no PageView');
    await c.close();
    return `user ${boot.user.id}: ${list.map((e) => e.name).join(',')}`;
  });

  step('22 text from a link or a template does not switch the SDK off', async () => {
    const c = await browser.newContext();
    const p = await c.newPage();
    watch(p);
    // A shared link whose utm_source is %00; a name cut inside an emoji (JSON.stringify
    // writes the lone surrogate as an escape); a template's signed-out member id and its
    // unsubscribe flag as text.
    await p.goto(`${pagesOrigin}/shop/fresh?utm_source=%00evil&utm_medium=ad`);
    await p.waitForFunction(() => window.Sori && window.Sori.__soriSdk, null, { timeout: WAIT_MS });
    await p.evaluate((pluginKey) => {
      const cut = '😀님'.slice(0, 1);
      const option = {
        pluginKey, memberId: '\u200b ', unsubscribeEmail: 'true', unsubscribeTexting: ' TRUE ', profile: { name: cut },
      };
      window.Sori('boot', option, (e, u) => {
        window.__boot22 = { error: e ? e.message : null, user: u };
      });
      window.Sori('track', 'Cut22', { title: cut + 'x' });
    }, PLUGIN_KEY);
    await p.waitForFunction(() => window.__boot22 !== undefined, null, { timeout: WAIT_MS });
    const boot = await p.evaluate(() => window.__boot22);
    assert.equal(boot.error, null, 'boot error');
    const id = boot.user.id;
    const list = await eventsWith(id, 'Cut22');
    assert.equal(named(list, 'Cut22')[0].property.title, '\ufffdx', 'a lone surrogate reads as U+FFFD');
    assert.equal(named(list, 'PageView').length, 1, 'the visit is recorded');
    const user = await getUser(id);
    assert.equal(user.member, false, 'a blank memberId boots an anonymous visitor');
    assert.equal(user.unsubscribeEmail, true, "unsubscribeEmail 'true'");
    assert.equal(user.unsubscribeTexting, true, "unsubscribeTexting ' TRUE '");
    assert.deepEqual([user.profile.utmSource, user.profile.utmMedium, user.name], ['evil', 'ad', '\ufffd'], 'profile');
    // A call holding a lone surrogate among the calls sent as the page is left. First22 is
    // held on its way until the rest have landed (as in step 13): answered first, it would let Cut22b be the call on
    // its way, which may land after the batch.
    const release = await holdEvents(p);
    await p.evaluate(() => {
      const cut = '😀'.slice(0, 1);
      window.Sori('track', 'First22');
      window.Sori('track', 'Cut22b', { s: cut });
      window.Sori('track', 'Last22');
      window.Sori('addTags', ['left22']);
      location.href = '/shop/fresh/left22';
    });
    await p.waitForURL('**/shop/fresh/left22');
    await eventsWith(id, 'Last22');
    release();
    // First22 goes out alone and may land after the rest (docs/sdk.md); the rest go
    // together, in order.
    const after = await until('First22 and Last22', async () => {
      const list = await events(id);
      return ['First22', 'Last22'].every((n) => list.some((e) => e.name === n)) ? list : null;
    });
    const names = after.map((e) => e.name).reverse();
    assert.deepEqual(
      names.filter((n) => n !== 'PageView').sort(),
      ['Cut22', 'Cut22b', 'First22', 'Last22'],
      'calls sent as the page was left',
    );
    assert.ok(names.indexOf('Cut22b') < names.indexOf('Last22'), 'in order');
    const tags = await until('tag left22', async () => ((await getUser(id)).tags.includes('left22') ? true : null));
    assert.ok(tags);
    await c.close();
    return `user ${id}: ${after.map((e) => e.name).join(',')}`;
  });

  step('23 calls queued before sori.js keep the URL they were made at', async () => {
    const results = [];
    // [path, loader, the PageViews' pages, Cta23's page] for a landing at path?utm_….
    const cases = [
      // Cleans its URL and routes on before load: the boot's view is the landing page,
      // the page routed to is a view of its own, the queued track keeps its URL.
      ['/shop/utm', 'new', (l, o) => [l, `${o}/shop/utm/home`], (l) => l],
      // Only cleans its URL, with a canonical link: one view, of the canonical page.
      ['/shop/canon', 'new', (l, o) => [`${o}/canonical/canon23`], () => `${pagesOrigin}/canonical/canon23`],
      // A loader from before 2026-12-01 (no URL per call), only cleaning its URL: the boot
      // takes the URL the document was loaded at; a queued track the URL at replay.
      ['/shop/old', 'old', (l) => [l], (l, o) => `${o}/shop/old`],
      // Moves to another query before load: another page, a view of its own.
      ['/shop/search', 'new', (l, o) => [l, `${o}/shop/search?q=b`], (l) => l],
    ];
    for (const [path, loader, views, ctaPage] of cases) {
      const c = await browser.newContext();
      const p = await c.newPage();
      watch(p);
      const landing = `${pagesOrigin}${path}?utm_source=news23&utm_campaign=dec23`;
      await p.goto(landing);
      await p.waitForFunction(() => window.__boot23 !== undefined, null, { timeout: WAIT_MS });
      const boot = await p.evaluate(() => window.__boot23);
      assert.equal(boot.error, null, `${path}: boot error`);
      const id = boot.user.id;
      const user = await getUser(id);
      assert.deepEqual(
        [user.profile.utmSource, user.profile.utmCampaign, user.profile.lastUtmSource],
        ['news23', 'dec23', 'news23'],
        `${path}: UTM of the landing URL`,
      );
      const want = views(landing, pagesOrigin).sort();
      const list = await until(`${path}: ${want.length} PageViews`, async () => {
        const l = await events(id);
        return named(l, 'PageView').length >= want.length && named(l, 'Cta23').length ? l : null;
      });
      // A spurious view would be sent after a render, so before a marker sent past it.
      await pastRender(p);
      await sdk(p, 'track', 'End23');
      const again = await eventsWith(id, 'End23');
      assert.deepEqual(named(again, 'PageView').map((e) => e.page).sort(), want, `${path}: PageViews`);
      assert.equal(named(list, 'Cta23')[0].page, ctaPage(landing, pagesOrigin), `${path}: Cta23`);
      results.push(`${path} (${loader} loader): user ${id}`);
      await c.close();
    }
    return results.join(', ');
  });

  for (const [name, fn] of steps) {
    try {
      const summary = await fn();
      console.log(`ok   ${name}: ${summary}`);
    } catch (err) {
      console.error(`FAIL ${name}: ${err.message}`);
      if (err instanceof assert.AssertionError) {
        console.error(`  expected: ${inspect(err.expected, { depth: 6 })}`);
        console.error(`  actual:   ${inspect(err.actual, { depth: 6 })}`);
      } else if (err.stack) {
        console.error(err.stack);
      }
      if (pageErrors.length) console.error(`  page errors: ${pageErrors.join('; ')}`);
      return false;
    }
  }
  return true;
}

async function main() {
  const server = await startPageServer();
  const pagesOrigin = `http://127.0.0.1:${server.address().port}`;
  let browser;
  let ok = false;
  try {
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
    ok = await run(browser, pagesOrigin);
  } catch (err) {
    console.error(`browser.mjs: ${err.stack || err}`);
  } finally {
    if (browser) await browser.close().catch(() => {});
    server.closeAllConnections();
    server.close();
  }
  process.exit(ok ? 0 : 1);
}

main();
