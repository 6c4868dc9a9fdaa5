/*! Sori web SDK. Protocol: docs/sdk.md. Plain ES2017, no dependencies. */
(function () {
  'use strict';

  var w = window;
  // Loaded twice (two loader snippets): keep the first instance.
  if (w.Sori && w.Sori.__soriSdk) return;

  // The server is wherever this script came from. currentScript is only set while the
  // script runs for the first time, so read it now.
  var ORIGIN = (function () {
    var el = document.currentScript;
    if (!el || !el.src) {
      var all = document.querySelectorAll('script[src*="/sdk/sori.js"]');
      el = all[all.length - 1];
    }
    try {
      return new URL(el.src, location.href).origin;
    } catch (e) {
      return location.origin;
    }
  })();

  var VEIL_KEY = 'sori:veilId';
  var MAX_PENDING_CALLS = 100;

  // The one session object: a future WebSocket client reads `token` and `user` from here.
  var session = {
    origin: ORIGIN,
    pluginKey: null,
    veilId: null,
    token: null, // the `session` string from boot, sent as x-sori-session
    user: null,
    options: null, // the boot option (hidePopup, zIndex… for the messenger UI)
    callbacks: {}, // onShowMessenger & co., by event name
  };

  // 'idle' (never booted), 'booting', 'booted', 'off' (shut down or boot failed).
  var state = 'idle';
  var generation = 0; // bumped by every boot and shutdown; stale responses are ignored
  var shutdowns = 0; // tells a boot replaced by a later boot from one ended by shutdown
  // Calls made while no session exists yet (before the first boot, or while a boot is on
  // its way, also one that replaced an earlier boot): sent once a boot succeeds.
  var pending = [];
  var queue = []; // requests waiting their turn: one runs at a time, in call order
  var running = false;
  var leaving = false; // the page is being left: requests go out at once (see flushQueue)
  var leavingItems = []; // calls made while leaving, sent together at the end of the task
  var leavingBytes = 0; // keepalive bytes sent since the page began to be left
  var inFlightBytes = 0; // keepalive bytes of the requests on their way
  // Bytes of a boot waiting for the new-visitor lock, kept free in a page being left's
  // keepalive budget: the boot goes out as the page goes, after the calls (asOneVisitor).
  var waitingBootBytes = 0;
  // Calls were left unsent as the page went: later ones are not sent either, so what is
  // sent stays the calls' first part.
  var leavingFull = false;
  var renewedTokens = {}; // a lost session's token → the token of the boot that renewed it
  var KEEPALIVE_MAX_BYTES = 60000; // under the browser's 64 KB for keepalive requests
  var renewing = null; // the quiet re-boot on its way, shared by the calls that need it
  var LOCK_WAIT_MS = 5000;
  var REQUEST_TIMEOUT_MS = 15000;
  // What POST /sdk/v1/calls takes: more than the 64 KB budget can hold, so what a page
  // being left sends of one session goes as one request, applied in order.
  var MAX_CALLS_PER_REQUEST = 2000;
  var CALLS_ENVELOPE_BYTES = 20; // `,"calls":[…]` and braces around a request's calls
  var NOT_SENT = 'not sent: the page was left with more calls than its last requests carry (64 KB)';
  var pageOverride = null;
  var spa = { tracking: false, installed: false, lastHref: null, pending: false };
  var memoryVeil = null;

  // ---------------------------------------------------------------- helpers

  function warn(msg) {
    if (w.console && console.warn) console.warn('[Sori] ' + msg);
  }

  // Runs a user callback; its exceptions are reported but never reach the SDK.
  function safeCall(fn, a, b) {
    if (typeof fn !== 'function') return;
    try {
      fn(a, b);
    } catch (e) {
      if (w.console && console.error) console.error('[Sori] callback threw', e);
    }
  }

  function sdkError(message, status) {
    var err = new Error(message);
    err.status = status || 0;
    return err;
  }

  // The error a refused call reports, from the server's error body (`data`, may be null):
  // a request's answer, or one call's result inside `POST /sdk/v1/calls`.
  function answerError(status, data) {
    var err = sdkError((data && data.message) || 'HTTP ' + status, status);
    if (data) {
      err.type = data.type;
      err.errors = data.errors;
    }
    return err;
  }

  // Gives `options` a timeout signal where the browser has one; returns `options`.
  function withTimeout(options, ms) {
    if (typeof AbortSignal !== 'undefined' && typeof AbortSignal.timeout === 'function') {
      options.signal = AbortSignal.timeout(ms);
    }
    return options;
  }

  // The newest token for a session that lost its user and was renewed (perhaps twice).
  function latestToken(token) {
    while (renewedTokens[token]) token = renewedTokens[token];
    return token;
  }

  // The stored visitor id, when it is one the server takes (1-64 letters, digits, `-`,
  // `_`): one some other script or an older version wrote is forgotten, and the visitor
  // starts anew under the new-visitor lock, instead of every boot of the page and of the
  // quiet boot beside it each making a visitor of its own.
  function loadVeil() {
    var stored;
    try {
      stored = w.localStorage.getItem(VEIL_KEY);
    } catch (e) {
      return memoryVeil;
    }
    if (stored && !/^[A-Za-z0-9_-]{1,64}$/.test(stored)) {
      // Written over by something else while this page knows its visitor: that id is put
      // back, or the next page would start another visitor.
      var known = memoryVeil || session.veilId;
      warn('the stored visitor id is not one Sori makes; ' +
        (known ? 'storing this page\'s again' : 'starting as a new visitor'));
      try {
        if (known) w.localStorage.setItem(VEIL_KEY, known);
        else w.localStorage.removeItem(VEIL_KEY);
      } catch (e) {
        // Storage disabled meanwhile: nothing more to do.
      }
      return known;
    }
    return stored || memoryVeil;
  }

  // A new visitor's id, made in the browser so that it can be stored before the boot that
  // creates the visitor is sent (see asOneVisitor). 128 random bits, as hex.
  function newVeil() {
    var bytes = new Uint8Array(16);
    var c = w.crypto;
    if (c && typeof c.getRandomValues === 'function') {
      c.getRandomValues(bytes);
    } else {
      for (var i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
    }
    var id = '';
    for (var j = 0; j < bytes.length; j++) id += (bytes[j] + 256).toString(16).slice(1);
    saveVeil(id);
    return id;
  }

  function saveVeil(id) {
    memoryVeil = id;
    try {
      w.localStorage.setItem(VEIL_KEY, id);
    } catch (e) {
      // Storage disabled or full: the in-memory copy lasts for this page.
    }
  }

  // JSON of a request body, or null (with a warning) for values JSON cannot hold.
  function serialize(what, body) {
    try {
      return JSON.stringify(body);
    } catch (e) {
      warn(what + ': ' + e.message);
      return null;
    }
  }

  // The URL a call replayed from the loader's queue was made at (see the replay at the
  // end); null while a call is made live. A site may clean its URL of utm_* parameters or
  // route elsewhere before this script loads (the loader waits for the page's `load`).
  var callUrl = null;

  function hrefWithoutHash() {
    return (callUrl || location.href).split('#')[0];
  }

  // Whether two URLs are the same page but for their utm_* parameters and fragment: a site
  // cleaning utm_* from its URL stays on the page; a router moving on, to another path or
  // another query (a search app's `?q=`), does not.
  function samePage(a, b) {
    try {
      var x = new URL(a, location.href);
      var y = new URL(b, location.href);
      var rest = function (u) {
        var kept = [];
        u.searchParams.forEach(function (v, k) {
          if (k.indexOf('utm_') !== 0) kept.push(k + '=' + v);
        });
        return kept.sort().join('&');
      };
      return x.origin === y.origin && x.pathname === y.pathname && rest(x) === rest(y);
    } catch (e) {
      return false;
    }
  }

  // The page of an event: setPage's value, else the canonical URL, else the URL without hash.
  function currentPage() {
    if (pageOverride != null) return pageOverride;
    // A queued call made on another page of this document (a router moved on before this
    // script loaded): that page, since the canonical link now describes the one moved to.
    if (callUrl && !samePage(callUrl, location.href)) return hrefWithoutHash();
    var link = document.querySelector('link[rel~="canonical"][href]');
    // `.href` is absolute; a fragment is no more a page of its own here than in the URL.
    if (link && link.getAttribute('href')) return link.href.split('#')[0];
    return hrefWithoutHash();
  }

  // The page that sent the visitor here, when it is another site's: a link between the
  // site's own pages says nothing about where the visitor came from, and the referrer
  // field is set once, so an internal page would stick for good.
  function externalReferrer() {
    var ref = document.referrer;
    if (!ref) return null;
    try {
      if (new URL(ref).host === location.host) return null;
    } catch (e) {
      return null;
    }
    return ref;
  }

  // utm_* query parameters that are present and non-empty; null when there are none.
  function utmFromLocation() {
    var search = location.search;
    try {
      if (callUrl) search = new URL(callUrl, location.href).search;
    } catch (e) {
      // Not a URL: the current one's parameters, as for a live call.
    }
    var params = new URLSearchParams(search);
    var utm = {};
    var any = false;
    ['source', 'medium', 'campaign', 'content', 'term'].forEach(function (k) {
      var v = params.get('utm_' + k);
      if (v) {
        utm[k] = v;
        any = true;
      }
    });
    return any ? utm : null;
  }

  // One JSON request to the server. Resolves with the parsed body; rejects with an Error
  // carrying `.status` (0 for network failures) and the server's `.message`.
  // `json` is the already serialized body, so later changes to the caller's objects
  // do not leak into a queued request.
  // `simple` sends it as a CORS simple request (text/plain, no custom header), which needs
  // no preflight: a page being left gets no answer to one.
  function request(method, path, json, token, keepalive, simple) {
    var headers = { 'content-type': simple ? 'text/plain' : 'application/json' };
    if (token) headers['x-sori-session'] = token;
    var options = {
      method: method,
      mode: 'cors',
      credentials: 'omit',
      keepalive: !!keepalive,
      headers: headers,
      body: json,
    };
    // A request that never answers would hold the one-at-a-time queue for good.
    withTimeout(options, REQUEST_TIMEOUT_MS);
    return fetch(ORIGIN + path, options).then(
      function (res) {
        return res.text().then(function (text) {
          var data = null;
          var parsed = true;
          try {
            data = text ? JSON.parse(text) : null;
          } catch (e) {
            parsed = false;
          }
          // A 2xx that is not Sori's JSON came from something in between (a captive
          // portal, a proxy's page): taking it as success would leave the SDK without
          // a session.
          if (res.ok && (!parsed || (data !== null && typeof data !== 'object'))) {
            throw sdkError('unexpected answer from ' + path + ' (not JSON)', res.status);
          }
          if (!res.ok) throw answerError(res.status, data);
          return data || {};
        });
      },
      function (e) {
        throw sdkError((e && e.message) || 'network error', 0);
      }
    );
  }

  // Appends a request to the queue. `boot` marks a boot's; every other request has a
  // `call`, what a page being left sends in its place (see flushQueue): `{token, json,
  // settle(result)}`. A failed request never stops the ones after it.
  function enqueue(run, boot, call) {
    var item = { run: run, boot: !!boot, call: call };
    if (leaving && !boot) {
      leavingItems.push(item);
      if (leavingItems.length === 1) Promise.resolve().then(sendLeaving);
      return;
    }
    queue.push(item);
    pump();
  }

  function runTask(task) {
    return Promise.resolve()
      .then(task)
      .catch(function (e) {
        warn(e && e.message ? e.message : String(e));
      });
  }

  function pump() {
    if (running || !queue.length) return;
    running = true;
    runTask(queue.shift().run).then(function () {
      running = false;
      pump();
    });
  }

  // A page being left cannot wait for each request's answer before sending the next:
  // only the request on its way would survive the unload. What is queued goes out at once
  // instead, as `POST /sdk/v1/calls` with keepalive: one request per session keeps the
  // calls' order (separate requests could be applied in any order) and the browser's
  // 64 KB budget for requests that outlive their page. Calls made while leaving (the
  // site's own pagehide handler) follow the same way. A queued boot and what follows it
  // stay queued: they wait for a session the page will not live to use. A page kept in
  // the back/forward cache comes back to the one-at-a-time queue.
  function flushQueue() {
    leaving = true;
    leavingFull = false;
    leavingBytes = inFlightBytes;
    var items = [];
    while (queue.length && !queue[0].boot) items.push(queue.shift());
    sendAtOnce(items);
    sendWithBoot();
  }

  // Calls made while a boot has not answered yet wait for its session, which a page being
  // left will not live to see. They go instead with a quiet boot of the same visitor
  // (same stored veilId, member and hash; no visit, no PageView): the server boots it and
  // applies them as that session's, in order. The first boot, on its way or sent as the
  // page goes, still counts the visit; the two land on one user.
  function sendWithBoot() {
    if (state !== 'booting' || !pending.length || !session.options) return;
    // A new visitor whose boot still waits for the lock has no stored id yet: made now,
    // so that the first boot, sent next, names the same one.
    if (!namesMember(session.options) && !loadVeil()) newVeil();
    // With the site's profile and language, as the first boot has them (a boot that
    // waited behind another request is not sent at all): the server leaves out a part it
    // refuses, not these calls (a partial boot).
    var json = serialize('boot', quietBootBody(session.options));
    if (json === null) return;
    var calls = takePending().map(function (waiting) {
      return waiting.call;
    });
    postFitting('/sdk/v1/boot', json.slice(0, -1), calls);
  }

  // Posts `head` (an unclosed JSON object) with `,"calls":[…]}` appended, with keepalive,
  // and settles each call with its result. The calls (`{json, settle}`) are the first
  // part of `calls` that fits what a page being left may still send with keepalive, at
  // most MAX_CALLS_PER_REQUEST of them; the rest cannot outlive the page and are settled
  // as not sent, with a warning, however small a later one is.
  function postFitting(path, head, calls) {
    var room = KEEPALIVE_MAX_BYTES - leavingBytes - waitingBootBytes;
    var size = byteLength(head) + CALLS_ENVELOPE_BYTES;
    var fit = [];
    var unsent = 0;
    calls.forEach(function (call) {
      var n = byteLength(call.json) + 1;
      if (leavingFull || unsent || size + n > room || fit.length >= MAX_CALLS_PER_REQUEST) {
        unsent++;
        call.settle({ status: 0, error: { message: NOT_SENT } });
        return;
      }
      fit.push(call);
      size += n;
    });
    if (unsent) {
      leavingFull = true;
      warn(unsent + ' calls ' + NOT_SENT);
    }
    if (!fit.length) return;
    leavingBytes += size;
    var json =
      head +
      ',"calls":[' +
      fit.map(function (call) { return call.json; }).join(',') +
      ']}';
    request('POST', path, json, null, true, true).then(
      function (data) {
        var results = (data && data.results) || [];
        fit.forEach(function (call, i) {
          call.settle(results[i] || { status: 0 });
        });
      },
      function (err) {
        fit.forEach(function (call) {
          call.settle({ status: err.status, error: { message: err.message } });
        });
      }
    );
  }

  w.addEventListener('pagehide', flushQueue);
  w.addEventListener('pageshow', function () {
    leaving = false;
  });

  function sendLeaving() {
    var items = leavingItems;
    leavingItems = [];
    sendAtOnce(items);
  }

  // Sends `items` (calls, no boot) at once: each run of calls of one session as batches.
  function sendAtOnce(items) {
    var run = [];
    var flush = function () {
      if (run.length) sendCalls(run);
      run = [];
    };
    items.forEach(function (item) {
      if (run.length && run[0].call.token !== item.call.token) flush();
      run.push(item);
    });
    flush();
  }

  // Posts calls of one session as one request, applied in order, of what fits a
  // keepalive request (see postFitting): the browser's 64 KB budget is for all keepalive
  // requests in flight together, so the calls past it cannot outlive the page.
  function sendCalls(items) {
    var calls = items.map(function (item) {
      return item.call;
    });
    postFitting('/sdk/v1/calls', '{"session":' + JSON.stringify(latestToken(calls[0].token)), calls);
  }

  // Bytes of a string as UTF-8.
  function byteLength(s) {
    if (typeof TextEncoder === 'function') return new TextEncoder().encode(s).length;
    return s.length * 3;
  }

  // Runs `send(token)` with the session token once one exists:
  // - booted: now (in order), with the current token;
  // - never booted, or booting: after the boot that succeeds, in order. A boot that
  //   replaces one on its way (an anonymous boot, then the member's after sign-in) takes
  //   the calls over, so nothing made between the two is lost;
  // - shut down / boot failed: dropped. `fail(err)` is told when the call is dropped.
  // `call` is the call as `POST /sdk/v1/calls` takes it, for a page being left:
  // `{json, settle(result)}`.
  function withSession(what, send, fail, call) {
    // `why`: the failed boot's error, or words saying why.
    var drop = function (why) {
      var err = why instanceof Error ? why : sdkError(why || 'Sori is not booted', 0);
      warn(what + ' dropped: ' + err.message);
      if (fail) fail(err);
    };
    if (state === 'booted') {
      sendAs(session.token, send, call);
    } else if (state === 'booting' || state === 'idle') {
      if (pending.length >= MAX_PENDING_CALLS) {
        drop('more than ' + MAX_PENDING_CALLS + ' calls are waiting for a boot');
        return;
      }
      pending.push({ send: send, drop: drop, call: call });
      // Made as the page goes (a site's own pagehide handler, after the SDK's): with a
      // boot of their own, as the calls that waited before them went.
      if (leaving) Promise.resolve().then(sendWithBoot);
    } else {
      drop();
    }
  }

  // Queues `send` for the session `token`.
  function sendAs(token, send, call) {
    enqueue(
      function () {
        return send(token);
      },
      false,
      { token: token, json: call.json, settle: call.settle }
    );
  }

  // Hands the waiting calls over, in the order they were made.
  function takePending() {
    var calls = pending;
    pending = [];
    return calls;
  }

  // Sends the calls that waited for this session.
  function sendPending() {
    var token = session.token;
    takePending().forEach(function (call) {
      sendAs(token, call.send, call.call);
    });
  }

  // Drops the calls that waited for a boot, telling each `why`.
  function dropPending(why) {
    takePending().forEach(function (call) {
      call.drop(why);
    });
  }

  // ---------------------------------------------------------------- SPA page views

  // Runs `fn` once the page has rendered after a navigation: after the next frame (and
  // the tasks queued before it), or after 100 ms where frames do not come (a hidden tab).
  function afterRender(fn) {
    var done = false;
    var once = function () {
      if (done) return;
      done = true;
      fn();
    };
    if (typeof w.requestAnimationFrame === 'function' && document.visibilityState !== 'hidden') {
      w.requestAnimationFrame(function () {
        setTimeout(once, 0);
      });
    }
    setTimeout(once, 100);
  }

  // One PageView per navigation, sent once the page has rendered: routers update the
  // page's head (the canonical link) after pushState, in the same task, a later one or
  // the next frame; and a redirect (pushState then replaceState) ends on the page that
  // was shown. A `track` made right after navigating is sent before this PageView.
  function onUrlMaybeChanged() {
    if (!spa.tracking || spa.pending) return;
    var gen = generation;
    spa.pending = true;
    afterRender(function () {
      spa.pending = false;
      if (!spa.tracking || gen !== generation) return;
      var href = hrefWithoutHash();
      if (href === spa.lastHref) return; // only the fragment changed, or nothing did
      spa.lastHref = href;
      track('PageView');
    });
  }

  function installSpaHooks() {
    if (spa.installed) return;
    spa.installed = true;
    ['pushState', 'replaceState'].forEach(function (name) {
      var original = history[name];
      if (typeof original !== 'function') return;
      history[name] = function () {
        var result = original.apply(this, arguments);
        try {
          onUrlMaybeChanged();
        } catch (e) {
          warn('page view tracking failed: ' + e.message);
        }
        return result;
      };
    });
    w.addEventListener('popstate', onUrlMaybeChanged);
  }

  // ---------------------------------------------------------------- methods

  function boot(option, cb) {
    // A refused boot leaves the running session as it was.
    if (!option || typeof option !== 'object' || !option.pluginKey) {
      warn('boot needs { pluginKey }');
      safeCall(cb, sdkError('pluginKey is required', 0), null);
      return;
    }
    if (state === 'booting' || state === 'booted') endSession();
    option = templated(option);

    var gen = ++generation;
    var shutdownsThen = shutdowns;
    state = 'booting';
    session.pluginKey = option.pluginKey;
    session.options = option;
    var body = bootBody(option, null);

    // The server records the boot's own PageView; later URL changes are ours to send.
    spa.tracking = body.trackDefaultEvent;
    spa.lastHref = hrefWithoutHash();
    if (spa.tracking) installSpaHooks();

    // Why a boot's answer is not used: a later boot or a shutdown came first.
    var cancelled = function () {
      return sdkError(
        shutdowns !== shutdownsThen ? 'boot cancelled by shutdown' : 'boot replaced by a later boot',
        0
      );
    };
    enqueue(function () {
      if (gen !== generation) {
        safeCall(cb, cancelled(), null);
        return;
      }
      // Read when sent, not when called: a boot that waited for an earlier one (an
      // anonymous boot, then the member's after sign-in) continues the visitor that one
      // created, so the member gets its history instead of leaving it behind.
      body.veilId = loadVeil() || undefined;
      session.veilId = body.veilId || null;
      return asOneVisitor(body, function () {
        // A boot that waited for the new-visitor lock may have been ended by a shutdown
        // meanwhile: it is not sent. One replaced by a later boot is (the later boot waits
        // behind it, and takes over the visitor it creates).
        if (shutdowns !== shutdownsThen) return Promise.reject(cancelled());
        return requestBoot(body).then(requireSession);
      }).then(
        function (data) {
          if (gen !== generation) {
            // Replaced by a later boot or ended by shutdown: the visitor it created is
            // still this browser's (shutdown keeps the stored id), so the next boot takes
            // it, whether or not this answer came in time.
            if (data.veilId) saveVeil(data.veilId);
            safeCall(cb, cancelled(), null);
            return;
          }
          state = 'booted';
          adopt(data);
          // Before the callback: what it calls comes after what waited for the boot.
          sendPending();
          safeCall(cb, null, session.user);
        },
        function (err) {
          if (gen !== generation) {
            safeCall(cb, cancelled(), null);
            return;
          }
          warn('boot failed: ' + err.message);
          safeCall(cb, err, null);
          state = 'off';
          spa.tracking = false;
          dropPending(err);
        }
      );
    }, true);
  }

  // A boot answer, which must carry a session: without one every later call would fail.
  function requireSession(data) {
    if (typeof data.session !== 'string') throw sdkError('boot answer without a session', 0);
    return data;
  }

  // The body of a boot request for `option`, as the visitor `veilId` (none for a new one).
  function bootBody(option, veilId) {
    var body = {
      pluginKey: option.pluginKey,
      veilId: veilId || undefined,
      // A member id kept as a number (a database id) is its digits, as in the Segment API.
      memberId: Number.isSafeInteger(option.memberId) ? String(option.memberId) : option.memberId,
      memberHash: option.memberHash,
      profile: option.profile,
      // The browser's language setting unless the site names one (kept for new users only).
      language: siteLanguage(option) || browserLanguage(),
      unsubscribeEmail: option.unsubscribeEmail,
      unsubscribeTexting: option.unsubscribeTexting,
      page: currentPage(),
      trackDefaultEvent: option.trackDefaultEvent !== false,
      // Refused parts are left out by the server, not the boot (see requestBoot): a boot
      // refused as the page is left could not be sent again.
      partial: true,
    };
    if (option.trackUtmSource !== false) {
      var utm = utmFromLocation();
      if (utm) body.utm = utm;
      var ref = externalReferrer();
      if (ref) body.referrer = ref;
    }
    return body;
  }

  // Whether boot options (or a boot's body) name a member.
  function namesMember(option) {
    return option.memberId != null && option.memberId !== '';
  }

  // Boot options as a template may render them, read as meant (each with a warning):
  // a member id of white space only (a signed-out visitor) as none, and the texts
  // 'true'/'false' as the unsubscribe flags' booleans. Refused by the server, either would
  // switch the SDK off for the page. A copy: the site's object is left as it is.
  function templated(option) {
    var o = {};
    // Inherited options too (a site may build them with Object.create(defaults)).
    for (var k in option) o[k] = option[k];
    var id = o.memberId;
    if (typeof id === 'string' && id !== '') {
      // White space, or characters that show nothing (U+200B…), only: a blank.
      if (id.replace(/[\u200b-\u200d\u2060\ufeff]/g, '').trim() === '') {
        warn('memberId is blank; booting as an anonymous visitor');
        delete o.memberId;
        delete o.memberHash;
      } else if (id !== id.trim()) {
        warn('memberId "' + id + '" has white space around it; booting as "' + id.trim() + '"');
        o.memberId = id.trim();
      }
    }
    // Once per boot() (quiet boots reuse these options): one warning each.
    ['unsubscribeEmail', 'unsubscribeTexting', 'trackDefaultEvent', 'trackUtmSource'].forEach(function (name) {
      o[name] = textBool(o, name);
    });
    return o;
  }

  // option[name], with the text 'true' or 'false' a template rendered (which, as a
  // non-empty string, would read as on) as its boolean, in any case and spacing, and an
  // empty text (PHP renders false so) as not given; each with a warning.
  function textBool(option, name) {
    var v = option[name];
    if (typeof v !== 'string') return v;
    var t = v.trim().toLowerCase();
    if (t !== 'true' && t !== 'false' && t !== '') return v;
    warn(name + ' should be true or false, not the text "' + v + '"');
    return t === '' ? undefined : t === 'true';
  }

  // The site's `language` when it is a tag the server takes; one it would refuse falls
  // back to the browser's, with a warning, as if none had been given.
  function siteLanguage(option) {
    if (option.language == null || option.language === '') return undefined;
    var l = languageTag(option.language);
    if (!l) warn('language "' + option.language + '" is not a language tag; using the browser\'s');
    return l;
  }

  // navigator.language when it is a language tag the server takes (`ko-KR`), else none:
  // the site did not choose it, so it must not fail the boot.
  function browserLanguage() {
    return languageTag(w.navigator && navigator.language);
  }

  // `l` when it is a language tag the server takes (its rule: a primary subtag of 2 or 3
  // letters, then letter-or-digit subtags, at most 35 characters), else none.
  function languageTag(l) {
    var ok = typeof l === 'string' && l.length <= 35 && /^[A-Za-z]{2,3}([-_][A-Za-z0-9]+)*$/.test(l) &&
      !/^(und|zxx)([-_]|$)/i.test(l);
    return ok ? l : undefined;
  }

  // Sends a boot. A veilId the server refuses (a stored value some other script or an
  // older version wrote) would fail every boot in this browser for good, and a refused
  // `profile` or `language` (a key the channel has not registered, say) would switch the
  // SDK off for the whole page. The boot is `partial` (bootBody): the server leaves them
  // out, boots a new visitor for a refused id (whose id the answer brings and `adopt`
  // stores), and counts the visit and the page; the refusals are warned of here.
  function requestBoot(body) {
    var json = serialize('boot', body);
    if (json === null) {
      return Promise.reject(sdkError('boot: the options cannot be sent as JSON', 0));
    }
    return keptAlive('POST', '/sdk/v1/boot', json, null).then(
      function (data) {
        (data && data.refused || []).forEach(function (f) {
          if (f.field === 'veilId') warn('the stored visitor id was refused; the server gave a new one');
          else warn('boot: left out what the server refused: ' + f.field + ': ' + f.message);
        });
        return data;
      },
      function (err) {
        // A server older than partial boots refuses the option itself: sent again without.
        var only = err.status === 400 && err.errors && err.errors.length === 1 &&
          err.errors[0] && err.errors[0].field === 'partial';
        if (!only) throw err;
        body.partial = undefined;
        return keptAlive('POST', '/sdk/v1/boot', JSON.stringify(body), null);
      }
    );
  }

  // Two tabs of a first visit booting at once would each create an anonymous user, and
  // the site would then count one visitor twice. A boot that has no stored visitor id (and
  // names no member) runs under a lock the site's tabs share (Web Locks, where the browser
  // has them, and only where localStorage works: without it tabs cannot share an id
  // anyway); a tab that had to wait for it boots as the visitor the first tab stored. A
  // lock that cannot be had (an opaque origin refuses it) is done without. A tab that has
  // waited LOCK_WAIT_MS (the holder's boot is stuck on a bad connection) queues for the
  // next lock of a series instead, so the tabs behind a stuck one still boot as one
  // visitor among themselves.
  //
  // A new visitor's id is made and stored before its boot is sent: when the page is left
  // before the answer arrives, the next page's boot continues that visitor (and its
  // landing page, UTM and referrer) instead of starting another.
  function asOneVisitor(body, send) {
    var locks = w.navigator && navigator.locks;
    var member = namesMember(body);
    var sendAsVisitor = function () {
      if (!body.veilId && !member) body.veilId = newVeil();
      return send();
    };
    if (body.veilId || member || !locks || typeof locks.request !== 'function' || !storageWorks()) {
      return sendAsVisitor();
    }
    var entered = false;
    var sending = null; // the boot, once sent (by the lock's holder, or as the page is left)
    // Its id, the one thing it may still gain, is at most 60 bytes more.
    waitingBootBytes = byteLength(serialize('boot', body) || '') + 60;
    var unlocked = function () {
      if (!sending) {
        waitingBootBytes = 0;
        w.removeEventListener('pagehide', leave);
        body.veilId = loadVeil() || undefined;
        sending = sendAsVisitor();
      }
      return sending;
    };
    // A boot still waiting for the lock when the page is left would be lost with the page:
    // it goes at once instead (with the id another tab may have stored meanwhile).
    var leave = function () {
      entered = true;
      unlocked();
    };
    w.addEventListener('pagehide', leave);
    var underLock = function (waited) {
      entered = true;
      // The other tab stored its visitor before releasing the lock, but another tab's
      // localStorage write reaches this one a moment later.
      return (waited ? storedVeilSoon() : Promise.resolve())
        .then(unlocked)
        .then(function (data) {
          // Stored before the lock is released, so the next tab finds it.
          if (data.veilId) saveVeil(data.veilId);
          return data;
        });
    };
    var WAIT = {};
    var attempt = function (n) {
      var name = 'sori:new-visitor:' + n;
      return locks
        .request(name, { ifAvailable: true }, function (lock) {
          return lock ? underLock(n > 0) : WAIT;
        })
        .then(function (result) {
          if (result !== WAIT) return result;
          var options = withTimeout({}, LOCK_WAIT_MS);
          return locks
            .request(name, options, function () {
              return underLock(true);
            })
            .catch(function (err) {
              var waitedOut = err && (err.name === 'TimeoutError' || err.name === 'AbortError');
              if (entered || !waitedOut || n >= 2) throw err;
              return attempt(n + 1);
            });
        });
    };
    var locked;
    try {
      locked = attempt(0);
    } catch (e) {
      return unlocked();
    }
    return locked.catch(function (err) {
      // A boot sent as the page was left answers for itself, whatever became of the lock.
      if (sending) return sending;
      if (entered) throw err;
      return unlocked();
    });
  }

  // Whether localStorage can be written (not blocked, not full, not a throwing getter).
  function storageWorks() {
    try {
      var probe = 'sori:probe';
      w.localStorage.setItem(probe, '1');
      w.localStorage.removeItem(probe);
      return true;
    } catch (e) {
      return false;
    }
  }

  // Resolves once a visitor id is stored, or after 500 ms (the other tab's boot failed).
  function storedVeilSoon() {
    return new Promise(function (resolve) {
      var deadline = Date.now() + 500;
      (function poll() {
        if (loadVeil() || Date.now() >= deadline) resolve();
        else setTimeout(poll, 10);
      })();
    });
  }

  // Takes a boot answer's session, user and visitor id.
  function adopt(data) {
    session.token = data.session || null;
    session.user = data.user || null;
    if (data.veilId) {
      session.veilId = data.veilId;
      saveVeil(data.veilId);
    }
  }

  // A request on the session. Its user can be gone: merged into a member (this visitor
  // booted as one in another tab) or deleted, and the server answers 404 `userGone`; or
  // the channel has come to require member hashes since a member session was opened
  // without one (401 `memberHashRequired`). The SDK then boots again with the same
  // options, quietly (no second PageView, no second visit), and sends the call once more;
  // a call queued with a session that was renewed since goes out with the new one. Requests are sent with keepalive (so the one on its
  // way survives the page being left) when they fit its budget.
  function sessionRequest(method, path, json, token) {
    token = latestToken(token);
    return keptAlive(method, path, json, token).catch(function (err) {
      var lost = err.type === 'userGone' || err.type === 'memberHashRequired';
      if (!lost || state !== 'booted' || !session.options) throw err;
      var gen = generation;
      var renewed = token !== session.token ? Promise.resolve() : renew(gen);
      return renewed.then(function () {
        if (gen !== generation || state !== 'booted') throw err;
        return keptAlive(method, path, json, session.token);
      });
    });
  }

  // A request sent with keepalive when it fits the budget, so that it survives the page
  // being left; its bytes count against the budget a page being left shares (see
  // sendCalls) while it is on its way. Without a session token it goes as a CORS
  // "simple" request: no preflight to wait for before the page may be left.
  function keptAlive(method, path, json, token) {
    var bytes = byteLength(json);
    // The browser refuses a keepalive request past the budget the ones on their way share
    // (while the page is being left, that includes the calls sent as it went).
    var used = leaving ? Math.max(inFlightBytes, leavingBytes) : inFlightBytes;
    var keepalive = used + bytes <= KEEPALIVE_MAX_BYTES;
    if (keepalive) {
      inFlightBytes += bytes;
      if (leaving) leavingBytes += bytes;
    }
    var settled = function () {
      if (keepalive) inFlightBytes -= bytes;
    };
    var sent = request(method, path, json, token, keepalive, !token);
    sent.then(settled, settled);
    return sent;
  }

  // Boots again for the current session, which was found lost, once for all the calls
  // that found it lost.
  function renew(gen) {
    if (!renewing) {
      var lost = session.token;
      renewing = requestBoot(quietBootBody(session.options))
        .then(requireSession)
        .then(
          function (data) {
            if (gen === generation && state === 'booted') {
              renewedTokens[lost] = data.session;
              adopt(data);
            }
          },
          function (err) {
            // Refused (the options hold no valid member hash): the session is over, and
            // later calls are dropped at once instead of each failing with a boot.
            if (err.status === 401 && gen === generation && state === 'booted') {
              warn('session ended: ' + err.message);
              endSession();
            }
            throw err;
          }
        );
      var done = function () {
        renewing = null;
      };
      renewing.then(done, done);
    }
    return renewing;
  }

  // A boot that renews a lost session: the page and the visit were counted by the first.
  function quietBootBody(option) {
    var body = bootBody(option, loadVeil());
    body.trackDefaultEvent = false;
    body.visit = false;
    delete body.utm;
    delete body.referrer;
    return body;
  }

  // Ends the session; calls waiting for one stay for the next boot.
  function endSession() {
    generation++;
    state = 'off';
    session.token = null;
    session.user = null;
    session.options = null;
    spa.tracking = false;
  }

  function shutdown() {
    shutdowns++;
    endSession();
    dropPending('cancelled by shutdown');
  }

  function track(name, property) {
    if (typeof name !== 'string' || !name) {
      warn('track needs an event name');
      return;
    }
    // The page is the one at call time, not at send time.
    var json = serialize('track', {
      name: name,
      property: property == null ? undefined : property,
      page: currentPage(),
    });
    if (json === null) return;
    withSession(
      'track(' + name + ')',
      function (token) {
        // `track` has no callback: the warning is the site's only clue, so it names the call.
        return sessionRequest('POST', '/sdk/v1/events', json, token).catch(function (err) {
          warn('track(' + name + ') failed: ' + err.message);
        });
      },
      null,
      { json: '{"track":' + json + '}', settle: noop }
    );
  }

  // PATCH /sdk/v1/user, then cb(error, user).
  function patchUser(what, body, cb) {
    var json = serialize(what, body);
    if (json === null) {
      safeCall(cb, sdkError(what + ': the argument cannot be sent as JSON', 0), null);
      return;
    }
    // The answer's user is the session's only if no boot or shutdown came since the
    // request was sent (`gen`; null: not known): a shutdown and a boot as someone else
    // while it was on its way must not leave the new session with the old user.
    var done = function (gen, data) {
      var current = gen === null || gen === generation;
      if (data.user && state === 'booted' && current) session.user = data.user;
      safeCall(cb, null, data.user || null);
    };
    var failed = function (err) {
      warn(what + ' failed: ' + err.message);
      safeCall(cb, err, null);
    };
    withSession(
      what,
      function (token) {
        return sessionRequest('PATCH', '/sdk/v1/user', json, token).then(done.bind(null, generation), failed);
      },
      function (err) {
        safeCall(cb, err, null);
      },
      {
        json: '{"user":' + json + '}',
        // The call's result inside a `POST /sdk/v1/calls` answer.
        settle: function (r) {
          if (r.status === 200) return done(null, r);
          failed(answerError(r.status, r.error));
        },
      }
    );
  }

  function updateUser(info, cb) {
    patchUser('updateUser', info || {}, cb);
  }

  function addTags(tags, cb) {
    patchUser('addTags', { addTags: tags }, cb);
  }

  function removeTags(tags, cb) {
    patchUser('removeTags', { removeTags: tags }, cb);
  }

  function setPage(page) {
    pageOverride = page == null ? null : String(page);
  }

  function resetPage() {
    pageOverride = null;
  }

  function noop() {}

  function register(key) {
    return function (fn) {
      if (typeof fn === 'function') session.callbacks[key] = fn;
      else delete session.callbacks[key];
    };
  }

  var methods = {
    boot: boot,
    shutdown: shutdown,
    track: track,
    updateUser: updateUser,
    addTags: addTags,
    removeTags: removeTags,
    setPage: setPage,
    resetPage: resetPage,
    // The messenger UI arrives with the chat work; these are accepted meanwhile.
    showMessenger: noop,
    hideMessenger: noop,
    openChat: noop,
    showChannelButton: noop,
    hideChannelButton: noop,
    onShowMessenger: register('showMessenger'),
    onHideMessenger: register('hideMessenger'),
    onBadgeChanged: register('badgeChanged'),
    onChatCreated: register('chatCreated'),
    onUrlClicked: register('urlClicked'),
    clearCallbacks: function () {
      Object.keys(session.callbacks).forEach(function (key) {
        delete session.callbacks[key];
      });
    },
  };

  // ---------------------------------------------------------------- dispatcher

  function Sori(method) {
    if (typeof method !== 'string' || !Object.prototype.hasOwnProperty.call(methods, method)) {
      warn('unknown method: ' + method);
      return;
    }
    var args = Array.prototype.slice.call(arguments, 1);
    try {
      return methods[method].apply(null, args);
    } catch (e) {
      warn(method + ' failed: ' + (e && e.message));
    }
  }
  Sori.__soriSdk = true;

  // Take over from the loader stub, then replay what it queued, in order.
  var stub = w.Sori;
  var queued = stub && stub.q ? Array.prototype.slice.call(stub.q) : [];
  w.Sori = Sori;
  if (stub && typeof stub === 'function') {
    stub.q = [];
    // Someone holding the stub itself still reaches the SDK.
    stub.c = function (args) {
      Sori.apply(null, args);
    };
  }
  // Where a boot queued by an older loader (one that did not note each call's URL) was
  // made, as far as can be told: the URL the document was loaded at when the page is still
  // that one but for its utm_* parameters (the site cleaned them); none when the page moved
  // on (a router, before or after a loader inserted late: which one made the boot is
  // unknown, so the current URL is taken, as before the loader noted URLs).
  function landingUrl() {
    try {
      var nav = performance.getEntriesByType('navigation')[0];
      var url = nav && nav.name;
      return url && samePage(url, location.href) ? url : null;
    } catch (e) {
      return null;
    }
  }
  queued.forEach(function (args) {
    callUrl = typeof args.u === 'string' ? args.u : args[0] === 'boot' ? landingUrl() : null;
    try {
      Sori.apply(null, args);
    } finally {
      callUrl = null;
    }
  });
  // The page shown now, when the site moved on before this script loaded: a view of its
  // own after a router's move; the same page after utm_* were cleaned, so later history
  // calls compare against the URL as it is now.
  var shown = location.href.split('#')[0];
  if (queued.length && spa.tracking && shown !== spa.lastHref) {
    if (samePage(shown, spa.lastHref)) spa.lastHref = shown;
    else onUrlMaybeChanged();
  }
})();
