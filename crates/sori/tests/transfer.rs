//! The binary against a real store, on SQLite and on PostgreSQL: `sori import` / `sori
//! export`, and durability of acknowledged events across `kill -9`.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::{Backend, fresh_pg_database};
use serde_json::{Value, json};

/// A store for the binary: a data dir, plus a PostgreSQL URL on that backend.
struct Db {
    dir: tempfile::TempDir,
    url: Option<String>,
}

impl Db {
    async fn new(b: Backend) -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            url: match b {
                Backend::Sqlite => None,
                Backend::Postgres => Some(fresh_pg_database().await),
            },
        }
    }

    fn sori(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sori"));
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .arg("--data-dir")
            .arg(self.dir.path().join("data"));
        if let Some(u) = &self.url {
            c.arg("--database-url").arg(u);
        }
        c
    }

    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = self.sori().args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs `sori import KIND FILE`, which must succeed with `summary` in its report;
    /// returns what it wrote to stderr (the bad lines).
    fn import_ok(&self, kind: &str, file: &str, summary: &str) -> String {
        let (ok, out, err) = self.run(&["import", kind, file]);
        assert!(ok, "{err}");
        assert!(out.contains(summary), "{out} {err}");
        err
    }

    /// Runs an import that must stop before importing anything, with `message`.
    fn import_refused(&self, kind: &str, file: &str, message: &str) {
        let (ok, out, err) = self.run(&["import", kind, file]);
        assert!(!ok, "{out}");
        assert!(err.contains(message), "{err}");
    }

    /// Every stored event, through `sori export events`.
    fn events(&self) -> Vec<Value> {
        let (ok, out, err) = self.run(&["export", "events"]);
        assert!(ok, "{err}");
        ndjson(&out)
    }

    fn file(&self, name: &str, text: impl AsRef<[u8]>) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }
}

fn ndjson(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn import_and_export(b: Backend) {
    let db = Db::new(b).await;
    let (ok, _, err) = db.run(&["channel", "create", "--name", "Shop"]);
    assert!(ok, "{err}");

    let users = db.file(
        "users.ndjson",
        &([
            json!({"memberId": "u1", "profile": {"name": "Kim", "plan": "pro"}, "tags": ["VIP"],
                   "createdAt": "2021-03-04T05:06:07Z", "lastSeenAt": 1_650_000_000_000_i64}),
            json!({"memberId": "u2", "profile": {"name": "Lee"}}),
            json!({"memberId": "u3", "profile": {"age": "x".repeat(600)}}),
            json!({"profile": {"name": "no member id"}}),
            json!({"memberId": "u9", "lastSeenAt": "2999-01-01T00:00:00Z"}),
            json!({"memberId": "u8", "createdAt": 1_650_000_000}),
            json!({"memberId": "u7", "profile": {"big": "x".repeat(1 << 20)}}),
        ]
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n")
            + "\n{broken\n"),
    );
    let err = db.import_ok("users", &users, "imported 2 users, skipped 6 bad lines");
    assert!(err.contains("line 3: profile.age"), "{err}");
    assert!(err.contains("line 4: memberId"), "{err}");
    assert!(
        err.contains("line 5: lastSeenAt: must not be in the future"),
        "{err}"
    );
    assert!(
        err.contains("line 6: createdAt: must be epoch milliseconds") && err.contains("seconds"),
        "{err}"
    );
    assert!(
        err.contains("line 7: is longer than 1 MiB, the most a line may hold"),
        "{err}"
    );
    assert!(err.contains("line 8: malformed JSON"), "{err}");

    let csv_users = db.file(
        "users.csv",
        "memberId,name,zip,visits,tags,createdAt\r\nu4,\"Park\r\nJr\",01234,3,a;b,2020-01-01T00:00:00Z\r\n\r\n\r\n,Nobody,,,,\r\n",
    );
    let err = db.import_ok("users", &csv_users, "imported 1 users, skipped 1");
    // CRLF line ends (Excel); the quoted name spans two lines and two empty lines follow,
    // so the bad row is line 6.
    assert!(err.contains("line 6: memberId"), "{err}");

    // History older than the channel keeps events (90 days by default) is reported and
    // skipped; `sori channel set` raises the retention first.
    let old = db.file(
        "old.ndjson",
        json!({"memberId": "u1", "name": "Order", "createdAt": "2022-05-06T07:08:09Z"}).to_string(),
    );
    let err = db.import_ok(
        "events",
        &old,
        "imported 0 events (0 already stored), skipped 1",
    );
    assert!(
        err.contains("line 1: createdAt: is older than the channel keeps events (90 days)"),
        "{err}"
    );
    let (ok, out, err) = db.run(&["channel", "set", "--event-retention-days", "0"]);
    assert!(
        !ok && err.contains("must be from 1 to 3650 days"),
        "{out} {err}"
    );
    let (ok, out, err) = db.run(&["channel", "set", "--event-retention-days", "3650"]);
    assert!(ok && out.contains("events kept 3650 days"), "{out} {err}");

    let events = db.file(
        "events.csv",
        "memberId,name,createdAt,page,property.sku,property.price\n\
         u1,Order,2022-05-06T07:08:09Z,https://shop.example/o,A-1,1200\n\
         u1,Order,2022-05-06T07:08:09Z,https://shop.example/o,A-1,1200\n\
         u2,View,2023-01-01T00:00:00Z,,,\n\
         u2,,2023-01-01T00:00:00Z,,,\n",
    );
    // The second run stores nothing and says so.
    for summary in [
        "imported 3 events (0 already stored), skipped 1",
        "imported 0 events (3 already stored), skipped 1",
    ] {
        let err = db.import_ok("events", &events, summary);
        assert!(err.contains("line 5: name"), "{err}");
    }

    let evs = db.events();
    assert_eq!(
        evs.len(),
        3,
        "re-running the file duplicated nothing: {evs:?}"
    );
    assert_eq!(evs[0]["createdAt"], 1_651_820_889_000_i64);
    assert_eq!(evs[0]["property"], json!({"sku": "A-1", "price": 1200}));
    assert_eq!(evs[0]["page"], "https://shop.example/o");

    let (ok, out, err) = db.run(&["export", "users"]);
    assert!(ok, "{err}");
    let us = ndjson(&out);
    let u1 = us.iter().find(|u| u["memberId"] == "u1").unwrap();
    assert_eq!(u1["createdAt"], 1_614_834_367_000_i64);
    assert_eq!(
        u1["lastSeenAt"], 1_651_820_889_000_i64,
        "latest of explicit and event times"
    );
    assert_eq!(u1["tags"], json!(["vip"]));
    let u4 = us.iter().find(|u| u["memberId"] == "u4").unwrap();
    assert_eq!(u4["profile"]["zip"], "01234");
    assert_eq!(u4["profile"]["visits"], 3);
    assert_eq!(u4["tags"], json!(["a", "b"]));

    // NDJSON events, owned by a member id or by a user id; a marketing event name is
    // reserved for the system, and an unknown user id is reported, not created.
    let u1_id = u1["id"].as_str().unwrap().to_owned();
    let nd = [
        json!({"userId": u1_id, "name": "Refund", "property": {"amount": 3},
               "createdAt": "2022-06-01T00:00:00Z"}),
        json!({"memberId": "u2", "name": "MarketingClick"}),
        json!({"userId": "no-such-user", "name": "Refund"}),
    ]
    .iter()
    .map(Value::to_string)
    .collect::<Vec<_>>()
    .join("\n");
    let nd = db.file("events.ndjson", &nd);
    let err = db.import_ok(
        "events",
        &nd,
        "imported 1 events (0 already stored), skipped 2",
    );
    assert!(err.contains("line 2: name"), "{err}");
    assert!(err.contains("line 3:"), "{err}");
    let evs = db.events();
    let refund = evs.iter().find(|e| e["name"] == "Refund").unwrap();
    // A member's events are exported by member id (another store knows no user ids).
    assert_eq!(refund["memberId"], "u1");
    assert!(refund.get("userId").is_none(), "{refund}");
    assert_eq!(refund["source"], "import");
    assert_eq!(refund["createdAt"], 1_654_041_600_000_i64);
    assert_eq!(refund["property"], json!({"amount": 3}));
    assert_eq!(evs.len(), 4);

    // A line that is not UTF-8 is reported and skipped in either format (a byte-order
    // mark before the first line is not an error), and a CSV row with more non-empty
    // cells than the header has columns is bad (its extra cells would be lost).
    for (name, text, bad) in [
        (
            "latin.ndjson",
            &b"\xef\xbb\xbf{\"memberId\": \"u2\", \"name\": \"A\"}\r\n{\"memberId\": \"u2\", \"name\": \"Caf\xe9\"}\n\n{\"memberId\": \"u2\"}\n{\"memberId\": \"u2\", \"name\": \"C\"}"[..],
            // After an empty line 3; the last line has no line end and is still read.
            ["line 2: is not UTF-8 text", "line 4: name"],
        ),
        (
            "latin.csv",
            &b"\xef\xbb\xbfmemberId,name,,\nu2,D\nu2,Caf\xe9\nu2,E,,,extra\nu2,F,,,\n"[..],
            [
                "line 3: malformed CSV: cell 2 is not UTF-8 text (a file saved in another \
                 encoding, such as EUC-KR, must be converted to UTF-8)",
                "line 4: has 5 cells but the header row names 4 columns",
            ],
        ),
    ] {
        let file = db.file(name, text);
        let err = db.import_ok(
            "events",
            &file,
            "imported 2 events (0 already stored), skipped 2",
        );
        for bad in bad {
            assert!(err.contains(bad), "{name}: {err}");
        }
    }
    assert_eq!(db.events().len(), 8);
    // A header naming a column twice stops the run before anything is imported (for
    // users, `email` and `profile.email` are one column).
    let twice = db.file("twice.csv", "memberId,name,name\nu2,G,H\n");
    db.import_refused("events", &twice, "names the column `name` twice");
    assert_eq!(db.events().len(), 8);
    let twice = db.file(
        "twice-users.csv",
        "memberId,email,profile.email\nu7,a@x.io,b@x.io\n",
    );
    db.import_refused("users", &twice, "names the column `profile.email` twice");

    // A user export re-imports: every member line is accepted.
    let exported = db.file("export.ndjson", &out);
    db.import_ok("users", &exported, "imported 3 users, skipped 0");

    let (ok, out, err) = db.run(&["export", "users", "--format", "csv"]);
    assert!(ok, "{err}");
    let mut rdr = csv::Reader::from_reader(out.as_bytes());
    assert_eq!(rdr.records().count(), 3);
    // A time before 1973 is exported as text, which import takes (as a number it would
    // read as seconds), in both formats.
    let old = db.file(
        "old.ndjson",
        json!({"memberId": "old70", "createdAt": "1971-06-01T00:00:00Z"}).to_string(),
    );
    db.import_ok("users", &old, "imported 1 users, skipped 0");
    for format in ["ndjson", "csv"] {
        let (ok, out, err) = db.run(&["export", "users", "--format", format]);
        assert!(ok, "{err}");
        assert!(out.contains("1971-06-01T00:00:00Z"), "{out}");
        let again = db.file(&format!("again.{format}"), &out);
        db.import_ok("users", &again, "imported 4 users, skipped 0");
    }
    // An events export in CSV: the import's columns plus id and source.
    let (ok, out, _) = db.run(&["export", "events", "--format", "csv"]);
    assert!(ok);
    assert!(out.starts_with("id,memberId,userId,name,createdAt,page,source,property"));
    let mut rdr = csv::Reader::from_reader(out.as_bytes());
    let rows: Vec<csv::StringRecord> = rdr.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 8);
    assert!(
        rows.iter()
            .all(|r| &r[6] == "import" && r[1].starts_with('u') && r[2].is_empty()),
        "every imported event's source, by member id"
    );

    // An unregistered CSV column keeps the type of its first cell in every row of one
    // run: `01234` registers `zip5` as text, so `12345` after it is text too, and the
    // same file imports whole on the first run (not only on a re-run).
    let zips = db.file(
        "zips.csv",
        "memberId,zip5
z1,01234
z2,12345
",
    );
    db.import_ok("users", &zips, "imported 2 users, skipped 0");
    // An import line carries a user's whole tag list (up to 200), not an API call's 20.
    let tags: Vec<String> = (0..30).map(|i| format!("t{i}")).collect();
    let many = db.file(
        "many-tags.ndjson",
        json!({"memberId": "z3", "tags": tags}).to_string(),
    );
    db.import_ok("users", &many, "imported 1 users, skipped 0");
    db.import_ok(
        "users",
        &db.file(
            "semi.ndjson",
            json!({"memberId": "z4", "tags": ["a;b"]}).to_string(),
        ),
        "imported 1 users",
    );

    // A failed export leaves no output file that could pass for a short export, and an
    // earlier file at that path as it was.
    let out_file = db.dir.path().join("segment.csv");
    let earlier = db.dir.path().join("earlier.csv");
    std::fs::write(&earlier, "kept").unwrap();
    let (ok, _, _) = db.run(&[
        "export",
        "users",
        "--segment",
        "ffffffffffffffffffffffff",
        "--output",
        earlier.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert_eq!(std::fs::read_to_string(&earlier).unwrap(), "kept");
    let (ok, _, err) = db.run(&[
        "export",
        "users",
        "--segment",
        "ffffffffffffffffffffffff",
        "--output",
        out_file.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("segment"), "{err}");
    assert!(!out_file.exists(), "a failed export left {out_file:?}");

    // A command that reads a store does not create one where a path was mistyped.
    let typo = db.dir.path().join("typo");
    let out = Command::new(env!("CARGO_BIN_EXE_sori"))
        .arg("--data-dir")
        .arg(&typo)
        .args(["export", "users"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no Sori store at"),
        "{err}"
    );
    assert!(!typo.exists(), "a store was created at {typo:?}");
    // A bare column named after a field Sori keeps itself stops the run.
    let city = db.file("city.csv", "memberId,city\nc1,Seoul\n");
    db.import_refused("users", &city, "`city` names a field Sori keeps itself");

    // Profile fields named like a user line's own columns or like Sori's fields are
    // exported as `profile.KEY`, so the CSV export imports back whole.
    let clash = db.file(
        "clash.ndjson",
        json!({"memberId": "k1", "tags": ["real"],
               "profile": {"tags": "t", "createdAt": "c", "blocked": "no", "city": "Busan"}})
        .to_string(),
    );
    db.import_ok("users", &clash, "imported 1 users, skipped 0");

    // A quote that is never closed would read the rest of the file into one cell: that
    // row is reported (naming the quote's line) instead of stored, and nothing after it
    // is lost quietly.
    let open_quote = db.file(
        "open-quote.csv",
        "memberId,note\nq1,fine\nq2,\"oops\nq3,after\nq4,more\n",
    );
    let err = db.import_ok("users", &open_quote, "imported 1 users, skipped 1");
    assert!(
        err.contains(
            "line 3: malformed CSV: the quote that opens a cell on line 3 is never closed"
        ),
        "{err}"
    );
    // U+0000 is refused in an import as in the APIs, wherever it is (a JSON escape or a
    // raw byte in a CSV cell).
    let nul = db.file(
        "nul.ndjson",
        json!({"memberId": "n1", "name": "N", "property": {"o": {"k": ["a\u{0}b"]}}}).to_string(),
    );
    let err = db.import_ok(
        "events",
        &nul,
        "imported 0 events (0 already stored), skipped 1",
    );
    assert!(
        err.contains("line 1: property.o.k[0]: must not contain the NUL character"),
        "{err}"
    );
    let nul = db.file("nul.csv", "memberId,note\nn2,a\0b\n");
    let err = db.import_ok("users", &nul, "imported 0 users, skipped 1");
    assert!(
        err.contains("line 2: profile.note: must not contain the NUL"),
        "{err}"
    );
    // So is one in the header row, which stops the run.
    let open_header = db.file("open-header.csv", "memberId,\"name\nq7,Alice\n");
    db.import_refused(
        "users",
        &open_header,
        "the quote that opens a cell of the header row on line 1 is never closed",
    );
    // A quote inside a cell that did not start with one is a plain character.
    let inch = db.file("inch.csv", "memberId,height\nq5,5'11\"\nq6,6'\n");
    db.import_ok("users", &inch, "imported 2 users, skipped 0");

    // The whole channel moves to a fresh store: users (CSV), then events (NDJSON).
    let (ok, users_csv, err) = db.run(&["export", "users", "--format", "csv"]);
    assert!(ok, "{err}");
    let (ok, events_nd, err) = db.run(&["export", "events"]);
    assert!(ok, "{err}");
    let fresh = Db::new(b).await;
    assert!(fresh.run(&["channel", "create", "--name", "Copy"]).0);
    assert!(
        fresh
            .run(&["channel", "set", "--event-retention-days", "3650"])
            .0
    );
    let us = db.file("users-export.csv", &users_csv);
    let err = fresh.import_ok("users", &us, "skipped 0 bad lines");
    assert!(!err.contains("line "), "{err}");
    let evs = db.file("events-export.ndjson", &events_nd);
    fresh.import_ok(
        "events",
        &evs,
        "imported 8 events (0 already stored), skipped 0",
    );
    // The same events exported as CSV are the same events: nothing is stored twice.
    let (ok, events_csv, err) = db.run(&["export", "events", "--format", "csv"]);
    assert!(ok, "{err}");
    let evs_csv = db.file("events-export.csv", &events_csv);
    fresh.import_ok(
        "events",
        &evs_csv,
        "imported 0 events (8 already stored), skipped 0",
    );
    let (ok, out, err) = fresh.run(&["export", "users"]);
    assert!(ok, "{err}");
    let copied = ndjson(&out);
    let by_member = |m: &str| copied.iter().find(|u| u["memberId"] == m).unwrap().clone();
    assert_eq!(by_member("q5")["profile"]["height"], "5'11\"");
    let k1 = by_member("k1");
    assert_eq!(
        k1["profile"],
        json!({"tags": "t", "createdAt": "c", "blocked": "no", "city": "Busan"})
    );
    assert_eq!(k1["tags"], json!(["real"]));
    assert_eq!(k1["blocked"], false);
    assert_eq!(by_member("z1")["profile"]["zip5"], "01234");
    assert_eq!(by_member("z2")["profile"]["zip5"], "12345");
    assert_eq!(by_member("z3")["tags"].as_array().unwrap().len(), 30);
    assert_eq!(
        by_member("z4")["tags"],
        json!(["a;b"]),
        "a `;` inside a tag survives CSV"
    );
    let moved: Vec<Value> = fresh.events();
    assert_eq!(moved.len(), 8);
    assert!(
        moved
            .iter()
            .any(|e| e["memberId"] == "u1" && e["name"] == "Refund")
    );

    // An event CSV column takes its type from its first imported cell: a bad row's cell
    // teaches nothing, and a later cell of another type is a bad row of its own.
    let typed = db.file(
        "typed.csv",
        "memberId,name,property.k\n,Ev,5\nt1,Ev,abc\nt1,Ev,def\nt1,Ev,7\n",
    );
    let err = db.import_ok(
        "events",
        &typed,
        "imported 3 events (0 already stored), skipped 1",
    );
    assert!(err.contains("line 2: memberId"), "{err}");
    let mut ks: Vec<Value> = db
        .events()
        .into_iter()
        .filter(|e| e["name"] == "Ev")
        .map(|e| e["property"]["k"].clone())
        .collect();
    ks.sort_by_key(Value::to_string);
    assert_eq!(
        ks,
        [json!("7"), json!("abc"), json!("def")],
        "a text column"
    );
}

/// Starts `sori serve`; returns the child, its base URL and the first start's keys.
fn serve(db: &Db) -> (Child, String, Vec<String>) {
    let mut child = db
        .sori()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut keys = Vec::new();
    let mut base = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        if let [k @ ("accessKey" | "accessSecret" | "writeKey"), v] = words.as_slice() {
            keys.push(format!("{k}={v}"));
        }
        if let ["owner", "login", email, "/", password] = words.as_slice() {
            keys.push(format!("ownerEmail={email}"));
            keys.push(format!("ownerPassword={password}"));
        }
        if let Some(addr) = line.strip_prefix("Sori is listening on ") {
            base = addr.to_owned();
            break;
        }
    }
    (child, base, keys)
}

fn key(keys: &[String], name: &str) -> String {
    keys.iter()
        .find_map(|k| k.strip_prefix(&format!("{name}=")))
        .unwrap()
        .to_owned()
}

/// The Segment API's Basic authorization for a `serve` child's write key.
fn segment_auth(keys: &[String]) -> String {
    common::basic(&key(keys, "writeKey"))
}

/// `GET base+path` on the Open API of a `serve` child, with the keys it printed.
async fn open_get(http: &reqwest::Client, base: &str, keys: &[String], path: &str) -> Value {
    http.get(format!("{base}{path}"))
        .header("x-access-key", key(keys, "accessKey"))
        .header("x-access-secret", key(keys, "accessSecret"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn acknowledged_events_survive_kill_9(b: Backend) {
    let db = Db::new(b).await;
    let (mut child, base, keys) = serve(&db);
    let auth = segment_auth(&keys);
    // Eight clients send events as fast as they are acknowledged; the server is killed
    // while they are in flight.
    let http = reqwest::Client::new();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (http, base, auth) = (http.clone(), base.clone(), auth.clone());
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for seq in 0..10_000 {
                let body = json!({"userId": format!("k{t}"), "event": "Tick",
                    "properties": {"seq": seq}, "messageId": format!("k{t}-{seq}")});
                let r = http
                    .post(format!("{base}/v1/track"))
                    .header("authorization", &auth)
                    .json(&body)
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().is_success() => acked.push(seq),
                    _ => break,
                }
            }
            acked
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let mut acked = Vec::new();
    for t in tasks {
        acked.push(t.await.unwrap());
    }
    let total: usize = acked.iter().map(Vec::len).sum();
    assert!(
        total > 100,
        "the clients got {total} acknowledgements before the kill"
    );

    let (mut child, base, _) = serve(&db);
    for (t, seqs) in acked.iter().enumerate() {
        let mut stored = std::collections::HashSet::new();
        let mut since = String::new();
        loop {
            let r = open_get(
                &http,
                &base,
                &keys,
                &format!("/open/v5/users/@k{t}/events?limit=500{since}"),
            )
            .await;
            for e in r["events"].as_array().unwrap() {
                stored.insert(e["property"]["seq"].as_i64().unwrap());
            }
            match r["next"].as_str() {
                Some(n) => since = format!("&since={n}"),
                None => break,
            }
        }
        for s in seqs {
            assert!(
                stored.contains(&(*s as i64)),
                "client {t}: acknowledged event {s} was lost"
            );
        }
    }
    println!("{total} acknowledged events, all found after kill -9");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// An import runs while the server ingests from HTTP clients (on SQLite, two processes
/// writing one database file; on PostgreSQL, two writers): every acknowledged event and
/// every imported line is stored, once.
async fn import_while_serving(b: Backend) {
    let db = Db::new(b).await;
    let (mut child, base, keys) = serve(&db);
    let auth = segment_auth(&keys);
    // 6,000 lines for 50 members, 2,000 of them for members the clients also send to,
    // from yesterday (within the default retention).
    let yesterday = sori_app::secrets::now_ms() - 24 * 3600 * 1000;
    let lines: Vec<String> = (0..6_000)
        .map(|i| {
            json!({"memberId": format!("m{}", i % 50), "name": "Imported",
                "property": {"i": i}, "createdAt": yesterday + i})
            .to_string()
        })
        .collect();
    let file = db.file("concurrent.ndjson", lines.join("\n"));
    let http = reqwest::Client::new();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..4 {
        let (http, base, auth, stop) = (http.clone(), base.clone(), auth.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut acked = 0u64;
            let mut seq = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let batch: Vec<Value> = (0..20)
                    .map(|i| {
                        json!({"type": "track", "userId": format!("m{}", (seq + i) % 20),
                            "event": "Live", "messageId": format!("live-{t}-{}", seq + i)})
                    })
                    .collect();
                seq += 20;
                let r = http
                    .post(format!("{base}/v1/batch"))
                    .header("authorization", &auth)
                    .json(&json!({ "batch": batch }))
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "{}", r.text().await.unwrap());
                acked += 20;
            }
            acked
        }));
    }
    let import = {
        let mut c = db.sori();
        c.args(["import", "events", &file]);
        tokio::task::spawn_blocking(move || c.output().unwrap())
    };
    let out = import.await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = 0;
    for t in tasks {
        acked += t.await.unwrap();
    }
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{summary} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        summary.contains("imported 6000 events (0 already stored), skipped 0"),
        "{summary}"
    );
    assert!(acked >= 20, "the clients sent during the import");
    // The catalog counts what was stored, once per event.
    let catalog = open_get(&http, &base, &keys, "/open/v5/events/catalog").await;
    let count = |name: &str| {
        catalog["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .map_or(0, |e| e["count"].as_u64().unwrap())
    };
    assert_eq!(count("Imported"), 6_000, "{catalog}");
    assert_eq!(count("Live"), acked, "{catalog}");
    child.kill().unwrap();
    child.wait().unwrap();
    // And so does a full export, read back through the store.
    assert_eq!(db.events().len() as u64, 6_000 + acked);
    println!("{acked} events acknowledged over HTTP while 6,000 lines were imported");
}

/// A store moves fields first, users second: the field export carries what a user file
/// cannot (Date and Datetime types, display names, sensitive flags, built-in ones too).
async fn fields_move_before_users(b: Backend) {
    let (from, to) = (Db::new(b).await, Db::new(b).await);
    for db in [&from, &to] {
        let (ok, _, err) = db.run(&["channel", "create", "--name", "Shop"]);
        assert!(ok, "{err}");
    }
    let fields = from.file(
        "fields.ndjson",
        [
            json!({"key": "anniv", "name": "Anniversary", "type": "date", "sensitive": true}),
            json!({"key": "renewAt", "type": "datetime"}),
            json!({"key": "email", "type": "string", "sensitive": true}),
            json!({"scope": "user", "key": "memberId", "type": "string", "sensitive": true}),
        ]
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n"),
    );
    from.import_ok("fields", &fields, "imported 4 fields (0 unchanged)");
    let users = from.file(
        "users.ndjson",
        json!({"memberId": "m1", "profile": {"anniv": "2020-02-03", "renewAt": 1_700_000_000_000_i64,
               "email": "kim@example.com"}})
        .to_string(),
    );
    from.import_ok("users", &users, "imported 1 users");

    // NDJSON and CSV exports of the fields both move them.
    let export = |db: &Db, args: &[&str]| {
        let (ok, out, err) = db.run(args);
        assert!(ok, "{err}");
        out
    };
    let field_file = from.file("f.ndjson", export(&from, &["export", "fields"]));
    let field_csv = from.file(
        "f.csv",
        export(&from, &["export", "fields", "--format", "csv"]),
    );
    let user_file = from.file("u.ndjson", export(&from, &["export", "users"]));
    // The CSV moves the two new fields and the two sensitive flags; the NDJSON then
    // finds nothing left to change.
    to.import_ok("fields", &field_csv, "imported 4 fields");
    to.import_ok("fields", &field_file, "imported 0 fields");
    to.import_ok("users", &user_file, "imported 1 users");
    assert_eq!(
        export(&to, &["export", "fields"]),
        export(&from, &["export", "fields"])
    );
    let profile = |db: &Db| ndjson(&export(db, &["export", "users"]))[0]["profile"].clone();
    assert_eq!(profile(&to), profile(&from));

    // A field the target has with another type is a bad line, named by its number; a key
    // twice in one file too; the rest of the file is applied.
    let clash = to.file(
        "clash.ndjson",
        [
            json!({"key": "anniv", "type": "string"}),
            json!({"key": "plan", "name": "Plan", "type": "string"}),
            json!({"key": "plan", "type": "string", "sensitive": true}),
            json!({"key": "renewAt", "type": "datetime", "name": "Renews"}),
            // Line 1 was refused, so this one is the first for its key.
            json!({"key": "anniv", "type": "date", "name": "Wedding day"}),
        ]
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n"),
    );
    let err = to.import_ok(
        "fields",
        &clash,
        "imported 3 fields (0 unchanged), skipped 2 bad lines",
    );
    assert!(
        err.contains("line 1: type: `anniv` is registered here as date, not string"),
        "{err}"
    );
    assert!(
        err.contains("line 3: key: `plan` is defined on line 2 already"),
        "{err}"
    );
    // A CSV file's line numbers count blank lines and the lines of a quoted cell, and a
    // quote never closed is reported on its line.
    let quirks = to.file(
        "quirks.csv",
        "scope,key,name,type\r\n\r\nprofile,tier,\"Tier, level\",string\r\n\r\n\
         profile,bad key,,string\r\nprofile,zz,\"open,string\r\n",
    );
    let err = to.import_ok(
        "fields",
        &quirks,
        "imported 1 fields (0 unchanged), skipped 2",
    );
    assert!(err.contains("line 5: key:"), "{err}");
    assert!(err.contains("line 6: malformed CSV: the quote"), "{err}");
    let names: Vec<Value> = ndjson(&export(&to, &["export", "fields"]))
        .into_iter()
        .filter(|f| f["key"] == "renewAt" || f["key"] == "plan")
        .map(|f| json!([f["key"], f["name"], f["type"], f["sensitive"]]))
        .collect();
    assert_eq!(
        names,
        [
            json!(["plan", "Plan", "string", false]),
            json!(["renewAt", "Renews", "datetime", false])
        ]
    );
}

/// Profile values come from browsers, so an export must not carry a formula that runs in
/// the spreadsheet a business opens it in: every CSV export (users, events, fields) puts
/// a `'` before such a cell, and every import reads the value back as it was.
async fn csv_exports_do_not_run_in_sheets(b: Backend) {
    let (from, to) = (Db::new(b).await, Db::new(b).await);
    for db in [&from, &to] {
        let (ok, _, err) = db.run(&["channel", "create", "--name", "Shop"]);
        assert!(ok, "{err}");
    }
    let planted = [
        "=HYPERLINK(\"http://evil.example\",\"open\")",
        "+cmd|' /C calc'!A0",
        "@SUM(A1)",
        "-2+3",
        "'=as typed",
        "'plain",
        "'-5",
        "-5",
        "-1e5",
        "+inf",
        "--1",
    ];
    // Imports trim every CSV cell; the mark must not stay behind when they do.
    let trimmed = [("-5 ", "-5"), ("\rx", "x"), (" =x", "=x"), ("\t=x", "=x")];
    let fields = from.file(
        "fields.ndjson",
        [
            json!({"key": "note", "name": "=Evil()", "type": "list"}),
            json!({"key": "score", "type": "number"}),
        ]
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n"),
    );
    from.import_ok("fields", &fields, "imported 2 fields");
    let mut users: Vec<String> = planted
        .iter()
        .enumerate()
        .map(|(i, p)| {
            json!({"memberId": format!("m{i}"), "profile": {"name": p, "note": [p, "ok"],
                   "score": 1.5e-7 * (i + 1) as f64}, "tags": [format!("={i}")]})
            .to_string()
        })
        .collect();
    // A Number field reads back what its export writes: exponents, and whole numbers
    // past 64 bits.
    users.push(
        json!({"memberId": "m-big", "profile": {"score": 12_345_678_901_234_567_890_u64}})
            .to_string(),
    );
    users.push(json!({"memberId": "m-max", "profile": {"score": f64::MAX}}).to_string());
    users.extend(trimmed.iter().enumerate().map(|(i, (p, _))| {
        json!({"memberId": format!("t{i}"), "profile": {"name": p}}).to_string()
    }));
    from.import_ok(
        "users",
        &from.file("users.ndjson", users.join("\n")),
        "imported 17 users",
    );
    let yesterday = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 86_400_000;
    let events = from.file(
        "events.ndjson",
        json!({"memberId": "m0", "name": "Viewed", "page": "=1+1", "createdAt": yesterday})
            .to_string(),
    );
    from.import_ok("events", &events, "imported 1 events");

    let export = |db: &Db, args: &[&str]| {
        let (ok, out, err) = db.run(args);
        assert!(ok, "{err}");
        out
    };
    // A cell a spreadsheet would run: see sori_domain::import::sheet_safe.
    let runs = |cell: &str| {
        let t = cell.trim_start();
        let number = |n: &str| {
            n.starts_with(|c: char| c.is_ascii_digit() || c == '.')
                && n.chars().all(|c| c.is_ascii_digit() || ".eE+-".contains(c))
                && n.parse::<f64>().is_ok()
        };
        cell.starts_with(['\t', '\r', '\n'])
            || t.starts_with(['=', '@'])
            || (t.starts_with(['+', '-']) && !number(&t[1..]))
    };
    let mut moved = Vec::new();
    for kind in ["fields", "users", "events"] {
        let text = export(&from, &["export", kind, "--format", "csv"]);
        let mut rdr = csv::Reader::from_reader(text.as_bytes());
        let rows: Vec<csv::StringRecord> = rdr.records().map(Result::unwrap).collect();
        for cell in rows.iter().flatten() {
            assert!(!runs(cell), "{kind}: {cell:?} would run in a spreadsheet");
        }
        assert!(
            rows.iter().flatten().any(|c| c.starts_with("'=")),
            "{kind}: {text}"
        );
        moved.push((kind, from.file(&format!("{kind}.csv"), text)));
    }
    for (kind, file) in &moved {
        to.import_ok(kind, file, "imported");
    }
    // The same, but for the ids each store made.
    let same = |db: &Db, kind: &str| -> Vec<Value> {
        let mut lines = ndjson(&export(db, &["export", kind]));
        lines.iter_mut().for_each(|l| {
            l.as_object_mut().unwrap().remove("id");
        });
        lines
    };
    assert_eq!(same(&to, "fields"), same(&from, "fields"));
    let planted_users = |db: &Db| -> Vec<Value> {
        let mut users = same(db, "users");
        users.retain(|u| u["memberId"].as_str().unwrap().starts_with('m'));
        users
    };
    assert_eq!(planted_users(&to), planted_users(&from));
    let users = ndjson(&export(&to, &["export", "users"]));
    let name = |member: &str| {
        users.iter().find(|u| u["memberId"] == member).unwrap()["profile"]["name"].clone()
    };
    for (i, p) in planted.iter().enumerate() {
        assert_eq!(name(&format!("m{i}")), json!(p), "read back as it was");
    }
    for (i, (p, back)) in trimmed.iter().enumerate() {
        assert_eq!(
            name(&format!("t{i}")),
            json!(back),
            "{p:?}: trimmed, nothing added"
        );
    }
    let pages: Vec<Value> = to.events().iter().map(|e| e["page"].clone()).collect();
    assert_eq!(pages, [json!("=1+1")]);
}

/// A leaked or lost secret is replaced from the command line, and a locked-out owner
/// gets a new password: the old ones stop working, the new ones work.
async fn keys_rotate_and_passwords_reset(b: Backend) {
    let db = Db::new(b).await;
    let (mut child, base, old) = serve(&db);
    let http = reqwest::Client::new();
    let channel = open_get(&http, &base, &old, "/open/v5/channel").await;
    assert_eq!(channel["channel"]["id"], "1", "{channel}");
    child.kill().unwrap();
    child.wait().unwrap();

    let (ok, out, err) = db.run(&["channel", "rotate-keys", "--json"]);
    assert!(ok, "{err}");
    let rotated: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        rotated["accessKey"].as_str(),
        Some(key(&old, "accessKey").as_str())
    );
    assert_ne!(
        rotated["accessSecret"].as_str(),
        Some(key(&old, "accessSecret").as_str())
    );
    let (ok, out, err) = db.run(&[
        "channel",
        "reset-password",
        "--email",
        &key(&old, "ownerEmail").to_uppercase(),
    ]);
    assert!(ok, "{err}");
    let generated = out.split_whitespace().nth(3).unwrap().to_owned();
    // A password the operator chose is set but not printed back.
    let (ok, out, err) = db.run(&[
        "channel",
        "reset-password",
        "--email",
        &key(&old, "ownerEmail"),
        "--password",
        "chosen-pass-1",
    ]);
    assert!(ok && !out.contains("chosen-pass-1"), "{out} {err}");
    let (ok, _, err) = db.run(&["channel", "reset-password", "--email", "nobody@example.com"]);
    assert!(!ok && err.contains("has no manager"), "{err}");

    let (mut child, base, none) = serve(&db);
    assert!(none.is_empty(), "no new channel: {none:?}");
    let new = vec![
        format!("accessKey={}", rotated["accessKey"].as_str().unwrap()),
        format!("accessSecret={}", rotated["accessSecret"].as_str().unwrap()),
        format!("writeKey={}", rotated["writeKey"].as_str().unwrap()),
    ];
    let status = |r: reqwest::Response| r.status().as_u16();
    for (keys, want) in [(&old, 401), (&new, 200)] {
        let r = http
            .get(format!("{base}/open/v5/channel"))
            .header("x-access-key", key(keys, "accessKey"))
            .header("x-access-secret", key(keys, "accessSecret"))
            .send()
            .await
            .unwrap();
        assert_eq!(status(r), want, "Open API with {keys:?}");
        let r = http
            .post(format!("{base}/v1/track"))
            .header("authorization", segment_auth(keys))
            .json(&json!({"userId": "m1", "event": "Rotated"}))
            .send()
            .await
            .unwrap();
        assert_eq!(status(r), want, "Segment API with {keys:?}");
    }
    let login = |password: String| {
        http.post(format!("{base}/desk/v1/login"))
            .json(&json!({"email": key(&old, "ownerEmail"), "password": password}))
            .send()
    };
    assert_eq!(
        status(login(key(&old, "ownerPassword")).await.unwrap()),
        401
    );
    assert_eq!(status(login(generated).await.unwrap()), 401);
    assert_eq!(status(login("chosen-pass-1".into()).await.unwrap()), 200);
    child.kill().unwrap();
    child.wait().unwrap();
}

both!(
    csv_exports_do_not_run_in_sheets,
    fields_move_before_users,
    import_and_export,
    acknowledged_events_survive_kill_9,
    import_while_serving,
    keys_rotate_and_passwords_reset
);
