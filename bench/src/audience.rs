//! `sori-bench audience`: audience counts over generated contacts, Sori's in-memory engine
//! against PostgreSQL 15 (profile as JSONB, with indexes chosen for these filters) and
//! DuckDB (typed columns), on the same data in the same run.
//!
//! Steps: generate N users (~20 events each) deterministically; load them into a fresh
//! SQLite store and a fresh PostgreSQL database through the store's bulk load, and into
//! CSV files for DuckDB; rebuild the projection from SQLite as a starting server would
//! (timed, with its memory); then time five standard filters on each engine, check that
//! every engine returns the same count, and print p50/p99 and the ratios.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use sori_app::auth::ChannelInfo;
use sori_app::{App, Engine};
use sori_domain::filter::{Cond, Query, Test};
use sori_domain::{ProfileField, ProfileKey};

use crate::generate::{self, FIELDS};

/// The standard filters: the seed's three example audiences, a four-condition filter with a
/// relative date, a tag, a profile number and an event count, and an OR-heavy one.
fn filters() -> Vec<(&'static str, Value)> {
    vec![
        (
            "seed1: not seen 30 days, member",
            json!({"and": [
                {"or": [{"key": "lastSeenAt", "operator": "$daysAgoGte", "values": [30]}]},
                {"or": [{"key": "member", "operator": "$eq", "values": [true]}]}]}),
        ),
        (
            "seed2: cart has items",
            json!({"and": [{"or": [{"key": "profile.cartCount", "operator": "$gte", "values": [1]}]}]}),
        ),
        (
            "seed3: e-mail, not a member",
            json!({"and": [
                {"or": [{"key": "member", "operator": "$eq", "values": [false]}]},
                {"or": [{"key": "profile.email", "operator": "$exists"}]}]}),
        ),
        (
            "four conditions",
            json!({"and": [
                {"or": [{"key": "lastSeenAt", "operator": "$daysAgoLte", "values": [7]}]},
                {"or": [{"key": "tags", "operator": "$in", "values": ["vip"]}]},
                {"or": [{"key": "profile.cartCount", "operator": "$gte", "values": [1]}]},
                {"or": [{"event": "PageView", "operator": "$countGte", "values": [3], "withinDays": 30}]}]}),
        ),
        (
            "OR-heavy",
            json!({"and": [
                {"or": [
                    {"key": "tags", "operator": "$in", "values": ["sale"]},
                    {"key": "tags", "operator": "$in", "values": ["coupon"]},
                    {"key": "city", "operator": "$eq", "values": ["Busan"]},
                    {"key": "profile.plan", "operator": "$in", "values": ["pro", "team"]},
                    {"key": "sessionsCount", "operator": "$gt", "values": [20]}]},
                {"or": [
                    {"event": "Purchase", "operator": "$countGte", "values": [1], "withinDays": 30},
                    {"key": "profile.email", "operator": "$exists"},
                    {"key": "web.browserName", "operator": "$eq", "values": ["Safari"]}]}]}),
        ),
    ]
}

/// The same five filters in DuckDB SQL over typed columns, with the resolved bounds.
fn duck_sql(queries: &[Query]) -> Vec<String> {
    let time_to = |q: &Query, g: usize| match &q.groups[g][0] {
        Cond::Field {
            test: Test::Time { to: Some(t), .. },
            ..
        } => *t,
        _ => 0,
    };
    let time_from = |q: &Query, g: usize| match &q.groups[g][0] {
        Cond::Field {
            test: Test::Time { from: Some(t), .. },
            ..
        } => *t,
        _ => 0,
    };
    let since = |q: &Query, g: usize, c: usize| match &q.groups[g][c] {
        Cond::Event(e) => e.since.unwrap_or(0),
        _ => 0,
    };
    vec![
        format!(
            "SELECT count(*) FROM users WHERE last_seen_at < {} AND member",
            time_to(&queries[0], 0)
        ),
        "SELECT count(*) FROM users WHERE cart_count >= 1".to_owned(),
        "SELECT count(*) FROM users WHERE NOT member AND email IS NOT NULL".to_owned(),
        format!(
            "SELECT count(*) FROM users WHERE last_seen_at >= {} AND list_contains(tags, 'vip') \
             AND cart_count >= 1 AND id IN (SELECT user_id FROM events WHERE name = 'PageView' \
             AND created_at >= {} GROUP BY user_id HAVING count(*) >= 3)",
            time_from(&queries[3], 0),
            since(&queries[3], 3, 0)
        ),
        format!(
            "SELECT count(*) FROM users WHERE (list_contains(tags, 'sale') \
             OR list_contains(tags, 'coupon') OR city = 'Busan' OR plan IN ('pro', 'team') \
             OR sessions_count > 20) AND (id IN (SELECT user_id FROM events WHERE \
             name = 'Purchase' AND created_at >= {} GROUP BY user_id HAVING count(*) >= 1) \
             OR email IS NOT NULL OR browser = 'Safari')",
            since(&queries[4], 1, 0)
        ),
    ]
}

/// Extra PostgreSQL indexes for these filters, so the peer is not judged without them.
const PG_INDEXES: &[&str] = &[
    "CREATE INDEX IF NOT EXISTS bench_users_seen ON users (channel_id, last_seen_at)",
    "CREATE INDEX IF NOT EXISTS bench_users_member ON users (channel_id, (member_id IS NOT NULL), last_seen_at)",
    "CREATE INDEX IF NOT EXISTS bench_users_tags ON users USING GIN (tags)",
    "CREATE INDEX IF NOT EXISTS bench_users_cart ON users (channel_id, (((profile->'cartCount') #>> '{}')::float8)) WHERE jsonb_typeof(profile->'cartCount') = 'number'",
    "CREATE INDEX IF NOT EXISTS bench_users_email ON users (channel_id) WHERE profile ? 'email'",
    "CREATE INDEX IF NOT EXISTS bench_events_name ON events (channel_id, name, created_at, user_id)",
    // Vacuumed as well as analyzed: the visibility map allows index-only scans, and
    // autovacuum does not wake up on the fresh tables in the middle of the timed runs.
    "VACUUM ANALYZE",
];

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs `f` once to warm up, then `runs` times; returns (p50, p99) in ms and the answer.
async fn time<F, Fut>(runs: usize, mut f: F) -> anyhow::Result<(f64, f64, u64)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<u64>>,
{
    let answer = f().await?;
    let mut ms = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let n = f().await?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        if n != answer {
            bail!("answer changed between runs: {answer} then {n}");
        }
    }
    ms.sort_by(f64::total_cmp);
    Ok((percentile(&ms, 0.5), percentile(&ms, 0.99), answer))
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

async fn register_fields(app: &App, ch: i64) -> anyhow::Result<()> {
    for (k, t) in FIELDS {
        app.store
            .insert_profile_field(
                ch,
                &ProfileField {
                    key: ProfileKey::parse(k).map_err(anyhow::Error::msg)?,
                    name: (*k).to_owned(),
                    field_type: *t,
                    sensitive: false,
                    builtin: false,
                    created_at: 0,
                },
            )
            .await?;
    }
    Ok(())
}

struct Target {
    app: App,
    ch: ChannelInfo,
    creds: sori_app::ChannelCredentials,
}

async fn open(url: Option<&str>, dir: &Path) -> anyhow::Result<Target> {
    let cfg = sori::Config {
        data_dir: dir.to_path_buf(),
        database_url: url.map(str::to_owned),
        pg_max_connections: 4,
        ..sori::Config::default()
    };
    let store = sori::open_store(&cfg).await?;
    let app = sori::app(&cfg, store).await?;
    let creds = sori::create_channel(
        &app,
        sori_app::ChannelSpec {
            name: "Bench".into(),
            owner_email: "bench@example.com".into(),
            owner_password: Some("bench-password-1".into()),
            time_zone: None,
        },
    )
    .await?;
    let ch = app
        .channels
        .authenticate(&creds.access_key, &creds.access_secret)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    register_fields(&app, ch.channel.id).await?;
    Ok(Target {
        app,
        ch: (*ch).clone(),
        creds,
    })
}

fn csv_str(s: Option<&str>) -> String {
    match s {
        None => String::new(),
        Some(s) => format!("\"{}\"", s.replace('"', "\"\"")),
    }
}

/// Runs the whole benchmark.
pub async fn run(
    users: u64,
    seed: u64,
    pg_admin: Option<String>,
    sori_runs: usize,
    peer_runs: usize,
) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("audience benchmark | {users} users | seed {seed} | {cores} cores");
    let dir = tempfile::tempdir()?;
    let mut sqlite = open(None, dir.path()).await?;
    let mut pg_url = None;
    let mut pg = match pg_admin {
        Some(admin) => {
            let url = crate::fresh_pg_database(&admin).await?;
            let t = open(Some(&url), dir.path()).await?;
            pg_url = Some(url);
            Some(t)
        }
        None => {
            println!("(no --pg-url: PostgreSQL is skipped)");
            None
        }
    };

    // Load.
    let now = sori_app::secrets::now_ms();
    let users_csv = dir.path().join("users.csv");
    let events_csv = dir.path().join("events.csv");
    let mut ucsv = std::io::BufWriter::new(std::fs::File::create(&users_csv)?);
    let mut ecsv = std::io::BufWriter::new(std::fs::File::create(&events_csv)?);
    writeln!(
        ucsv,
        "id,member,last_seen_at,created_at,tags,email,cart_count,plan,city,sessions_count,browser"
    )?;
    writeln!(ecsv, "user_id,name,created_at")?;
    let started = Instant::now();
    let (mut n_events, chunk) = (0u64, 10_000u64);
    let bar = indicatif::ProgressBar::new(users);
    let mut start = 0;
    while start < users {
        let end = (start + chunk).min(users);
        let mut us = Vec::with_capacity((end - start) as usize);
        let mut evs = Vec::new();
        for n in start..end {
            let g = generate::user(seed, n, now, 90);
            let u = &g.user;
            writeln!(
                ucsv,
                "{},{},{},{},{},{},{},{},{},{},{}",
                u.id,
                u.member(),
                u.last_seen_at.map_or(String::new(), |t| t.to_string()),
                u.created_at,
                csv_str(Some(&u.tags.join("|"))),
                csv_str(u.profile.get("email").and_then(Value::as_str)),
                u.profile
                    .get("cartCount")
                    .map_or(String::new(), |v| v.to_string()),
                csv_str(u.profile.get("plan").and_then(Value::as_str)),
                csv_str(u.city.as_deref()),
                u.sessions_count,
                csv_str(u.web.browser_name.as_deref()),
            )?;
            for (uid, e) in &g.events {
                writeln!(ecsv, "{uid},{},{}", e.name, e.created_at)?;
            }
            n_events += g.events.len() as u64;
            us.push(g.user);
            evs.extend(g.events);
        }
        let (a, b) = (&sqlite, pg.as_ref());
        let load_pg = async {
            match b {
                Some(t) => t.app.store.bulk_load(t.ch.channel.id, &us, &evs).await,
                None => Ok(()),
            }
        };
        let (r1, r2) = tokio::join!(a.app.store.bulk_load(a.ch.channel.id, &us, &evs), load_pg);
        r1.map_err(|e| anyhow::anyhow!("sqlite load: {e}"))?;
        r2.map_err(|e| anyhow::anyhow!("postgres load: {e}"))?;
        bar.inc(end - start);
        start = end;
    }
    bar.finish_and_clear();
    ucsv.flush()?;
    ecsv.flush()?;
    println!(
        "loaded {users} users and {n_events} events into SQLite{} and CSV in {:.0} s",
        if pg.is_some() { ", PostgreSQL" } else { "" },
        started.elapsed().as_secs_f64()
    );

    if let Some(url) = &pg_url {
        // The indexes a careful operator would add for these filters, then a vacuum and
        // fresh statistics.
        let t = Instant::now();
        for sql in PG_INDEXES {
            let ok = Command::new("psql")
                .args([url.as_str(), "-q", "-c", sql])
                .status()
                .context("running psql")?
                .success();
            if !ok {
                bail!("psql failed on {sql}");
            }
        }
        println!(
            "PostgreSQL: {} extra indexes and VACUUM ANALYZE in {:.0} s",
            PG_INDEXES.len() - 1,
            t.elapsed().as_secs_f64()
        );
    }

    // Start-up rebuild, as `serve` does it: fresh services over the loaded SQLite store.
    let before = rss_bytes();
    let t = Instant::now();
    sqlite.app = App::new(sqlite.app.store.clone(), 1, true)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let build_s = t.elapsed().as_secs_f64();
    let grown = rss_bytes().saturating_sub(before);
    println!(
        "projection rebuild from SQLite: {build_s:.2} s (target ≤ 10 s); memory {:.0} MiB by its own account, process grew {:.0} MiB (target ≤ 1024 MiB)",
        sqlite.app.audience.bytes() as f64 / 1048576.0,
        grown as f64 / 1048576.0
    );
    if let Some(t) = pg.as_mut() {
        t.app = App::new(t.app.store.clone(), 4, true)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }

    // Resolve the filters once, so every engine gets the same bounds.
    let tz = sori_domain::channel::time_zone("timeZone", &sqlite.ch.channel.time_zone)?;
    let mut queries = Vec::new();
    for (_, f) in filters() {
        let checked = sqlite
            .app
            .check_filter(&sqlite.ch, "filter", &f)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        queries.push(checked.resolve(&tz, now, 90));
    }

    // DuckDB.
    let duck = duckdb(
        &users_csv,
        &events_csv,
        &duck_sql(&queries),
        peer_runs.max(5),
    )?;

    println!(
        "{:<36} {:>10} {:>10} {:>12} {:>12} {:>10} {:>10} {:>9} {:>9}",
        "filter",
        "count",
        "sori p50",
        "sori p99",
        "pg p50",
        "pg p99",
        "duck p50",
        "pg/sori",
        "duck/sori"
    );
    for (i, ((name, _), q)) in filters().iter().zip(&queries).enumerate() {
        let (s50, s99, n) = time(sori_runs, || async {
            sqlite
                .app
                .count_users(&sqlite.ch, q, Engine::Memory)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))
        })
        .await?;
        let (p50, p99) = match &pg {
            Some(t) => {
                let (p50, p99, pn) = time(peer_runs, || async {
                    t.app
                        .count_users(&t.ch, q, Engine::Sql)
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))
                })
                .await?;
                if pn != n {
                    bail!("{name}: PostgreSQL counted {pn}, Sori {n}");
                }
                (p50, p99)
            }
            None => (f64::NAN, f64::NAN),
        };
        let (d50, dn) = duck[i];
        if dn != n {
            bail!("{name}: DuckDB counted {dn}, Sori {n}");
        }
        println!(
            "{name:<36} {n:>10} {s50:>8.2}ms {s99:>10.2}ms {p50:>10.1}ms {p99:>8.1}ms {d50:>8.2}ms {:>8.0}x {:>8.1}x",
            p50 / s50,
            d50 / s50
        );
    }
    Ok(())
}

/// Loads the CSVs into DuckDB with typed columns and times the queries there; returns
/// (p50 ms, count) per query.
fn duckdb(
    users: &Path,
    events: &Path,
    sql: &[String],
    runs: usize,
) -> anyhow::Result<Vec<(f64, u64)>> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/duckdb_audience.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(users)
        .arg(events)
        .arg(runs.to_string())
        .arg(serde_json::to_string(sql)?)
        .output()
        .context("running python3 bench/duckdb_audience.py (pip install duckdb)")?;
    if !out.status.success() {
        bail!("duckdb: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: Vec<(f64, u64)> = serde_json::from_slice(&out.stdout)?;
    Ok(v)
}

/// `sori-bench generate`: loads generated users and events into a store, in a new channel.
pub async fn generate_into(
    users: u64,
    seed: u64,
    data_dir: std::path::PathBuf,
    database_url: Option<String>,
) -> anyhow::Result<()> {
    let t = open(database_url.as_deref(), &data_dir).await?;
    let now = sori_app::secrets::now_ms();
    let bar = indicatif::ProgressBar::new(users);
    let (mut start, mut n_events) = (0, 0);
    while start < users {
        let end = (start + 10_000).min(users);
        let mut us = Vec::new();
        let mut evs = Vec::new();
        for n in start..end {
            let g = generate::user(seed, n, now, 90);
            n_events += g.events.len();
            us.push(g.user);
            evs.extend(g.events);
        }
        t.app
            .store
            .bulk_load(t.ch.channel.id, &us, &evs)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        bar.inc(end - start);
        start = end;
    }
    bar.finish_and_clear();
    println!(
        "generated {users} users and {n_events} events (seed {seed}) into channel {} ({})",
        t.ch.channel.id, t.ch.channel.name
    );
    println!(
        "accessKey {} accessSecret {} writeKey {}",
        t.creds.access_key, t.creds.access_secret, t.creds.write_key
    );
    println!("owner login: bench@example.com / bench-password-1");
    Ok(())
}
