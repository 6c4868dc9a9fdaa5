//! Row decoding shared by the SQL backends. Both schemas use the same column names and
//! compatible types, so turning a row into a domain value is written once, generically over
//! sqlx's `Row`; each backend keeps its own SQL, migrations and error mapping.

use sori_domain::{FieldType, InboxScope, ProfileField, ProfileKey, Role, User};
use sori_store::{Channel, Manager, RevealRecord, StoreError, UserRow};
use sqlx::{ColumnIndex, Decode, Row, Type};

/// A row whose columns decode into the plain types Sori stores.
pub trait SoriRow:
    Row
    + for<'r> RowDecode<'r, String>
    + for<'r> RowDecode<'r, Option<String>>
    + for<'r> RowDecode<'r, i64>
    + for<'r> RowDecode<'r, Option<i64>>
    + for<'r> RowDecode<'r, bool>
{
}

impl<R> SoriRow for R where
    R: Row
        + for<'r> RowDecode<'r, String>
        + for<'r> RowDecode<'r, Option<String>>
        + for<'r> RowDecode<'r, i64>
        + for<'r> RowDecode<'r, Option<i64>>
        + for<'r> RowDecode<'r, bool>
{
}

/// Reads one named column as `T`.
pub trait RowDecode<'r, T> {
    /// The value of column `name`.
    fn col(&'r self, name: &'static str) -> Result<T, StoreError>;
}

impl<'r, R, T> RowDecode<'r, T> for R
where
    R: Row,
    &'static str: ColumnIndex<R>,
    T: Decode<'r, R::Database> + Type<R::Database>,
{
    fn col(&'r self, name: &'static str) -> Result<T, StoreError> {
        self.try_get(name)
            .map_err(|e| StoreError::Backend(Box::new(e)))
    }
}

/// A user from a row with every `users` column (JSON columns as text).
pub fn user<R: SoriRow>(r: &R) -> Result<User, StoreError> {
    UserRow {
        channel_id: r.col("channel_id")?,
        id: r.col("id")?,
        member_id: r.col("member_id")?,
        veil_id: r.col("veil_id")?,
        name: r.col("name")?,
        profile: r.col("profile")?,
        tags: r.col("tags")?,
        unsubscribe_email: r.col("unsubscribe_email")?,
        unsubscribe_texting: r.col("unsubscribe_texting")?,
        blocked: r.col("blocked")?,
        city: r.col("city")?,
        country: r.col("country")?,
        language: r.col("language")?,
        has_chat: r.col("has_chat")?,
        has_push_token: r.col("has_push_token")?,
        sessions_count: r.col("sessions_count")?,
        last_seen_at: r.col("last_seen_at")?,
        created_at: r.col("created_at")?,
        updated_at: r.col("updated_at")?,
        web: r.col("web")?,
        mobile: r.col("mobile")?,
    }
    .into_user()
}

/// A profile field.
pub fn field<R: SoriRow>(r: &R) -> Result<ProfileField, StoreError> {
    let key: String = r.col("key")?;
    let ty: String = r.col("type")?;
    Ok(ProfileField {
        key: ProfileKey::parse(&key).map_err(StoreError::Corrupt)?,
        name: r.col("name")?,
        field_type: FieldType::parse(&ty).map_err(StoreError::Corrupt)?,
        sensitive: r.col("sensitive")?,
        builtin: r.col("builtin")?,
        created_at: r.col("created_at")?,
    })
}

/// A channel.
pub fn channel<R: SoriRow>(r: &R) -> Result<Channel, StoreError> {
    Ok(Channel {
        id: r.col("id")?,
        name: r.col("name")?,
        time_zone: r.col("time_zone")?,
        default_language: r.col("default_language")?,
        plugin_key: r.col("plugin_key")?,
        access_key: r.col("access_key")?,
        access_secret_hash: r.col("access_secret_hash")?,
        write_key_hash: r.col("write_key_hash")?,
        member_hash_secret: r.col("member_hash_secret")?,
        member_hash_required: r.col("member_hash_required")?,
        created_at: r.col("created_at")?,
    })
}

/// A manager.
pub fn manager<R: SoriRow>(r: &R) -> Result<Manager, StoreError> {
    Ok(Manager {
        channel_id: r.col("channel_id")?,
        id: r.col("id")?,
        email: r.col("email")?,
        name: r.col("name")?,
        role_id: r.col("role_id")?,
        password_hash: r.col("password_hash")?,
        created_at: r.col("created_at")?,
    })
}

/// A role (permissions stored as a JSON array, scope as its wire name).
pub fn role<R: SoriRow>(r: &R) -> Result<Role, StoreError> {
    let perms: String = r.col("permissions")?;
    let scope: String = r.col("inbox_scope")?;
    Ok(Role {
        id: r.col("id")?,
        name: r.col("name")?,
        permissions: serde_json::from_str(&perms)
            .map_err(|e| StoreError::Corrupt(format!("roles.permissions: {e}")))?,
        inbox_scope: serde_json::from_value::<InboxScope>(serde_json::Value::String(scope))
            .map_err(|e| StoreError::Corrupt(format!("roles.inbox_scope: {e}")))?,
        builtin: r.col("builtin")?,
    })
}

/// A reveal audit record.
pub fn reveal<R: SoriRow>(r: &R) -> Result<RevealRecord, StoreError> {
    Ok(RevealRecord {
        channel_id: r.col("channel_id")?,
        id: r.col("id")?,
        manager_id: r.col("manager_id")?,
        user_id: r.col("user_id")?,
        field: r.col("field")?,
        created_at: r.col("created_at")?,
    })
}

/// The stored form of an inbox scope.
pub fn scope_str(s: InboxScope) -> &'static str {
    match s {
        InboxScope::All => "all",
        InboxScope::Assigned => "assigned",
    }
}

/// The stored form of a role's permissions.
pub fn perms_json(role: &Role) -> String {
    serde_json::to_string(&role.permissions).unwrap_or_else(|_| "[]".into())
}
