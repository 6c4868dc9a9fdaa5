//! Segment-compatible calls turned into ingests: the mapping itself is pure
//! (`sori_domain::segment`); this adds ids and the activity each kind of call implies.

use sori_domain::Invalid;
use sori_domain::activity::Activity;
use sori_domain::event::EventSource;
use sori_domain::segment::{Call, Kind};
use sori_store::UserTarget;

use crate::sdk::visit;
use crate::secrets::new_id;
use crate::users::Ingest;

/// The ingest for one call; `prefix` names fields in errors (`batch[3]`).
pub fn ingest_of(prefix: &str, call: Call, source: EventSource) -> Result<Ingest, Invalid> {
    let event = match &call.event {
        Some(input) => {
            let mut e = input.check(prefix, new_id(), call.at, source, None)?;
            e.message_id.clone_from(&call.message_id);
            Some(e)
        }
        None => None,
    };
    let mut activity = match call.kind {
        Kind::Identify => Activity::default(),
        Kind::Track => Activity::seen(call.at),
        Kind::Page => visit(call.at, call.user_agent.as_deref()),
    };
    activity.created_at = call.created_at;
    activity.city = call.city;
    activity.country = call.country;
    Ok(Ingest {
        target: UserTarget::Identify {
            member_id: call.member_id,
            veil_id: call.veil_id,
            new_id: new_id(),
        },
        update: call.update.unwrap_or_default(),
        activity,
        events: event.into_iter().collect(),
    })
}
