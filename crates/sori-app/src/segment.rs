//! Segment-compatible calls turned into ingests: the mapping itself is pure
//! (`sori_domain::segment`); this adds ids and the activity each kind of call implies.

use sori_domain::Invalid;
use sori_domain::activity::{Activity, Platform};
use sori_domain::error::field_path;
use sori_domain::event::{EventSource, Retention};
use sori_domain::segment::{Call, Kind};
use sori_store::UserTarget;

use crate::sdk::visit;
use crate::secrets::new_id;
use crate::users::Ingest;

/// The ingest for one call; `prefix` names fields in errors (`batch[3]`). An event from
/// before the channel's `retention` is refused (see [`Retention::check`]).
pub fn ingest_of(
    prefix: &str,
    call: Call,
    source: EventSource,
    retention: Retention<'_>,
) -> Result<Ingest, Invalid> {
    let event = match call.event {
        Some(input) => {
            let mut e = Invalid::both(
                retention.check(&field_path(prefix, call.time_field), call.at),
                input
                    .check(prefix, new_id(), call.at, source, None)
                    .map_err(|e| segment_names(prefix, call.page_field, e)),
            )?;
            e.message_id.clone_from(&call.message_id);
            Some(e)
        }
        None => None,
    };
    let mut activity = match call.kind {
        Kind::Identify => Activity::default(),
        Kind::Track => Activity::seen(call.at),
        Kind::Page => visit(call.at, call.user_agent.as_deref()),
        Kind::Screen => visit(call.at, None),
    };
    // A visit from a mobile app feeds `mobile.*` with the app's own facts; a screen is an
    // app's by definition, even when its context says nothing about the app.
    if let Some(v) = activity.visit.as_mut() {
        if let Some(app) = call.app {
            v.platform = Some(Platform::Mobile);
            v.device = app;
        } else if call.kind == Kind::Screen {
            v.platform = Some(Platform::Mobile);
        }
    }
    activity.created_at = call.created_at;
    activity.city = call.city;
    activity.country = call.country;
    // An identify is no activity, so its location is dated by the call's own time.
    if call.kind == Kind::Identify && !call.addressed {
        activity.place_at = Some(call.at);
    }
    Ok(Ingest {
        target: UserTarget::Identify {
            member_id: call.member_id,
            veil_id: call.veil_id,
            new_id: new_id(),
        },
        update: call.update.unwrap_or_default(),
        activity,
        events: event.into_iter().collect(),
        message_id: call.message_id,
    })
}

/// Renames Sori's event fields in errors to the Segment fields the client sent
/// (`page_field`: where the page came from).
fn segment_names(prefix: &str, page_field: &str, e: Invalid) -> Invalid {
    let at = |f| field_path(prefix, f);
    let renames = [
        (at("name"), at("event")),
        (at("property"), at("properties")),
        (at("page"), at(page_field)),
    ];
    Invalid(
        e.0.into_iter()
            .map(|mut f| {
                for (from, to) in &renames {
                    if let Some(rest) = f.field.strip_prefix(from.as_ref())
                        && (rest.is_empty() || rest.starts_with('.'))
                    {
                        f.field = format!("{to}{rest}");
                        break;
                    }
                }
                f
            })
            .collect(),
    )
}
