//! The ingestion benchmark: wrk drives `/v1/batch` (100 events per request), `/v1/track`
//! (one event per request) and Open API batches (100 events of one member per request,
//! the other batched path SPEC §15 names) over keep-alive connections, then the same
//! requests against `/_noop`, and the run prints events/s, latency percentiles and the
//! ratio to the no-op figure. Each Segment event has a unique random `messageId` (as
//! Segment clients send), so the dedupe index is part of the measured path; afterwards the
//! stored count is checked against what was acknowledged.

use anyhow::bail;
use base64::Engine;
use serde_json::Value;

use crate::cpu;
use crate::wrk::wrk;

/// Lua for wrk: builds each request's body with fresh message ids spread over 10,000 users.
fn script(path: &str, auth: &str, events_per_request: usize) -> String {
    let single = events_per_request == 1;
    // Message ids look like the random UUIDs (v4) Segment and RudderStack clients send, so
    // each lands at a random place in the dedupe index as in production. Their last
    // group makes them unique by construction: this run's tag, the wrk thread, a counter
    // (runs of one benchmark share the store, and dedupe would drop a repeated id).
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    let (run_hi, run_lo) = ((micros >> 16) & 0xffff, micros & 0xffff);
    format!(
        r#"
local counter = 0
local function message_id(n)
  return string.format('%08x-%04x-4%03x-%04x-%04x%01x%07x', math.random(0, 2147483647),
    math.random(0, 65535), math.random(0, 4095), {run_hi}, {run_lo}, tid % 16, n)
end
local function event(n)
  local u = (n * 7 + tid * 131) % 10000
  return string.format('{{"type":"track","userId":"u%d","event":"Product Viewed","messageId":"%s","properties":{{"sku":"SKU-%d","price":%d,"category":"shoes","currency":"KRW"}},"context":{{"page":{{"url":"https://shop.example/p/%d"}}}}}}', u, message_id(n), n % 500, 1000 + n % 90000, n % 500)
end
function request()
  local body
  if {single} then
    counter = counter + 1
    body = event(counter)
  else
    local items = {{}}
    for i = 1, {events_per_request} do
      counter = counter + 1
      items[i] = event(counter)
    end
    body = '{{"batch":[' .. table.concat(items, ",") .. ']}}'
  end
  return wrk.format("POST", "{path}", {{["Authorization"] = "{auth}", ["Content-Type"] = "application/json"}}, body)
end
"#
    )
}

/// Lua for wrk: Open API batches (`POST /open/v5/users/@{{memberId}}/events` with
/// `{{"events": [...]}}`), each for one of 10,000 members, `events_per_request` events per
/// batch. The Open API has no `messageId`, so nothing is deduplicated and the bodies can be
/// built once: 50 of them, cycled (wrk, on the same two cores, then spends half the CPU it
/// spent formatting a hundred events per request). With `noop` every request goes to the
/// no-op endpoint instead.
fn openapi_script(key: &str, secret: &str, events_per_request: usize, noop: bool) -> String {
    format!(
        r#"
local bodies = {{}}
for b = 1, 50 do
  local items = {{}}
  for i = 1, {events_per_request} do
    local n = b * {events_per_request} + i
    items[i] = string.format('{{"name":"Product Viewed","property":{{"sku":"SKU-%d","price":%d,"category":"shoes","currency":"KRW"}},"page":"https://shop.example/p/%d"}}', n % 500, 1000 + n % 90000, n % 500)
  end
  bodies[b] = '{{"events":[' .. table.concat(items, ",") .. ']}}'
end
local headers = {{["x-access-key"] = "{key}", ["x-access-secret"] = "{secret}", ["Content-Type"] = "application/json"}}
local counter = 0
function request()
  counter = counter + 1
  local u = (counter * 7 + tid * 131) % 10000
  local path = {noop} and "/_noop" or ("/open/v5/users/@u" .. u .. "/events")
  return wrk.format("POST", path, headers, bodies[counter % 50 + 1])
end
"#
    )
}

async fn stored_events(base: &str, key: &str, secret: &str) -> anyhow::Result<i64> {
    let v: Value = reqwest::Client::new()
        .get(format!("{base}/open/v5/events/catalog"))
        .header("x-access-key", key)
        .header("x-access-secret", secret)
        .send()
        .await?
        .json()
        .await?;
    Ok(v["events"]
        .as_array()
        .map_or(0, |a| a.iter().filter_map(|e| e["count"].as_i64()).sum()))
}

/// Runs the loads named in `runs` (each also against the no-op endpoint) and prints the
/// figures.
pub async fn run(
    server: &crate::Server,
    seconds: u64,
    batch_connections: usize,
    single_connections: usize,
    runs: &[String],
) -> anyhow::Result<()> {
    let (base, write_key) = (server.base.as_str(), server.write_key.as_str());
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{write_key}:"))
    );
    let mut acked = 0u64;
    for (run, label, n, conns, path) in [
        (
            "batch",
            "batched (/v1/batch, 100 events per request)",
            100,
            batch_connections,
            "/v1/batch",
        ),
        (
            "single",
            "one event per request (/v1/track)",
            1,
            single_connections,
            "/v1/track",
        ),
        (
            "openapi",
            "Open API batches (/open/v5/users/@memberId/events, 100 events of one member per request)",
            100,
            batch_connections,
            "",
        ),
    ] {
        if !runs.iter().any(|r| r == run) {
            continue;
        }
        let cpu_now = || {
            (
                server.pid().and_then(cpu::process_seconds),
                cpu::postgres_seconds(),
            )
        };
        let (server0, pg0) = cpu_now();
        let (load, noop_load) = if run == "openapi" {
            (
                openapi_script(&server.key, &server.secret, n, false),
                openapi_script(&server.key, &server.secret, n, true),
            )
        } else {
            (script(path, &auth, n), script("/_noop", &auth, n))
        };
        let real = wrk(base, &load, conns, seconds)?;
        let (server1, pg1) = cpu_now();
        let noop = wrk(base, &noop_load, conns, seconds)?;
        acked += (real.requests - real.non_2xx) * n as u64;
        let events = real.requests_per_s * n as f64;
        println!("{label}, {conns} connections:");
        println!(
            "  sori  {:>9.0} req/s = {:>9.0} events/s; ack p50 {:.2} ms, p99 {:.2} ms; non-2xx {}",
            real.requests_per_s, events, real.p50_ms, real.p99_ms, real.non_2xx
        );
        // CPU per event: steadier than throughput from run to run (see `cpu`).
        let done = ((real.requests - real.non_2xx) * n as u64).max(1) as f64;
        if let (Some(a), Some(b)) = (server0, server1) {
            let mut line = format!(
                "  server CPU {:.2} cores, {:.1} µs per event",
                (b - a) / seconds as f64,
                (b - a) * 1e6 / done
            );
            if pg1 > pg0 {
                line += &format!(
                    "; PostgreSQL {:.2} cores, {:.1} µs per event",
                    (pg1 - pg0) / seconds as f64,
                    (pg1 - pg0) * 1e6 / done
                );
            }
            println!("{line}");
        }
        println!(
            "  no-op {:>9.0} req/s; p50 {:.2} ms, p99 {:.2} ms",
            noop.requests_per_s, noop.p50_ms, noop.p99_ms
        );
        println!(
            "  sori reaches {:.0}% of the no-op endpoint's throughput",
            100.0 * real.requests_per_s / noop.requests_per_s.max(1.0)
        );
    }
    // wrk's last in-flight requests may still be answered after it stops counting.
    let stored = stored_events(base, &server.key, &server.secret).await?;
    println!("stored events {stored}, acknowledged {acked}");
    if (stored as u64) < acked {
        bail!("fewer events stored ({stored}) than acknowledged ({acked})");
    }
    Ok(())
}
