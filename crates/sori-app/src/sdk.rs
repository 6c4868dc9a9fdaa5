//! The browser SDK's side of identity: boots (member hash, veil id, merge), and the session
//! token that later SDK calls carry. The token is `{userId}.{mac}`; the MAC binds it to the
//! channel and user under the install key, so a browser can only write to the user it
//! booted as.

use sori_domain::activity::{Activity, Visit};
use sori_domain::event::{EventInput, EventSource, NewEvent, PAGE_VIEW};
use sori_domain::{Invalid, UserUpdate, member_hash};
use sori_store::UserTarget;

use crate::auth::ChannelInfo;
use crate::secrets::{keyed_hash, keyed_hash_prefix_matches, new_id, now_ms};
use crate::users::{Ingest, Source};
use crate::{App, AppError, AppResult};

/// Longest veil id a browser may present.
const MAX_VEIL_CHARS: usize = 64;

/// A boot request, already parsed.
#[derive(Debug, Clone, Default)]
pub struct Boot {
    /// Veil id the browser kept, if any.
    pub veil_id: Option<String>,
    /// The business's id for a logged-in customer.
    pub member_id: Option<String>,
    /// Proof that `member_id` came from the business's server.
    pub member_hash: Option<String>,
    /// Profile, language, consent and UTM/referrer values to apply.
    pub update: UserUpdate,
    /// Page for the boot's `PageView`.
    pub page: Option<String>,
    /// Record a `PageView` (option `trackDefaultEvent`).
    pub track_page_view: bool,
    /// Count the boot as a visit (sessions, `web.*`). sori.js sends `false` when it boots
    /// again for a session it lost mid-visit (its user merged away in another tab): that
    /// visit was counted by the first boot.
    pub visit: bool,
    /// `User-Agent` header.
    pub user_agent: Option<String>,
}

/// A successful boot.
#[derive(Debug)]
pub struct Booted {
    /// The user after the boot.
    pub user: sori_domain::User,
    /// Veil id the browser should keep.
    pub veil_id: String,
    /// Token for later SDK calls.
    pub token: String,
    /// The boot's session (see [`SdkSession`]).
    pub session: SdkSession,
}

/// The user an SDK session token names, and what the boot that issued it proved.
///
/// Once a channel requires member hashes, a session may act as a member (and see the
/// member's data) only when it is entitled to: its boot named the member with a valid
/// `memberHash`, or it was opened under the channel's current member-hash epoch (the
/// times hashes were turned on), when any member its visitor has become since was made
/// one by a proven boot or by the business's own servers. A session opened by member id
/// alone while hashes were off, or an anonymous one opened before they were last turned
/// on (whose visitor could have claimed any unused member id by id alone), is shut out.
#[derive(Debug, Clone)]
pub struct SdkSession {
    /// The session's user.
    pub user_id: String,
    /// The boot named its member with a valid `memberHash`.
    pub proven: bool,
    /// The channel's member-hash epoch when the session was opened (`None` for tokens
    /// issued before sessions recorded it).
    pub epoch: Option<i64>,
}

impl SdkSession {
    /// Whether the session may act as a member of `ch` (see the type's documentation).
    pub fn entitled(&self, ch: &sori_store::Channel) -> bool {
        self.proven || self.epoch == Some(ch.member_hash_epoch)
    }
}

/// A valid veil id: 1–64 characters of letters, digits, `-` and `_`.
pub fn check_veil_id(v: &str) -> Result<(), Invalid> {
    if v.is_empty()
        || v.chars().count() > MAX_VEIL_CHARS
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(Invalid::one(
            "veilId",
            format!("must be 1 to {MAX_VEIL_CHARS} letters, digits, `-` or `_`"),
        ));
    }
    Ok(())
}

impl App {
    /// Boots a browser: checks the member hash when the channel requires it (a failure
    /// writes nothing), then identifies, merges, applies the update, counts the visit and
    /// records the boot's `PageView`, all in one write.
    pub async fn sdk_boot(&self, ch: &ChannelInfo, boot: Boot) -> AppResult<Booted> {
        let hashed = boot.member_id.as_deref().is_some_and(|m| {
            boot.member_hash
                .as_deref()
                .is_some_and(|h| member_hash::verify(&ch.channel.member_hash_secret, m, h))
        });
        if boot.member_id.is_some() && ch.channel.member_hash_required && !hashed {
            return Err(AppError::Unauthorized(
                "memberHash is missing or does not match memberId; this channel requires \
                 member hashes (HMAC-SHA256 of memberId with the channel's secret)"
                    .into(),
            ));
        }
        // After the hash: a wrong hash is a 401 whatever else the boot holds.
        if let Some(v) = &boot.veil_id {
            check_veil_id(v)?;
        }
        let veil_id = boot.veil_id.clone().unwrap_or_else(new_id);
        let now = now_ms();
        let mut events = Vec::new();
        // A PageView is a visit (docs/sdk.md): a boot that counts none records none.
        if boot.track_page_view && boot.visit {
            events.push(page_view(boot.page.clone(), now)?);
        }
        let ingest = Ingest {
            target: UserTarget::Identify {
                member_id: boot.member_id.clone(),
                veil_id: Some(veil_id.clone()),
                new_id: new_id(),
            },
            update: boot.update,
            activity: if boot.visit {
                visit(now, boot.user_agent.as_deref())
            } else {
                Activity::seen(now)
            },
            events,
            message_id: None,
        };
        let outcome = self.ingest(ch, ingest, Source::SdkBoot).await?;
        let session = SdkSession {
            user_id: outcome.user_id.clone(),
            proven: hashed,
            epoch: Some(ch.channel.member_hash_epoch),
        };
        let token = self.sdk_token(ch.channel.id, &session);
        Ok(Booted {
            user: crate::users::whole(outcome)?,
            veil_id,
            token,
            session,
        })
    }

    /// The token for `session` in `channel_id`: `{userId}.{epoch}.{mac}`, the MAC over the
    /// channel, the epoch, the user and whether the boot was proven (a text of its own,
    /// so neither kind passes for the other).
    pub fn sdk_token(&self, channel_id: i64, session: &SdkSession) -> String {
        let text = token_text(channel_id, &session.user_id, session.epoch, session.proven);
        let mac = &keyed_hash(&self.pepper, &text)[..32];
        match session.epoch {
            Some(epoch) => format!("{}.{epoch}.{mac}", session.user_id),
            None => format!("{}.{mac}", session.user_id),
        }
    }

    /// The session a token names, when the token is genuine for this channel. (A token
    /// issued before sessions recorded their epoch, `{userId}.{mac}`, reads as neither
    /// proven nor of any epoch.)
    pub fn sdk_user(&self, channel_id: i64, token: &str) -> AppResult<SdkSession> {
        let bad =
            || AppError::Unauthorized("x-sori-session is missing or invalid; boot first".into());
        let (rest, mac) = token.rsplit_once('.').ok_or_else(bad)?;
        if mac.len() != 32 {
            return Err(bad());
        }
        let (user_id, epoch) = match rest.rsplit_once('.') {
            Some((user, epoch)) => (user, Some(epoch.parse::<i64>().map_err(|_| bad())?)),
            None => (rest, None),
        };
        let signed = |proven| {
            keyed_hash_prefix_matches(
                &self.pepper,
                &token_text(channel_id, user_id, epoch, proven),
                mac,
            )
        };
        let proven = if epoch.is_some() && signed(true) {
            true
        } else if signed(false) {
            false
        } else {
            return Err(bad());
        };
        Ok(SdkSession {
            user_id: user_id.to_owned(),
            proven,
            epoch,
        })
    }

    /// Refuses a session that may not act as its user: one not entitled to a member of a
    /// channel that requires member hashes (see [`SdkSession`]). Only sessions that are
    /// not entitled pay a user lookup (by id), once per request.
    pub async fn sdk_check(&self, ch: &ChannelInfo, s: &SdkSession) -> AppResult<()> {
        if !ch.channel.member_hash_required || s.entitled(&ch.channel) {
            return Ok(());
        }
        match self.store.user(ch.channel.id, &s.user_id).await? {
            Some(u) if u.member() => Err(AppError::MemberHashRequired(
                "this session was not opened with a memberHash for its member, which the \
                 channel requires: boot again with memberId and memberHash"
                    .into(),
            )),
            _ => Ok(()),
        }
    }
}

/// The write of an SDK event for the token's user, and the event: a `PageView` counts as
/// a visit.
pub fn sdk_event(
    user_id: &str,
    input: EventInput,
    user_agent: Option<&str>,
) -> Result<(Ingest, NewEvent), Invalid> {
    let now = now_ms();
    let event = input.check("", new_id(), now, EventSource::Sdk, None)?;
    let activity = if event.name == PAGE_VIEW {
        visit(now, user_agent)
    } else {
        Activity::seen(now)
    };
    let ingest = Ingest {
        target: UserTarget::Id(user_id.to_owned()),
        update: UserUpdate::default(),
        activity,
        events: vec![event.clone()],
        message_id: None,
    };
    Ok((ingest, event))
}

/// What a session token's MAC signs.
fn token_text(channel_id: i64, user_id: &str, epoch: Option<i64>, proven: bool) -> String {
    // The kind leads, so no user id could make one text another.
    match (epoch, proven) {
        (Some(e), true) => format!("sdk-member:{channel_id}:{e}:{user_id}"),
        (Some(e), false) => format!("sdk-visitor:{channel_id}:{e}:{user_id}"),
        (None, _) => format!("sdk:{channel_id}:{user_id}"),
    }
}

/// The `PageView` of a boot or page change.
fn page_view(page: Option<String>, now: i64) -> AppResult<NewEvent> {
    let input = EventInput {
        name: serde_json::Value::String(PAGE_VIEW.into()),
        property: None,
        page: page.map(serde_json::Value::String),
    };
    Ok(input.check("", new_id(), now, EventSource::Sdk, None)?)
}

/// A web visit at `now` from the given user agent.
pub fn visit(now: i64, user_agent: Option<&str>) -> Activity {
    Activity {
        at: Some(now),
        visit: Some(Visit {
            platform: None,
            device: user_agent
                .map(sori_domain::user_agent::parse)
                .unwrap_or_default(),
        }),
        ..Activity::default()
    }
}
