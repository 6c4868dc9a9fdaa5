//! OpenAPI schemas the derives cannot see: the closed sets of names the API takes
//! (permissions, field types, orders), listed from the domain's own lists so the document
//! cannot drift from what is accepted, and the shape of bodies the handlers read as JSON
//! values (user updates, events).

use serde_json::{Map, Value};
use sori_domain::{FieldType, InboxScope, Permission};
use utoipa::ToSchema;
use utoipa::openapi::schema::{ArrayBuilder, Object, ObjectBuilder, Type};

/// A string that is one of `names`.
fn one_of(description: &str, names: impl IntoIterator<Item = String>) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .enum_values(Some(names))
        .build()
}

/// A role's permissions.
pub fn permissions() -> utoipa::openapi::Array {
    ArrayBuilder::new()
        .items(one_of(
            "A permission",
            Permission::ALL.map(Permission::name),
        ))
        .description(Some("Granted permissions"))
        .build()
}

/// A role's inbox scope.
pub fn inbox_scope() -> Object {
    one_of(
        "Which chats the role sees: every chat, or those assigned to the manager",
        InboxScope::ALL.map(|s| s.as_str().to_owned()),
    )
}

/// A profile field's type.
pub fn field_type() -> Object {
    one_of(
        "The value type",
        FieldType::ALL.map(|t| t.as_str().to_owned()),
    )
}

/// A page's order (`null` is the default).
pub fn sort_order() -> Object {
    ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::SchemaType::from_iter([
            Type::String,
            Type::Null,
        ]))
        .description(Some(
            "`desc` (default) or `asc`; users without the value come last either way",
        ))
        .enum_values(Some([Value::from("desc"), Value::from("asc"), Value::Null]))
        .build()
}

/// A change of a user: what `PUT /open/v5/users/@{memberId}` and `PATCH` take.
#[derive(ToSchema)]
#[schema(as = UserUpdate)]
#[serde(rename_all = "camelCase")]
pub struct UserUpdateSchema {
    /// Profile values by field key (an unknown key registers a field of the value's type;
    /// `null` clears a value); `null` for the whole object clears the profile.
    pub profile: Option<Map<String, Value>>,
    /// Values set only where the user has none yet.
    #[schema(nullable = false)]
    pub profile_once: Option<Map<String, Value>>,
    /// Replaces the tag list (at most 20 per call; `null` removes every tag).
    pub tags: Option<Vec<String>>,
    /// Opt out of marketing e-mail.
    #[schema(nullable = false)]
    pub unsubscribe_email: Option<bool>,
    /// Opt out of marketing texts.
    #[schema(nullable = false)]
    pub unsubscribe_texting: Option<bool>,
    /// Blocked from chats.
    #[schema(nullable = false)]
    pub blocked: Option<bool>,
}

/// A new user: `memberId` (a member; a lead without it) and the fields of an update.
#[derive(ToSchema)]
#[schema(as = NewUser)]
#[serde(rename_all = "camelCase")]
pub struct NewUserSchema {
    /// The business's customer id; 409 when taken.
    pub member_id: Option<String>,
    /// Profile values by field key.
    #[schema(nullable = false)]
    pub profile: Option<Map<String, Value>>,
    /// Values set only where the user has none yet.
    #[schema(nullable = false)]
    pub profile_once: Option<Map<String, Value>>,
    /// The tag list (at most 20 per call).
    pub tags: Option<Vec<String>>,
    /// Opt out of marketing e-mail.
    #[schema(nullable = false)]
    pub unsubscribe_email: Option<bool>,
    /// Opt out of marketing texts.
    #[schema(nullable = false)]
    pub unsubscribe_texting: Option<bool>,
    /// Blocked from chats.
    #[schema(nullable = false)]
    pub blocked: Option<bool>,
}

/// A manager's edit of a user in the console: profile values, tags, consent, the block.
#[derive(ToSchema)]
#[schema(as = ConsoleUserUpdate)]
#[serde(rename_all = "camelCase")]
pub struct ConsoleUserUpdateSchema {
    /// Profile values by field key (`null` clears a value); a sensitive value sent back
    /// in its masked form is refused.
    pub profile: Option<Map<String, Value>>,
    /// Replaces the tag list (at most 20 per call; `null` removes every tag).
    pub tags: Option<Vec<String>>,
    /// Opt out of marketing e-mail.
    #[schema(nullable = false)]
    pub unsubscribe_email: Option<bool>,
    /// Opt out of marketing texts.
    #[schema(nullable = false)]
    pub unsubscribe_texting: Option<bool>,
    /// Blocked from chats.
    #[schema(nullable = false)]
    pub blocked: Option<bool>,
}

/// One event of a user.
#[derive(ToSchema)]
#[schema(as = NewEvent)]
pub struct NewEventSchema {
    /// Event name, 1–30 characters (`Marketing…` names are reserved).
    pub name: String,
    /// Properties (at most 100 keys; strings up to 512 bytes, arrays and objects up to
    /// 4 KB).
    pub property: Option<Map<String, Value>>,
    /// The page it happened on.
    pub page: Option<String>,
}

/// One event, or a batch of them (`events`, 1–1,000), for one user.
#[derive(ToSchema)]
#[schema(as = EventsBody)]
pub struct EventsBodySchema {
    /// Event name, for one event.
    pub name: Option<String>,
    /// Properties of one event.
    pub property: Option<Map<String, Value>>,
    /// The page one event happened on.
    pub page: Option<String>,
    /// A batch instead, stored all or nothing.
    #[schema(nullable = false)]
    pub events: Option<Vec<NewEventSchema>>,
}
