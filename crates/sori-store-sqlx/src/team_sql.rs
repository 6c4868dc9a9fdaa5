//! The statements that write a channel's team (roles, managers, their sessions), the same
//! in both dialects but for placeholders. The backends run them for a team write inside
//! their team lock, after checking it against the team they read there (see
//! `Store::change_team`), and for a new channel's built-in roles and owner.

use sori_domain::Role;
use sori_store::{Manager, TeamWrite};

use crate::filter_sql::{Arg, Dialect, Sql};
use crate::perms_json;

/// Roles of a channel, built-in first (argument: the channel).
pub fn roles_select(d: Dialect) -> &'static str {
    match d {
        Dialect::Sqlite => {
            "SELECT * FROM roles WHERE channel_id = ?1 ORDER BY builtin DESC, id = 'basic', id"
        }
        Dialect::Postgres => {
            "SELECT * FROM roles WHERE channel_id = $1 ORDER BY builtin DESC, id = 'basic', id"
        }
    }
}

/// Who holds which role (argument: the channel); rows for [`crate::seat`].
pub fn seats_select(d: Dialect) -> &'static str {
    match d {
        Dialect::Sqlite => "SELECT id, role_id FROM managers WHERE channel_id = ?1",
        Dialect::Postgres => "SELECT id, role_id FROM managers WHERE channel_id = $1",
    }
}

/// `text`, written with `?N` placeholders, in `d`'s placeholders.
fn sql(d: Dialect, text: &str, args: Vec<Arg>) -> Sql {
    Sql {
        text: match d {
            Dialect::Sqlite => text.to_owned(),
            Dialect::Postgres => text.replace('?', "$"),
        },
        args,
    }
}

fn text(s: &str) -> Arg {
    Arg::Text(s.to_owned())
}

/// A role's columns as arguments 1 to 5.
fn role_args(channel_id: i64, r: &Role) -> Vec<Arg> {
    vec![
        Arg::Int(channel_id),
        text(&r.id),
        text(&r.name),
        Arg::Text(perms_json(r)),
        text(r.inbox_scope.as_str()),
    ]
}

/// Adds a role (a custom one, or a new channel's built-in ones).
pub fn insert_role(d: Dialect, channel_id: i64, r: &Role) -> Sql {
    let mut args = role_args(channel_id, r);
    args.push(Arg::Int(i64::from(r.builtin)));
    sql(
        d,
        "INSERT INTO roles (channel_id, id, name, permissions, inbox_scope, builtin) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6 = 1)",
        args,
    )
}

/// Adds a manager to `channel_id`.
pub fn insert_manager(d: Dialect, channel_id: i64, m: &Manager) -> Sql {
    sql(
        d,
        "INSERT INTO managers (channel_id, id, email, name, role_id, password_hash, \
         created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        vec![
            Arg::Int(channel_id),
            text(&m.id),
            text(&m.email),
            text(&m.name),
            text(&m.role_id),
            text(&m.password_hash),
            Arg::Int(m.created_at),
        ],
    )
}

/// Ends a manager's console sessions.
fn end_sessions(d: Dialect, channel_id: i64, manager_id: &str) -> Sql {
    sql(
        d,
        "DELETE FROM sessions WHERE channel_id = ?1 AND manager_id = ?2",
        vec![Arg::Int(channel_id), text(manager_id)],
    )
}

/// Sets a manager's password hash (the first statement finds the manager or not) and
/// ends their sessions.
pub fn password_reset(d: Dialect, channel_id: i64, manager_id: &str, hash: &str) -> Vec<Sql> {
    vec![
        sql(
            d,
            "UPDATE managers SET password_hash = ?3 WHERE channel_id = ?1 AND id = ?2",
            vec![Arg::Int(channel_id), text(manager_id), text(hash)],
        ),
        end_sessions(d, channel_id, manager_id),
    ]
}

/// The statements that make `write` in `channel_id`, in order.
pub fn team_write(d: Dialect, channel_id: i64, write: &TeamWrite) -> Vec<Sql> {
    match write {
        TeamWrite::CreateRole(r) => vec![insert_role(d, channel_id, r)],
        TeamWrite::UpdateRole(r) => vec![sql(
            d,
            "UPDATE roles SET name = ?3, permissions = ?4, inbox_scope = ?5 \
             WHERE channel_id = ?1 AND id = ?2",
            role_args(channel_id, r),
        )],
        TeamWrite::DeleteRole(id) => vec![sql(
            d,
            "DELETE FROM roles WHERE channel_id = ?1 AND id = ?2",
            vec![Arg::Int(channel_id), text(id)],
        )],
        TeamWrite::AddManager(m) => vec![insert_manager(d, channel_id, m)],
        TeamWrite::SetRole {
            manager_id,
            role_id,
        } => vec![sql(
            d,
            "UPDATE managers SET role_id = ?3 WHERE channel_id = ?1 AND id = ?2",
            vec![Arg::Int(channel_id), text(manager_id), text(role_id)],
        )],
        TeamWrite::RemoveManager(id) => vec![
            end_sessions(d, channel_id, id),
            sql(
                d,
                "DELETE FROM managers WHERE channel_id = ?1 AND id = ?2",
                vec![Arg::Int(channel_id), text(id)],
            ),
        ],
    }
}
