//! Creating channels with fresh credentials, printed once and stored hashed, and
//! changing their settings.

use serde::Serialize;
use sori_domain::Invalid;
use sori_domain::channel::{self, DEFAULT_TIME_ZONE};
use sori_store::{Channel, ChannelSettingsPatch, Manager, NewChannel};

use crate::secrets::{hash_password, keyed_hash, new_id, now_ms, random_hex};
use crate::{App, AppResult};

/// What to create.
#[derive(Debug, Clone)]
pub struct ChannelSpec {
    /// Business name.
    pub name: String,
    /// Owner login e-mail.
    pub owner_email: String,
    /// Owner password; generated when absent.
    pub owner_password: Option<String>,
    /// IANA time zone; `Asia/Seoul` when absent.
    pub time_zone: Option<String>,
}

/// The owner login, shown once.
#[derive(Debug, Clone, Serialize)]
pub struct OwnerLogin {
    /// Login e-mail.
    pub email: String,
    /// Password in clear text (only ever shown at creation).
    pub password: String,
}

/// Credentials of a new channel; the secrets exist in clear only in this value.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelCredentials {
    /// Channel id as a string, as every id in the API.
    pub channel_id: String,
    /// Public SDK key.
    pub plugin_key: String,
    /// Open API key.
    pub access_key: String,
    /// Open API secret.
    pub access_secret: String,
    /// Segment-compatible write key.
    pub write_key: String,
    /// Hex key for member hashes.
    pub member_hash_secret: String,
    /// Owner account.
    pub owner: OwnerLogin,
}

/// New secrets of a channel after a rotation; shown once, like a new channel's.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RotatedKeys {
    /// Channel id as a string.
    pub channel_id: String,
    /// Open API key (unchanged: it names the channel, the secret proves the caller).
    pub access_key: String,
    /// New Open API secret.
    pub access_secret: String,
    /// New Segment-compatible write key.
    pub write_key: String,
}

/// Checks a manager e-mail and lowercases it.
pub fn check_email(field: &str, email: &str) -> Result<String, Invalid> {
    sori_domain::value::check_email(email)
        .map(|e| e.to_lowercase())
        .map_err(|m| Invalid::one(field, m))
}

/// Checks a new password: at least 8 characters.
pub fn check_password(field: &str, pw: &str) -> Result<(), Invalid> {
    if pw.chars().count() < 8 || pw.len() > 1024 {
        return Err(Invalid::one(field, "must be 8 to 1024 characters"));
    }
    Ok(())
}

impl App {
    /// Changes a channel's settings (the Open API, the console and `sori channel set` all
    /// come here): every field is checked, named as the API names it; the name is stored
    /// as checked; this node's cache of the channel is dropped. `None` when the channel is
    /// gone.
    pub async fn update_channel(
        &self,
        channel_id: i64,
        mut patch: ChannelSettingsPatch,
    ) -> AppResult<Option<Channel>> {
        patch.name = patch
            .name
            .as_deref()
            .map(|n| channel::check_name("name", n))
            .transpose()?;
        if let Some(tz) = &patch.time_zone {
            channel::time_zone("timeZone", tz)?;
        }
        if let Some(l) = &patch.default_language {
            channel::check_language("defaultLanguage", l)?;
        }
        if let Some(d) = patch.event_retention_days {
            sori_domain::event::check_retention_days("eventRetentionDays", d)?;
        }
        let updated = self.store.update_channel(channel_id, &patch).await?;
        self.channels.forget(channel_id);
        Ok(updated)
    }

    /// Gives a channel a new Open API secret and write key, for a leak or a loss (secrets
    /// are stored hashed and cannot be shown again). The plugin key (public, in every
    /// site's snippet) and the member-hash secret (in the site's server) stay. The old
    /// ones stop working at once on this node and within the channel cache's lifetime
    /// (5 s) on others. `None` when the channel does not exist.
    pub async fn rotate_keys(&self, channel_id: i64) -> AppResult<Option<RotatedKeys>> {
        let Some(ch) = self.store.channel(channel_id).await? else {
            return Ok(None);
        };
        let access_secret = random_hex(32);
        let write_key = random_hex(24);
        let found = self
            .store
            .set_channel_secrets(
                channel_id,
                &keyed_hash(&self.pepper, &access_secret),
                &keyed_hash(&self.pepper, &write_key),
            )
            .await?;
        self.channels.forget(channel_id);
        Ok(found.then(|| RotatedKeys {
            channel_id: channel_id.to_string(),
            access_key: ch.access_key,
            access_secret,
            write_key,
        }))
    }

    /// Sets a manager's password (generated when `password` is `None`) and ends their
    /// sessions, for a manager locked out; returns the login. `None` when no manager of
    /// the channel has the e-mail.
    pub async fn reset_password(
        &self,
        channel_id: i64,
        email: &str,
        password: Option<String>,
    ) -> AppResult<Option<OwnerLogin>> {
        // Only found, not checked: an address stored under an older, looser rule must
        // still find its manager.
        let email = email.trim().to_lowercase();
        let password = match password {
            Some(p) => {
                check_password("password", &p)?;
                p
            }
            None => random_hex(12),
        };
        let Some(m) = self
            .store
            .managers_by_email(&email)
            .await?
            .into_iter()
            .find(|m| m.channel_id == channel_id)
        else {
            return Ok(None);
        };
        let pw = password.clone();
        let hash = tokio::task::spawn_blocking(move || hash_password(&pw))
            .await
            .map_err(|_| crate::AppError::Unavailable)?;
        let found = self
            .store
            .set_manager_password(channel_id, &m.id, &hash)
            .await?;
        Ok(found.then_some(OwnerLogin { email, password }))
    }

    /// Creates a channel with an owner, built-in roles and pre-registered profile fields.
    pub async fn create_channel(&self, spec: ChannelSpec) -> AppResult<ChannelCredentials> {
        let name = channel::check_name("name", &spec.name)?;
        let email = check_email("owner.email", &spec.owner_email)?;
        let tz = spec
            .time_zone
            .unwrap_or_else(|| DEFAULT_TIME_ZONE.to_owned());
        channel::time_zone("timeZone", &tz)?;
        let password = match spec.owner_password {
            Some(p) => {
                check_password("owner.password", &p)?;
                p
            }
            None => random_hex(12),
        };
        let plugin_key = random_hex(16);
        let access_key = random_hex(12);
        let access_secret = random_hex(32);
        let write_key = random_hex(24);
        let member_hash_secret = random_hex(32);
        let now = now_ms();
        let pw = password.clone();
        let password_hash = tokio::task::spawn_blocking(move || hash_password(&pw))
            .await
            .map_err(|_| crate::AppError::Unavailable)?;
        let new = NewChannel {
            channel: Channel {
                id: 0,
                name,
                time_zone: tz,
                default_language: "ko".into(),
                plugin_key: plugin_key.clone(),
                access_key: access_key.clone(),
                access_secret_hash: keyed_hash(&self.pepper, &access_secret),
                write_key_hash: keyed_hash(&self.pepper, &write_key),
                member_hash_secret: member_hash_secret.clone(),
                member_hash_required: false,
                member_hash_epoch: 0,
                event_retention_days: sori_domain::event::DEFAULT_RETENTION_DAYS,
                created_at: now,
            },
            owner: Manager {
                channel_id: 0,
                id: new_id(),
                email: email.clone(),
                name: "Owner".into(),
                role_id: "owner".into(),
                password_hash,
                created_at: now,
            },
        };
        let (channel, _) = self.store.create_channel(new).await?;
        Ok(ChannelCredentials {
            channel_id: channel.id.to_string(),
            plugin_key,
            access_key,
            access_secret,
            write_key,
            member_hash_secret,
            owner: OwnerLogin { email, password },
        })
    }
}
