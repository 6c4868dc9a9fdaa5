//! Operations surface: health, metrics, OpenAPI document, JSON errors for unknown routes,
//! request ids.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Backend, spawn_app};
use reqwest::Method;
use serde_json::json;

async fn ops_endpoints(b: Backend) {
    let app = spawn_app(b).await;
    let r = app.raw(Method::GET, "/healthz", &[], vec![]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["status"], "ok");
    assert!(r.headers.contains_key("x-request-id"));
    // A caller's request id is kept and echoed.
    let r = app
        .raw(
            Method::GET,
            "/healthz",
            &[("x-request-id", "trace-42")],
            vec![],
        )
        .await;
    assert_eq!(r.headers["x-request-id"], "trace-42");
    // One that is not a plain token (it goes into every log line) is replaced.
    let r = app
        .raw(
            Method::GET,
            "/healthz",
            &[("x-request-id", "x\" level=ERROR msg=\"forged")],
            vec![],
        )
        .await;
    let id = r.headers["x-request-id"].to_str().unwrap();
    assert!(!id.contains('"') && !id.is_empty(), "{id}");
    // Method names a client makes up share one metric label: they cannot grow the
    // metrics without bound.
    for i in 0..3 {
        let m = Method::from_bytes(format!("XSORITEST{i}").as_bytes()).unwrap();
        let r = app.raw(m, "/healthz", &[], vec![]).await;
        assert_eq!(r.status, 405);
    }

    app.upsert("m-1", json!({"profile": {"name": "Kim"}})).await;
    let r = app.raw(Method::GET, "/nope", &[], vec![]).await;
    assert_eq!((r.status, r.body["type"].as_str()), (404, Some("notFound")));
    // Requests are counted by the route they matched (the metrics middleware runs after
    // routing), and unrouted ones apart.
    let r = app.raw(Method::GET, "/metrics", &[], vec![]).await;
    let text = r.body.as_str().unwrap();
    assert!(text.contains("sori_http_requests_total"), "{text}");
    assert!(text.contains(r#"route="/open/v5/users/{key}""#), "{text}");
    assert!(text.contains(r#"route="unmatched""#), "{text}");
    assert!(text.contains(r#"method="other""#), "{text}");
    assert!(!text.contains("XSORITEST"), "{text}");
    // The benchmarks' no-op endpoint exists only when the server is started for them.
    let r = app.raw(Method::POST, "/_noop", &[], b"{}".to_vec()).await;
    assert_eq!((r.status, r.body["type"].as_str()), (404, Some("notFound")));
    let r = app.raw(Method::POST, "/healthz", &[], vec![]).await;
    assert_eq!(
        (r.status, r.body["type"].as_str()),
        (405, Some("methodNotAllowed"))
    );
    app.stop().await;
}

/// Every routed public endpoint is described in /openapi.json.
async fn openapi_describes_every_endpoint(b: Backend) {
    let app = spawn_app(b).await;
    let doc = app
        .raw(Method::GET, "/openapi.json", &[], vec![])
        .await
        .body;
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/open/v5/users/@{memberId}", "put"),
        ("/open/v5/users/@{memberId}", "get"),
        ("/open/v5/users/@{memberId}", "delete"),
        ("/open/v5/users/@{memberId}", "patch"),
        ("/open/v5/users/{userId}", "get"),
        ("/open/v5/users/{userId}", "patch"),
        ("/open/v5/users/{userId}", "delete"),
        ("/open/v5/users", "get"),
        ("/open/v5/users", "post"),
        ("/open/v5/profile-fields", "get"),
        ("/open/v5/profile-fields", "post"),
        ("/open/v5/profile-fields/{key}", "patch"),
        ("/open/v5/profile-fields/{key}", "delete"),
        ("/open/v5/channel", "get"),
        ("/open/v5/channel", "patch"),
        ("/desk/v1/login", "post"),
        ("/desk/v1/users/{userId}/reveal", "post"),
        ("/desk/v1/audit/reveals", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} undocumented"
        );
    }
    assert!(doc["components"]["securitySchemes"]["accessKey"].is_object());
    // Operation ids are unique (code generators need them so), and every operation lists
    // the answers it can get whatever its handler does.
    let mut ids = std::collections::HashSet::new();
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            if let Some(id) = op["operationId"].as_str() {
                assert!(
                    ids.insert(id.to_owned()),
                    "{method} {path}: operationId {id} repeated"
                );
            }
        }
    }
    for (path, method, statuses) in [
        (
            "/open/v5/users/{userId}/events",
            "post",
            &[
                "200", "400", "401", "404", "408", "413", "415", "429", "503",
            ][..],
        ),
        (
            "/open/v5/users/{userId}/events",
            "get",
            &["400", "401", "404", "429"],
        ),
        ("/open/v5/events/catalog", "get", &["401", "429", "503"]),
        ("/open/v5/channel", "patch", &["400", "401", "413", "415"]),
        ("/sdk/v1/events", "post", &["400", "401", "404", "415"]),
        ("/desk/v1/roles", "post", &["401", "403", "413"]),
    ] {
        let answers = &paths[path][method]["responses"];
        for status in statuses {
            assert!(
                answers[*status].is_object(),
                "{method} {path}: {status} undocumented"
            );
        }
    }
    // Closed sets of names are listed from the domain's own lists, and the bodies the
    // handlers read as JSON have their shape described.
    let schemas = &doc["components"]["schemas"];
    let perms = &schemas["RoleBody"]["properties"]["permissions"]["items"]["enum"];
    assert_eq!(perms.as_array().map(Vec::len), Some(8), "{perms}");
    assert!(perms.to_string().contains("\"contacts.read\""), "{perms}");
    // The console takes no set-once values; a search's order may be null.
    assert!(schemas["ConsoleUserUpdate"]["properties"]["profileOnce"].is_null());
    let order = &schemas["Search"]["properties"]["sortOrder"]["enum"];
    assert!(
        order.as_array().unwrap().contains(&serde_json::Value::Null),
        "{order}"
    );
    let types = &schemas["NewField"]["properties"]["type"]["enum"];
    assert!(types.to_string().contains("\"listOfNumber\""), "{types}");
    for (path, method, schema) in [
        ("/open/v5/users/@{memberId}", "put", "UserUpdate"),
        ("/open/v5/users/{userId}", "patch", "UserUpdate"),
        ("/open/v5/users/{userId}/events", "post", "EventsBody"),
        ("/open/v5/users", "post", "NewUser"),
        ("/desk/v1/users/{userId}", "patch", "ConsoleUserUpdate"),
    ] {
        let body = &paths[path][method]["requestBody"]["content"]["application/json"]["schema"];
        assert_eq!(
            body["$ref"],
            format!("#/components/schemas/{schema}"),
            "{method} {path}"
        );
        assert!(schemas[schema]["properties"].is_object(), "{schema}");
    }
    // A PATCH field left out is kept; `null` is refused, so the schema does not offer it.
    let patch = &doc["components"]["schemas"]["ChannelPatch"]["properties"];
    for field in ["name", "timeZone", "eventRetentionDays"] {
        assert!(
            !patch[field].to_string().contains("null"),
            "ChannelPatch.{field} offers null: {}",
            patch[field]
        );
    }
    app.stop().await;
}

both!(ops_endpoints, openapi_describes_every_endpoint);

/// Reads from `stream` until the server closes it (at most `within`); what it sent.
async fn read_until_closed(
    stream: &mut tokio::net::TcpStream,
    within: std::time::Duration,
) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut got))
        .await
        .expect("the server closed the connection in time")
        .expect("read");
    got
}

/// A client that stalls in the middle of a request's headers, keeps a connection idle
/// after a response or leaves answers unread is disconnected after `header_timeout`; one
/// that pauses that long within a body (plain or gzip), or trickles it in too slowly, gets
/// a 408 and nothing is stored; a wrong Segment write key is refused before the body is
/// read (the deadlines are the HTTP layer's, not the storage's: one backend).
#[tokio::test]
async fn stalled_and_idle_connections_are_closed() {
    use tokio::io::AsyncWriteExt;
    let timeout = std::time::Duration::from_secs(1);
    let app = common::spawn_with(Backend::Sqlite, |c| c.header_timeout = timeout).await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let within = std::time::Duration::from_secs(10);

    // Half a request (slowloris): closed without an answer to it.
    let started = std::time::Instant::now();
    let mut stalled = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stalled
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let got = read_until_closed(&mut stalled, within).await;
    assert!(started.elapsed() >= timeout, "closed before the deadline");
    assert!(
        !String::from_utf8_lossy(&got).contains("200 OK"),
        "answered a request it never finished: {}",
        String::from_utf8_lossy(&got)
    );

    // A finished request is answered, then the idle connection is closed.
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let got = String::from_utf8_lossy(&read_until_closed(&mut idle, within).await).into_owned();
    assert!(got.starts_with("HTTP/1.1 200 OK"), "{got}");
    assert!(got.contains("keep-alive: timeout=1\r\n"), "{got}");
    assert!(got.contains("\"status\":\"ok\""), "{got}");

    // Half a body: 408 in the API's format, then the connection closes.
    let auth = common::basic(&app.creds.write_key);
    let event = br#"{"userId":"slow-1","event":"Stalled","messageId":"m-slow"}"#;
    let gzipped = {
        use std::io::Write;
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(event).unwrap();
        z.finish().unwrap()
    };
    for (encoding, body) in [("identity", event.to_vec()), ("gzip", gzipped)] {
        let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /v1/track HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\
             Content-Type: application/json\r\nContent-Encoding: {encoding}\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        );
        slow.write_all(head.as_bytes()).await.unwrap();
        slow.write_all(&body[..body.len() / 2]).await.unwrap();
        let got = String::from_utf8_lossy(&read_until_closed(&mut slow, within).await).into_owned();
        assert!(got.starts_with("HTTP/1.1 408"), "{encoding}: {got}");
        assert!(got.contains("requestTimeout"), "{encoding}: {got}");
    }
    // A body trickled in a byte at a time, each pause shorter than the deadline: 408 once
    // it falls behind the minimum pace, well before the body would end.
    let mut trickle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/track HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        event.len()
    );
    trickle.write_all(head.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    for byte in event {
        // Each pause is under the deadline; the server answers within a few.
        if trickle.write_all(&[*byte]).await.is_err() {
            break;
        }
        let mut buf = [0u8; 4096];
        match tokio::time::timeout(
            timeout / 3,
            tokio::io::AsyncReadExt::read(&mut trickle, &mut buf),
        )
        .await
        {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    answer.extend(read_until_closed(&mut trickle, within).await);
    let got = String::from_utf8_lossy(&answer).into_owned();
    assert!(got.starts_with("HTTP/1.1 408"), "trickled: {got}");
    assert!(got.contains("arrived too slowly"), "trickled: {got}");
    assert!(
        started.elapsed() < 4 * timeout,
        "cut after {:?}, the body would have taken {:?}",
        started.elapsed(),
        timeout / 3 * event.len() as u32
    );

    let r = app.open(Method::GET, "/open/v5/events/catalog", None).await;
    assert_eq!(r.status, 200);
    assert!(
        !r.body.to_string().contains("Stalled"),
        "a stalled body was stored: {}",
        r.body
    );

    // A wrong write key is refused before the body is read (a 401, not the body
    // deadline's 408).
    let mut keyed = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/track HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\
         Content-Length: 100\r\n\r\n",
        common::basic("wrong-key")
    );
    keyed.write_all(head.as_bytes()).await.unwrap();
    let mut first = [0u8; 12];
    tokio::time::timeout(
        within,
        tokio::io::AsyncReadExt::read_exact(&mut keyed, &mut first),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(&first, b"HTTP/1.1 401");

    // A client that sends requests but never reads the answers is disconnected once its
    // receive window has stayed full for the deadline: it gets only part of the answers.
    let doc_len = app
        .raw(Method::GET, "/openapi.json", &[], vec![])
        .await
        .body
        .to_string()
        .len();
    let asked = (16 << 20) / doc_len + 1;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut deaf = socket.connect(addr.parse().unwrap()).await.unwrap();
    let requests = "GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n".repeat(asked);
    let _ = tokio::time::timeout(within, deaf.write_all(requests.as_bytes())).await;
    // Longer than the deadline, without reading (the point of the case).
    tokio::time::sleep(3 * timeout).await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(
        within,
        tokio::io::AsyncReadExt::read_to_end(&mut deaf, &mut got),
    )
    .await
    .expect("the connection was closed");
    let answered = String::from_utf8_lossy(&got)
        .matches("HTTP/1.1 200")
        .count();
    assert!(
        answered < asked,
        "all {asked} answers were kept for a client that did not read ({read:?})"
    );

    // The server still answers.
    let r = app.raw(Method::GET, "/healthz", &[], vec![]).await;
    assert_eq!(r.status, 200);
    app.stop().await;
}

/// Two ways a delayed ACK could hold every request on a keep-alive connection for 40 ms:
/// a client that writes a request's headers and body apart with Nagle's algorithm on
/// (RudderStack's Node client) holds the body until the headers are acknowledged, which
/// the server now does at once when it waits for a body; and a client that sends
/// `Expect: 100-continue` with its body straight away got the answer only once it had
/// acknowledged the `100 Continue` written before it, until the server sent without
/// Nagle's algorithm. Twenty requests took 0.9 s either way before, and take a few
/// milliseconds now. The bound is half the stalled time, so a slow machine does not fail
/// it while a stall does. (The HTTP layer's: one backend.)
#[tokio::test]
async fn no_request_waits_for_a_delayed_ack() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = common::spawn_app(Backend::Sqlite).await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let auth = common::basic(&app.creds.write_key);
    let rounds = 20;
    for (case, apart, expect) in [
        ("headers apart", true, ""),
        ("100-continue", false, "Expect: 100-continue\r\n"),
    ] {
        let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
        conn.set_nodelay(!apart).unwrap();
        let started = std::time::Instant::now();
        for i in 0..rounds {
            let body =
                format!(r#"{{"userId": "nagle", "event": "Apart", "messageId": "{case}-{i}"}}"#);
            let head = format!(
                "POST /v1/track HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n{expect}\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            if apart {
                conn.write_all(head.as_bytes()).await.unwrap();
                conn.write_all(body.as_bytes()).await.unwrap();
            } else {
                conn.write_all(format!("{head}{body}").as_bytes())
                    .await
                    .unwrap();
            }
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !got.windows(12).any(|w| w == b"HTTP/1.1 200") || !got.ends_with(b"}") {
                let n = conn.read(&mut buf).await.unwrap();
                assert!(n > 0, "{case}: connection closed");
                got.extend_from_slice(&buf[..n]);
            }
        }
        let took = started.elapsed();
        assert!(
            took < std::time::Duration::from_millis(20 * rounds),
            "{case}: {rounds} requests took {took:?}: they waited for a delayed ACK"
        );
    }
    assert_eq!(app.member("nagle").await["member"], true);
    app.stop().await;
}
