//! The statements of a team write, the same in both dialects but for placeholders. The
//! backends run them inside their team lock, after checking the write against the team
//! they read there (see `Store::change_team`).

use sori_store::TeamWrite;

use crate::filter_sql::{Arg, Dialect, Sql};
use crate::{perms_json, scope_str};

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

/// The statements that make `write` in `channel_id`, in order.
pub fn team_write(d: Dialect, channel_id: i64, write: &TeamWrite) -> Vec<Sql> {
    let ch = Arg::Int(channel_id);
    let text = |s: &str| Arg::Text(s.to_owned());
    let sql = |text: &str, args: Vec<Arg>| Sql {
        text: match d {
            Dialect::Sqlite => text.to_owned(),
            Dialect::Postgres => text.replace('?', "$"),
        },
        args,
    };
    // A role's columns as arguments 1 to 5.
    let role_args = |r: &sori_domain::Role| {
        vec![
            ch.clone(),
            text(&r.id),
            text(&r.name),
            Arg::Text(perms_json(r)),
            text(scope_str(r.inbox_scope)),
        ]
    };
    match write {
        TeamWrite::CreateRole(r) => vec![sql(
            "INSERT INTO roles (channel_id, id, name, permissions, inbox_scope, builtin) \
             VALUES (?1, ?2, ?3, ?4, ?5, FALSE)",
            role_args(r),
        )],
        TeamWrite::UpdateRole(r) => vec![sql(
            "UPDATE roles SET name = ?3, permissions = ?4, inbox_scope = ?5 \
             WHERE channel_id = ?1 AND id = ?2",
            role_args(r),
        )],
        TeamWrite::DeleteRole(id) => vec![sql(
            "DELETE FROM roles WHERE channel_id = ?1 AND id = ?2",
            vec![ch, text(id)],
        )],
        TeamWrite::AddManager(m) => vec![sql(
            "INSERT INTO managers (channel_id, id, email, name, role_id, password_hash, \
             created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            vec![
                ch,
                text(&m.id),
                text(&m.email),
                text(&m.name),
                text(&m.role_id),
                text(&m.password_hash),
                Arg::Int(m.created_at),
            ],
        )],
        TeamWrite::SetRole {
            manager_id,
            role_id,
        } => vec![sql(
            "UPDATE managers SET role_id = ?3 WHERE channel_id = ?1 AND id = ?2",
            vec![ch, text(manager_id), text(role_id)],
        )],
        TeamWrite::RemoveManager(id) => vec![
            sql(
                "DELETE FROM sessions WHERE channel_id = ?1 AND manager_id = ?2",
                vec![ch.clone(), text(id)],
            ),
            sql(
                "DELETE FROM managers WHERE channel_id = ?1 AND id = ?2",
                vec![ch, text(id)],
            ),
        ],
    }
}
