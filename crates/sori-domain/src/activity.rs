//! Activity of a user: when they were last seen, sessions, and the device they used
//! (SPEC §4 "Sessions"). A visit after 30 minutes without a visit on its platform starts a
//! new session there; `sessionsCount` is the sum of the web and app sessions.
//! Times only move the right way: `lastSeenAt` never goes back, `createdAt` never forward,
//! so replayed or historical data (Segment `timestamp`, imports) cannot corrupt them.

use crate::user::{DeviceInfo, User};

/// Inactivity that ends a session.
pub const SESSION_GAP_MS: i64 = 30 * 60 * 1000;

/// Which counters a visit feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// A browser (`web.*`).
    Web,
    /// A mobile app (`mobile.*`).
    Mobile,
}

/// A page arrival or boot: it may start a session and tells us the device.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Visit {
    /// Platform; web when absent.
    pub platform: Option<Platform>,
    /// Device facts parsed from the user agent (only `Some` fields overwrite).
    pub device: DeviceInfo,
}

/// What a request tells us about the user's activity.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Activity {
    /// Time of the activity (ms); `None` when the request carries no activity (a plain
    /// profile update by the business is not the customer being seen).
    pub at: Option<i64>,
    /// Present for visits (boots, page views).
    pub visit: Option<Visit>,
    /// Explicit creation time (imports); only ever moves `createdAt` earlier.
    pub created_at: Option<i64>,
    /// Explicit last-seen time (imports); only ever moves `lastSeenAt` later.
    pub last_seen_at: Option<i64>,
    /// City reported by the client.
    pub city: Option<String>,
    /// Country reported by the client.
    pub country: Option<String>,
    /// When the place was reported by a call that is no activity itself (an `identify`
    /// sent late, with its own `timestamp`): like a visit's, such a place is taken only
    /// if it is not older than the user's last activity.
    pub place_at: Option<i64>,
}

impl Activity {
    /// Activity at `at` without a visit (an event).
    pub fn seen(at: i64) -> Self {
        Self {
            at: Some(at),
            ..Self::default()
        }
    }

    /// True when applying this can change nothing.
    pub fn is_empty(&self) -> bool {
        self.at.is_none()
            && self.created_at.is_none()
            && self.last_seen_at.is_none()
            && self.city.is_none()
            && self.country.is_none()
    }
}

/// Applies activity to `user`; returns whether anything changed.
pub fn apply_activity(user: &mut User, a: &Activity) -> bool {
    let before = user.clone();
    // A place that comes with activity, or with the time of the call that reported it,
    // is the user's place only if that time is the newest (a late-arriving older call
    // must not move them back); one given without a time is a statement about now.
    // An older one still fills a place the user does not have.
    if a.at
        .or(a.place_at)
        .is_none_or(|at| user.last_seen_at.is_none_or(|l| at >= l))
    {
        overwrite(&mut user.city, &a.city);
        overwrite(&mut user.country, &a.country);
    } else {
        fill(&mut user.city, &a.city);
        fill(&mut user.country, &a.country);
    }
    if let Some(c) = a.created_at {
        user.created_at = user.created_at.min(c);
    }
    if let Some(s) = a.last_seen_at {
        user.last_seen_at = Some(user.last_seen_at.map_or(s, |l| l.max(s)));
        // Seen then, so existing by then: an imported `lastSeenAt` older than the user's
        // `createdAt` (a user created now, or upserted before its history arrived) moves
        // `createdAt` back, as an old event does, and an export of it imports again.
        user.created_at = user.created_at.min(s);
    }
    if let Some(at) = a.at {
        user.created_at = user.created_at.min(at);
        if let Some(v) = &a.visit {
            // A session is a platform's: web and app sessions are counted apart, and the
            // total is their sum (seed 002: 총 세션 수 = web + app). Only that platform's
            // visits keep it alive; an event a backend sends does not mean the customer
            // is on the site or in the app.
            let dev = match v.platform.unwrap_or(Platform::Web) {
                Platform::Web => &mut user.web,
                Platform::Mobile => &mut user.mobile,
            };
            if dev.last_seen_at.is_none_or(|l| at - l > SESSION_GAP_MS) {
                dev.sessions_count += 1;
                user.sessions_count += 1;
            }
            if dev.last_seen_at.is_none_or(|l| at >= l) {
                // The newest visit's device, as a whole: a visit that describes one (its
                // user agent, or an app's context) replaces every device field, so a
                // Windows browser followed by a phone never reads "Safari on Windows". A
                // visit that describes none (no user agent) leaves them.
                if v.device.texts().iter().any(|f| f.is_some()) {
                    dev.replace_texts(&v.device);
                }
            }
            dev.last_seen_at = Some(dev.last_seen_at.map_or(at, |l| l.max(at)));
        }
        user.last_seen_at = Some(user.last_seen_at.map_or(at, |l| l.max(at)));
    }
    *user != before
}

fn overwrite(slot: &mut Option<String>, v: &Option<String>) {
    if let Some(v) = v {
        *slot = Some(v.clone());
    }
}

fn fill(slot: &mut Option<String>, v: &Option<String>) {
    if slot.is_none() {
        slot.clone_from(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIN: i64 = 60_000;

    fn visit(at: i64) -> Activity {
        Activity {
            at: Some(at),
            visit: Some(Visit::default()),
            ..Activity::default()
        }
    }

    #[test]
    fn thirty_minutes_of_silence_start_a_session() {
        let mut u = User::new("u".into(), 0);
        apply_activity(&mut u, &visit(0));
        apply_activity(&mut u, &visit(10 * MIN));
        apply_activity(&mut u, &visit(40 * MIN));
        assert_eq!(u.sessions_count, 1);
        apply_activity(&mut u, &visit(71 * MIN));
        assert_eq!(u.sessions_count, 2);
        assert_eq!(u.web.sessions_count, 2);
        assert_eq!(u.last_seen_at, Some(71 * MIN));
        assert_eq!(u.mobile.sessions_count, 0);
    }

    fn app_visit(at: i64) -> Activity {
        Activity {
            at: Some(at),
            visit: Some(Visit {
                platform: Some(Platform::Mobile),
                ..Visit::default()
            }),
            ..Activity::default()
        }
    }

    #[test]
    fn events_neither_start_nor_extend_sessions() {
        let mut u = User::new("u".into(), 0);
        apply_activity(&mut u, &visit(0));
        apply_activity(&mut u, &Activity::seen(25 * MIN));
        assert_eq!(u.sessions_count, 1);
        apply_activity(&mut u, &visit(50 * MIN));
        assert_eq!((u.sessions_count, u.web.sessions_count), (2, 2));
        assert_eq!(u.last_seen_at, Some(50 * MIN));
    }

    #[test]
    fn the_total_is_the_sum_of_web_and_app_sessions() {
        let mut u = User::new("u".into(), 0);
        apply_activity(&mut u, &visit(0));
        apply_activity(&mut u, &app_visit(10 * MIN));
        apply_activity(&mut u, &visit(20 * MIN));
        apply_activity(&mut u, &app_visit(50 * MIN));
        assert_eq!((u.web.sessions_count, u.mobile.sessions_count), (1, 2));
        assert_eq!(u.sessions_count, 3);
    }

    #[test]
    fn the_newest_visit_describes_the_device_as_a_whole() {
        let mut u = User::new("u".into(), 0);
        let seen = |at: i64, device: DeviceInfo| Activity {
            at: Some(at),
            visit: Some(Visit {
                platform: None,
                device,
            }),
            ..Activity::default()
        };
        let windows = DeviceInfo {
            browser: Some("Chrome 120".into()),
            browser_name: Some("Chrome".into()),
            os: Some("Windows 10".into()),
            os_name: Some("Windows".into()),
            device: Some("Desktop".into()),
            ..DeviceInfo::default()
        };
        apply_activity(&mut u, &seen(0, windows.clone()));
        apply_activity(&mut u, &seen(MIN, DeviceInfo::default()));
        assert_eq!(
            u.web.os.as_deref(),
            Some("Windows 10"),
            "no user agent: kept"
        );
        let curl = DeviceInfo {
            browser: Some("curl 7.88.1".into()),
            browser_name: Some("curl".into()),
            ..DeviceInfo::default()
        };
        apply_activity(&mut u, &seen(2 * MIN, curl));
        assert_eq!(u.web.browser.as_deref(), Some("curl 7.88.1"));
        assert_eq!((u.web.os.as_deref(), u.web.device.as_deref()), (None, None));
        apply_activity(&mut u, &seen(MIN, windows));
        assert_eq!(
            u.web.browser_name.as_deref(),
            Some("curl"),
            "an older visit: kept"
        );
    }

    #[test]
    fn historical_activity_moves_created_back_and_never_last_seen_back() {
        let mut u = User::new("u".into(), 1_000 * MIN);
        apply_activity(&mut u, &Activity::seen(900 * MIN));
        assert_eq!(u.created_at, 900 * MIN);
        assert_eq!(u.last_seen_at, Some(900 * MIN));
        apply_activity(&mut u, &Activity::seen(100 * MIN));
        assert_eq!(u.created_at, 100 * MIN);
        assert_eq!(u.last_seen_at, Some(900 * MIN));
        // An imported lastSeenAt older than createdAt moves createdAt back too.
        let mut u = User::new("u".into(), 1_000 * MIN);
        let imported = Activity {
            last_seen_at: Some(50 * MIN),
            ..Activity::default()
        };
        apply_activity(&mut u, &imported);
        assert_eq!((u.created_at, u.last_seen_at), (50 * MIN, Some(50 * MIN)));
    }

    #[test]
    fn only_the_newest_activity_moves_the_place() {
        let mut u = User::new("u".into(), 0);
        let at = |t: i64, city: &str| Activity {
            city: Some(city.into()),
            ..Activity::seen(t)
        };
        apply_activity(&mut u, &at(10 * MIN, "Seoul"));
        apply_activity(&mut u, &at(5 * MIN, "Busan"));
        assert_eq!(
            u.city.as_deref(),
            Some("Seoul"),
            "an older call arrived late"
        );
        apply_activity(&mut u, &at(20 * MIN, "Incheon"));
        assert_eq!(u.city.as_deref(), Some("Incheon"));
        let address = Activity {
            city: Some("Daegu".into()),
            ..Activity::default()
        };
        apply_activity(&mut u, &address);
        assert_eq!(
            u.city.as_deref(),
            Some("Daegu"),
            "an identify's address applies"
        );
        // An identify's location is dated by its call: older than the last activity, it
        // only fills a place the user lacks.
        let located = |t: i64, city: &str, country: &str| Activity {
            city: Some(city.into()),
            country: Some(country.into()),
            place_at: Some(t),
            ..Activity::default()
        };
        apply_activity(&mut u, &located(15 * MIN, "Ulsan", "KR"));
        assert_eq!(
            (u.city.as_deref(), u.country.as_deref()),
            (Some("Daegu"), Some("KR"))
        );
        apply_activity(&mut u, &located(25 * MIN, "Ulsan", "KR"));
        assert_eq!(u.city.as_deref(), Some("Ulsan"));
    }

    proptest! {
        #[test]
        fn any_order_of_events_gives_the_same_extremes(ts in proptest::collection::vec(0i64..1_000_000, 1..20)) {
            let mut u = User::new("u".into(), 2_000_000);
            for t in &ts {
                apply_activity(&mut u, &Activity::seen(*t));
            }
            prop_assert_eq!(u.last_seen_at, ts.iter().max().copied());
            prop_assert_eq!(u.created_at, *ts.iter().min().unwrap());
        }
    }
}
