//! Runs wrk (keep-alive HTTP load from a Lua script, two threads) and reads its report.
//! The benchmarks use it rather than an in-process client: on a 2-core machine the load
//! generator shares the cores with the server, and wrk costs the least per request.

use std::process::Command;

use anyhow::{Context, bail};

/// Lua run before every script: each wrk thread learns its number (`tid`, from 1) and
/// seeds its random numbers from it, so scripts can make per-thread unique values.
const PREAMBLE: &str = r#"
local threads = {}
tid = 0
function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end
function init(args)
  math.randomseed(tid * 7919)
end
"#;

/// What one wrk run measured.
pub struct WrkRun {
    /// Completed requests per second.
    pub requests_per_s: f64,
    /// Median latency.
    pub p50_ms: f64,
    /// 99th percentile latency.
    pub p99_ms: f64,
    /// Completed requests.
    pub requests: u64,
    /// Requests answered with anything but 2xx or 3xx.
    pub non_2xx: u64,
}

fn ms(s: &str) -> Option<f64> {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
    let v: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => v / 1000.0,
        "ms" => v,
        "s" => v * 1000.0,
        "m" => v * 60_000.0,
        _ => return None,
    })
}

/// Runs `lua` against `base` over `connections` keep-alive connections for `seconds`.
pub fn wrk(base: &str, lua: &str, connections: usize, seconds: u64) -> anyhow::Result<WrkRun> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("load.lua");
    std::fs::write(&file, format!("{PREAMBLE}{lua}"))?;
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            "-s",
        ])
        .arg(&file)
        .arg(base)
        .output()
        .context("running wrk (install it: apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    let mut run = WrkRun {
        requests_per_s: 0.0,
        p50_ms: 0.0,
        p99_ms: 0.0,
        requests: 0,
        non_2xx: 0,
    };
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["Requests/sec:", v] => run.requests_per_s = v.parse()?,
            ["50%", v] => run.p50_ms = ms(v).unwrap_or(0.0),
            ["99%", v] => run.p99_ms = ms(v).unwrap_or(0.0),
            [n, "requests", "in", ..] => run.requests = n.parse()?,
            ["Non-2xx", "or", "3xx", "responses:", n] => run.non_2xx = n.parse()?,
            _ => {}
        }
    }
    Ok(run)
}
