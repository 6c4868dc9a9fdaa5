//! The upsert benchmark: wrk drives `PUT /open/v5/users/@{memberId}` over keep-alive
//! connections with realistic profiles (Korean and Latin names, e-mail, a Korean mobile
//! number the server normalizes to E.164, numbers, a datetime, a list, a `profileOnce` UTM
//! value, a tag) over a pool of member ids, so a run mixes creates and updates. A warm-up
//! run comes first; then the measured run prints throughput and latency percentiles, and
//! the same requests against the server's no-op endpoint give the machine's HTTP ceiling
//! at that moment (this shared machine's speed moves by ±20 % between runs).

use anyhow::bail;

use crate::wrk::wrk;

/// Lua for wrk: each request upserts a random member of `members` with a fresh profile
/// (or, with `noop`, sends the same body to `POST /_noop`).
fn script(key: &str, secret: &str, members: u64, noop: bool) -> String {
    let target = if noop {
        r#""POST", "/_noop""#.to_owned()
    } else {
        r#""PUT", "/open/v5/users/@member-" .. n"#.to_owned()
    };
    format!(
        r#"
local names = {{"김민준", "이서연", "박지호", "최수아", "Jane Doe", "John Smith"}}
local tags = {{"vip", "newsletter", "cart", "app", "seoul", "returning"}}
local grades = {{"bronze", "silver", "gold"}}
local headers = {{["x-access-key"] = "{key}", ["x-access-secret"] = "{secret}", ["Content-Type"] = "application/json"}}
function request()
  local n = math.random(0, {members} - 1)
  local r = math.random(0, 1073741823)
  local body = string.format('{{"profile":{{"name":"%s","email":"user%d@example.com","mobileNumber":"010%08d","cartCount":%d,"totalSpent":%.1f,"grade":"%s","lastCheckoutCompletedAt":%.0f,"interests":["%s","%s"]}},"profileOnce":{{"utmSource":"google"}},"tags":["%s"]}}',
    names[r % 6 + 1], n, n % 100000000, r % 7, (r % 500000) / 10, grades[r % 3 + 1],
    1700000000000 + r % 10000000, tags[r % 6 + 1], tags[math.floor(r / 256) % 6 + 1],
    tags[math.floor(r / 65536) % 6 + 1])
  return wrk.format({target}, headers, body)
end
"#
    )
}

/// Runs the warm-up and the measured load and prints the figures.
pub fn run(
    server: &crate::Server,
    clients: usize,
    seconds: u64,
    members: u64,
) -> anyhow::Result<()> {
    let lua = script(&server.key, &server.secret, members, false);
    wrk(&server.base, &lua, clients, 2)?;
    let r = wrk(&server.base, &lua, clients, seconds)?;
    println!(
        "upserts: {} in {seconds} s = {:.0}/s; latency p50 {:.2} ms, p99 {:.2} ms; non-2xx {}",
        r.requests, r.requests_per_s, r.p50_ms, r.p99_ms, r.non_2xx
    );
    let noop = wrk(
        &server.base,
        &script(&server.key, &server.secret, members, true),
        clients,
        seconds,
    )?;
    println!(
        "no-op endpoint, same requests: {:.0}/s (upserts reach {:.0}% of it)",
        noop.requests_per_s,
        100.0 * r.requests_per_s / noop.requests_per_s.max(1.0)
    );
    if r.non_2xx > 0 {
        bail!("{} upserts failed", r.non_2xx);
    }
    Ok(())
}
