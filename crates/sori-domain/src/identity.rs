//! Identity merges (SPEC §3.4): when a browser with anonymous history boots as a member who
//! already exists, the anonymous user folds into the member. The member's own values win;
//! the anonymous user only fills gaps.

use crate::limits::{MAX_PROFILE_BYTES, MAX_PROFILE_KEYS, MAX_TAGS_PER_USER};
use crate::user::User;

/// Folds `anon` into `member`: profile values the member lacks (while the profile stays
/// within its key and size limits, so a merge can never make the member's later updates
/// fail), tags (up to the per-user limit), sessions, the earliest creation and the latest
/// activity, and any opt-out (an opt-out is never lost by merging).
pub fn merge_into(member: &mut User, anon: &User) {
    let mut size = crate::update::profile_bytes(&member.profile);
    for (k, v) in &anon.profile {
        if member.profile.contains_key(k) || member.profile.len() >= MAX_PROFILE_KEYS {
            continue;
        }
        let adds = k.len() + serde_json::to_vec(v).map_or(0, |b| b.len()) + 4;
        if size + adds > MAX_PROFILE_BYTES {
            continue;
        }
        size += adds;
        member.profile.insert(k.clone(), v.clone());
    }
    for t in &anon.tags {
        if member.tags.len() >= MAX_TAGS_PER_USER {
            break;
        }
        if !member.tags.contains(t) {
            member.tags.push(t.clone());
        }
    }
    member.unsubscribe_email |= anon.unsubscribe_email;
    member.unsubscribe_texting |= anon.unsubscribe_texting;
    member.has_chat |= anon.has_chat;
    member.has_push_token |= anon.has_push_token;
    member.sessions_count += anon.sessions_count;
    member.web.sessions_count += anon.web.sessions_count;
    member.mobile.sessions_count += anon.mobile.sessions_count;
    member.created_at = member.created_at.min(anon.created_at);
    member.last_seen_at = match (member.last_seen_at, anon.last_seen_at) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    for (slot, v) in [
        (&mut member.city, &anon.city),
        (&mut member.country, &anon.country),
        (&mut member.language, &anon.language),
    ] {
        if slot.is_none() {
            slot.clone_from(v);
        }
    }
    // Per platform: the device is filled when the member describes none, and the
    // platform's last visit is the later of the two, whichever side describes the device:
    // the next visit's session is judged against it, so an anonymous visit a minute
    // before signing in keeps its session going instead of starting another.
    for (m, a) in [
        (&mut member.web, &anon.web),
        (&mut member.mobile, &anon.mobile),
    ] {
        if m.texts().iter().all(|f| f.is_none()) {
            m.replace_texts(a);
        }
        m.last_seen_at = m.last_seen_at.max(a.last_seen_at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn member_values_win_and_gaps_are_filled() {
        let mut m = User::new("m".into(), 100);
        m.member_id = Some("42".into());
        m.profile.insert("name".into(), json!("Kim"));
        m.tags = vec!["vip".into()];
        let mut a = User::new("a".into(), 50);
        a.profile.insert("name".into(), json!("anon"));
        a.profile.insert("nickname".into(), json!("K"));
        a.tags = vec!["new".into(), "vip".into()];
        a.sessions_count = 2;
        a.unsubscribe_email = true;
        a.last_seen_at = Some(70);
        merge_into(&mut m, &a);
        assert_eq!(m.profile["name"], json!("Kim"));
        assert_eq!(m.profile["nickname"], json!("K"));
        assert_eq!(m.tags, vec!["vip", "new"]);
        assert_eq!(m.sessions_count, 2);
        assert!(m.unsubscribe_email);
        assert_eq!(m.created_at, 50);
        assert_eq!(m.last_seen_at, Some(70));
        assert_eq!(m.member_id.as_deref(), Some("42"));
    }

    #[test]
    fn each_platform_keeps_its_latest_visit_and_a_device_fills_a_gap() {
        let mut m = User::new("m".into(), 1);
        m.web.browser = Some("Firefox 120".into());
        m.web.last_seen_at = Some(100);
        m.web.sessions_count = 1;
        m.mobile.last_seen_at = Some(300);
        m.mobile.sessions_count = 1;
        let mut a = User::new("a".into(), 1);
        a.web.browser = Some("Chrome 120".into());
        a.web.last_seen_at = Some(200);
        a.web.sessions_count = 1;
        a.mobile.app_name = Some("Shop".into());
        a.mobile.last_seen_at = Some(250);
        a.mobile.sessions_count = 2;
        merge_into(&mut m, &a);
        assert_eq!(
            (
                m.web.browser.as_deref(),
                m.web.last_seen_at,
                m.web.sessions_count
            ),
            (Some("Firefox 120"), Some(200), 2),
            "the member's device stays; the anonymous visit is the later one"
        );
        assert_eq!(
            (
                m.mobile.app_name.as_deref(),
                m.mobile.last_seen_at,
                m.mobile.sessions_count
            ),
            (Some("Shop"), Some(300), 3),
            "a device fills the member's gap; the member's visit is the later one"
        );
    }

    #[test]
    fn a_merge_keeps_the_profile_within_its_limits() {
        let mut m = User::new("m".into(), 1);
        for i in 0..MAX_PROFILE_KEYS - 1 {
            m.profile.insert(format!("k{i}"), json!(1));
        }
        let mut a = User::new("a".into(), 1);
        for i in 0..10 {
            a.profile.insert(format!("x{i}"), json!(1));
        }
        merge_into(&mut m, &a);
        assert_eq!(m.profile.len(), MAX_PROFILE_KEYS);
        let mut big = User::new("b".into(), 1);
        big.profile
            .insert("huge".into(), json!("x".repeat(MAX_PROFILE_BYTES)));
        let mut small = User::new("s".into(), 1);
        merge_into(&mut small, &big);
        assert!(small.profile.is_empty());
    }
}
