//! The Open API (`/open/v5`): server-to-server calls authenticated by the channel's
//! access key and secret. One channel's keys only ever reach that channel's data.

pub mod channel;
pub mod events;
pub mod fields;
pub mod segments;
pub mod users;

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sori_app::auth::ChannelInfo;

use crate::AppState;
use crate::error::ApiError;

/// The channel whose keys signed the request.
pub struct OpenChannel(pub Arc<ChannelInfo>);

/// The channel the rate limiter authenticated the request as (it must, to pick the
/// channel's bucket), so [`OpenChannel`] does not check the keys twice.
#[derive(Clone)]
pub(crate) struct Authenticated(pub Arc<ChannelInfo>);

impl FromRequestParts<AppState> for OpenChannel {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(Authenticated(info)) = parts.extensions.get::<Authenticated>() {
            return Ok(Self(info.clone()));
        }
        let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
        let (Some(key), Some(secret)) = (header("x-access-key"), header("x-access-secret")) else {
            return Err(ApiError::unauthorized(
                "send the channel's credentials in x-access-key and x-access-secret",
            ));
        };
        Ok(Self(state.app.channels.authenticate(key, secret).await?))
    }
}
