//! Who is calling: Open API key pairs (cached per node for a few seconds) and manager
//! sessions (cookie plus CSRF token).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use jiff::tz::TimeZone;
use sori_domain::{Permission, Role};
use sori_store::{Channel, Manager, Session, Store};

use crate::secrets::{keyed_hash, keyed_hash_matches, now_ms, random_hex, verify_password};
use crate::{App, AppError, AppResult};

/// How long a node trusts its cached copy of a channel; bounds how long a settings change
/// made on another node takes to apply here.
const CHANNEL_TTL: Duration = Duration::from_secs(5);
/// Console sessions last a week.
const SESSION_TTL_MS: i64 = 7 * 24 * 3600 * 1000;

/// A channel with its parsed time zone.
#[derive(Debug, Clone)]
pub struct ChannelInfo {
    /// The stored row.
    pub channel: Channel,
    /// Its time zone.
    pub tz: TimeZone,
}

/// A cached channel and when it was read.
type Cached = (Arc<ChannelInfo>, Instant);

/// Which public key a channel is looked up by; indexes [`ChannelCache`]'s maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    /// Open API access key.
    Access = 0,
    /// SDK plugin key.
    Plugin = 1,
    /// Segment write key (the store knows only its keyed hash).
    Write = 2,
}

/// Channel lookups by access key, plugin key or write key, cached for [`CHANNEL_TTL`]. One
/// map per kind of key, so a hit borrows the presented key instead of copying it; write
/// keys are cached as presented, so a hit skips their keyed hash.
#[derive(Clone)]
pub struct ChannelCache {
    store: Arc<dyn Store>,
    pepper: Arc<[u8]>,
    by_key: Arc<RwLock<[HashMap<String, Cached>; 3]>>,
}

impl ChannelCache {
    /// An empty cache over `store`.
    pub fn new(store: Arc<dyn Store>, pepper: Arc<[u8]>) -> Self {
        Self {
            store,
            pepper,
            by_key: Arc::default(),
        }
    }

    /// Checks an Open API key pair; both a wrong key and a wrong secret are a plain 401 so
    /// keys cannot be probed.
    pub async fn authenticate(
        &self,
        access_key: &str,
        secret: &str,
    ) -> AppResult<Arc<ChannelInfo>> {
        let info = self
            .get(KeyKind::Access, access_key)
            .await?
            .ok_or_else(bad_key)?;
        if keyed_hash_matches(&self.pepper, secret, &info.channel.access_secret_hash) {
            Ok(info)
        } else {
            Err(bad_key())
        }
    }

    /// The channel whose SDK plugin key this is.
    pub async fn by_plugin_key(&self, plugin_key: &str) -> AppResult<Arc<ChannelInfo>> {
        self.find_plugin_key(plugin_key).await?.ok_or_else(|| {
            AppError::Unauthorized("pluginKey is missing or does not belong to a channel".into())
        })
    }

    /// The channel whose plugin key this is, if any: for callers that answer an unknown
    /// key in their own words (an SDK session token carries the key inside).
    pub async fn find_plugin_key(&self, plugin_key: &str) -> AppResult<Option<Arc<ChannelInfo>>> {
        self.get(KeyKind::Plugin, plugin_key).await
    }

    /// The channel whose Segment write key this is.
    pub async fn by_write_key(&self, write_key: &str) -> AppResult<Arc<ChannelInfo>> {
        self.get(KeyKind::Write, write_key).await?.ok_or_else(|| {
            AppError::Unauthorized(
                "the write key is wrong: send the channel's write key as the HTTP Basic user name (or as `writeKey` in the body)".into(),
            )
        })
    }

    async fn get(&self, kind: KeyKind, key: &str) -> AppResult<Option<Arc<ChannelInfo>>> {
        if let Ok(maps) = self.by_key.read()
            && let Some((info, at)) = maps[kind as usize].get(key)
            && at.elapsed() < CHANNEL_TTL
        {
            return Ok(Some(info.clone()));
        }
        let found = match kind {
            KeyKind::Access => self.store.channel_by_access_key(key).await?,
            KeyKind::Plugin => self.store.channel_by_plugin_key(key).await?,
            KeyKind::Write => {
                let hash = keyed_hash(&self.pepper, key);
                self.store.channel_by_write_key_hash(&hash).await?
            }
        };
        let Some(channel) = found else {
            return Ok(None);
        };
        let info = Arc::new(info_of(channel));
        if let Ok(mut maps) = self.by_key.write() {
            maps[kind as usize].insert(key.to_owned(), (info.clone(), Instant::now()));
        }
        Ok(Some(info))
    }

    /// Drops a channel from this node's cache after a settings change.
    pub fn forget(&self, channel_id: i64) {
        if let Ok(mut maps) = self.by_key.write() {
            for map in maps.iter_mut() {
                map.retain(|_, (info, _)| info.channel.id != channel_id);
            }
        }
    }
}

impl ChannelInfo {
    /// What the channel keeps events for, at `now` (ms).
    pub fn retention(&self, now: i64) -> sori_domain::event::Retention<'_> {
        sori_domain::event::Retention::new(now, &self.tz, self.channel.event_retention_days)
    }
}

/// Pairs a channel row with its time zone, falling back to UTC for an unknown stored zone.
pub fn info_of(channel: Channel) -> ChannelInfo {
    let tz = TimeZone::get(&channel.time_zone).unwrap_or(TimeZone::UTC);
    ChannelInfo { channel, tz }
}

fn bad_key() -> AppError {
    AppError::Unauthorized("x-access-key / x-access-secret are missing or wrong".into())
}

/// A logged-in manager.
#[derive(Debug, Clone)]
pub struct ManagerContext {
    /// The manager's channel.
    pub channel: Arc<ChannelInfo>,
    /// The manager.
    pub manager: Manager,
    /// The manager's role.
    pub role: Role,
    /// Token the console must echo on state-changing calls.
    pub csrf_token: String,
}

impl ManagerContext {
    /// Fails with 403 unless the role grants `p`.
    pub fn require(&self, p: Permission) -> AppResult<()> {
        if self.role.allows(p) {
            Ok(())
        } else {
            let name = serde_json::to_value(p)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned));
            Err(AppError::Forbidden(format!(
                "your role `{}` lacks the `{}` permission",
                self.role.name,
                name.unwrap_or_default()
            )))
        }
    }
}

/// An Argon2 hash verified when the e-mail is unknown, so response time does not tell
/// whether an account exists.
fn dummy_hash() -> String {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY
        .get_or_init(|| crate::secrets::hash_password(&random_hex(16)))
        .clone()
}

impl App {
    /// Logs a manager in; returns the cookie value (`{channelId}.{token}`) and the session.
    pub async fn login(
        &self,
        email: &str,
        password: &str,
        channel_id: Option<i64>,
    ) -> AppResult<(String, ManagerContext)> {
        let email = email.trim().to_lowercase();
        let _slot = self
            .login_slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| AppError::Busy("too many logins at once; retry in a moment".into()))?;
        let mut candidates = self.store.managers_by_email(&email).await?;
        if let Some(ch) = channel_id {
            candidates.retain(|m| m.channel_id == ch);
        }
        // Every candidate's password is checked (and a dummy one when there is none), so
        // neither the answer nor its timing tells whether an account exists.
        let hashes: Vec<String> = if candidates.is_empty() {
            vec![dummy_hash()]
        } else {
            candidates.iter().map(|m| m.password_hash.clone()).collect()
        };
        let pw = password.to_owned();
        let ok: Vec<bool> = tokio::task::spawn_blocking(move || {
            hashes.iter().map(|h| verify_password(&pw, h)).collect()
        })
        .await
        .map_err(|_| AppError::Unavailable)?;
        let mut matching: Vec<Manager> = candidates
            .into_iter()
            .zip(ok)
            .filter_map(|(m, ok)| ok.then_some(m))
            .collect();
        if matching.len() > 1 {
            return Err(sori_domain::Invalid::one(
                "channelId",
                "you manage several channels with this e-mail; say which channel",
            )
            .into());
        }
        let manager = matching
            .pop()
            .ok_or_else(|| AppError::Unauthorized("wrong e-mail or password".into()))?;
        let token = random_hex(32);
        let session = Session {
            token_hash: keyed_hash(&self.pepper, &token),
            channel_id: manager.channel_id,
            manager_id: manager.id.clone(),
            csrf_token: random_hex(16),
            expires_at: now_ms() + SESSION_TTL_MS,
        };
        self.store.insert_session(&session).await?;
        let ctx = self.context_of(manager, session.csrf_token).await?;
        Ok((format!("{}.{token}", ctx.channel.channel.id), ctx))
    }

    /// Resolves a session cookie; `None` for anything unknown, expired or malformed.
    pub async fn session(&self, cookie: &str) -> AppResult<Option<ManagerContext>> {
        let Some((ch, token)) = cookie.split_once('.') else {
            return Ok(None);
        };
        let Ok(ch) = ch.parse::<i64>() else {
            return Ok(None);
        };
        let hash = keyed_hash(&self.pepper, token);
        let Some(s) = self.store.session(ch, &hash).await? else {
            return Ok(None);
        };
        if s.expires_at < now_ms() {
            self.store.delete_session(ch, &hash).await?;
            return Ok(None);
        }
        let Some(manager) = self.store.manager(ch, &s.manager_id).await? else {
            return Ok(None);
        };
        Ok(Some(self.context_of(manager, s.csrf_token).await?))
    }

    /// Ends the session behind a cookie.
    pub async fn logout(&self, cookie: &str) -> AppResult<()> {
        if let Some((ch, token)) = cookie.split_once('.')
            && let Ok(ch) = ch.parse::<i64>()
        {
            self.store
                .delete_session(ch, &keyed_hash(&self.pepper, token))
                .await?;
        }
        Ok(())
    }

    async fn context_of(&self, manager: Manager, csrf_token: String) -> AppResult<ManagerContext> {
        let channel = self
            .store
            .channel(manager.channel_id)
            .await?
            .ok_or_else(|| AppError::Unauthorized("channel no longer exists".into()))?;
        let role = self
            .store
            .roles(manager.channel_id)
            .await?
            .into_iter()
            .find(|r| r.id == manager.role_id)
            .unwrap_or_else(|| Role {
                permissions: Default::default(),
                ..Role::basic()
            });
        Ok(ManagerContext {
            channel: Arc::new(info_of(channel)),
            manager,
            role,
            csrf_token,
        })
    }
}
