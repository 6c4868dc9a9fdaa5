//! Per-key rate limiting of the Open API: a token bucket per channel key pair on each node,
//! reported in `x-ratelimit-*` headers, 429 when empty.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::error::ApiError;

/// Buckets kept before full (idle) ones are dropped, bounding memory under key spraying.
const MAX_BUCKETS: usize = 10_000;

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets by key.
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The request may proceed.
    pub allowed: bool,
    /// Bucket size.
    pub limit: u64,
    /// Tokens left after this request.
    pub remaining: u64,
    /// Seconds until the bucket is full again.
    pub reset: u64,
    /// Seconds until the next request may proceed (0 when this one may).
    pub retry_after: u64,
}

impl RateLimiter {
    /// `per_second` sustained, `burst` at once; `per_second == 0` turns limiting off.
    pub fn new(per_second: u32, burst: u32) -> Self {
        Self {
            per_second: f64::from(per_second),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::default(),
        }
    }

    /// Sustained requests per second allowed.
    pub fn per_second(&self) -> f64 {
        self.per_second
    }

    /// Whether limiting is on.
    pub fn enabled(&self) -> bool {
        self.per_second > 0.0
    }

    /// Takes one token for `key`.
    pub fn check(&self, key: &str, now: Instant) -> Decision {
        let Ok(mut map) = self.buckets.lock() else {
            return Decision {
                allowed: true,
                limit: 0,
                remaining: 0,
                reset: 0,
                retry_after: 0,
            };
        };
        if map.len() >= MAX_BUCKETS && !map.contains_key(key) {
            let (rate, burst) = (self.per_second, self.burst);
            map.retain(|_, b| b.tokens + now.duration_since(b.last).as_secs_f64() * rate < burst);
        }
        let b = map.entry(key.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        b.tokens =
            (b.tokens + now.duration_since(b.last).as_secs_f64() * self.per_second).min(self.burst);
        b.last = now;
        let allowed = b.tokens >= 1.0;
        if allowed {
            b.tokens -= 1.0;
        }
        Decision {
            allowed,
            limit: self.burst as u64,
            remaining: b.tokens.floor() as u64,
            reset: ((self.burst - b.tokens) / self.per_second).ceil() as u64,
            // A refused request waits for one token, not for the whole bucket.
            retry_after: match allowed {
                true => 0,
                false => ((1.0 - b.tokens) / self.per_second).ceil().max(1.0) as u64,
            },
        }
    }
}

/// Middleware for the Open API router.
pub async fn limit(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let limiter = &state.limiter;
    if !limiter.enabled() {
        return next.run(req).await;
    }
    // Buckets belong to authenticated channels, so nobody can spend another channel's
    // budget with its public access key and a wrong secret; every failed authentication
    // shares one bucket, which bounds key guessing (and its uncached lookups).
    let creds = {
        let header = |n: &str| {
            req.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        (header("x-access-key"), header("x-access-secret"))
    };
    let key = match creds {
        (Some(k), Some(s)) => match state.app.channels.authenticate(&k, &s).await {
            Ok(info) => {
                let key = format!("channel:{}", info.channel.id);
                // The handler takes the channel from here instead of looking it up again.
                req.extensions_mut()
                    .insert(crate::open::Authenticated(info));
                key
            }
            Err(sori_app::AppError::Unauthorized(_)) => "unauthenticated".to_owned(),
            // The store could not say (down, overloaded): answer so now, rather than let
            // the handler wait for the same lookup a second time.
            Err(e) => return ApiError::from(e).into_response(),
        },
        _ => "unauthenticated".to_owned(),
    };
    let d = limiter.check(&key, Instant::now());
    let mut resp = if d.allowed {
        next.run(req).await
    } else {
        let mut r = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "tooManyRequests",
            format!(
                "rate limit exceeded: {} requests per second with bursts of up to {}, per \
                 access key; retry in {} s",
                limiter.per_second(),
                d.limit,
                d.retry_after
            ),
        )
        .into_response();
        r.headers_mut()
            .insert("retry-after", HeaderValue::from(d.retry_after));
        r
    };
    let h = resp.headers_mut();
    h.insert("x-ratelimit-limit", HeaderValue::from(d.limit));
    h.insert("x-ratelimit-remaining", HeaderValue::from(d.remaining));
    h.insert("x-ratelimit-reset", HeaderValue::from(d.reset));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_empties_and_refills() {
        let l = RateLimiter::new(10, 3);
        let t0 = Instant::now();
        assert!(l.check("k", t0).allowed);
        assert!(l.check("k", t0).allowed);
        let d = l.check("k", t0);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        assert!(!l.check("k", t0).allowed);
        assert!(l.check("other", t0).allowed);
        assert!(l.check("k", t0 + Duration::from_millis(150)).allowed);
    }

    #[test]
    fn a_refused_request_waits_for_one_token_not_a_full_bucket() {
        // 1 per second, bursts of 2: the third request at once waits 1 s, while the
        // bucket is full again only after 2 s.
        let l = RateLimiter::new(1, 2);
        let t0 = Instant::now();
        assert!(l.check("k", t0).allowed && l.check("k", t0).allowed);
        let d = l.check("k", t0);
        assert!(!d.allowed);
        assert_eq!((d.retry_after, d.reset), (1, 2));
        assert!(
            l.check("k", t0 + Duration::from_secs(d.retry_after))
                .allowed
        );
    }
}
