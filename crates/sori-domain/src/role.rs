//! Manager roles and permissions (SPEC §2): `owner` and `basic` are built in; a channel may
//! add up to 20 custom roles.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::error::Invalid;

/// Custom roles a channel may define besides `owner` and `basic`.
pub const MAX_CUSTOM_ROLES: usize = 20;

/// One thing a manager may be allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Permission {
    /// Channel settings, profile-field settings, sensitive flags, keys.
    #[serde(rename = "generalSettings")]
    GeneralSettings,
    /// See contacts (sensitive values masked).
    #[serde(rename = "contacts.read")]
    ContactsRead,
    /// Change tags, consent and profile values.
    #[serde(rename = "contacts.edit")]
    ContactsEdit,
    /// Reveal masked values (each reveal is audited).
    #[serde(rename = "contacts.reveal")]
    ContactsReveal,
    /// Export contacts as CSV.
    #[serde(rename = "contacts.export")]
    ContactsExport,
    /// Compose and send marketing messages.
    #[serde(rename = "marketing")]
    Marketing,
    /// Build and publish workflows.
    #[serde(rename = "workflows")]
    Workflows,
    /// Invite managers, assign roles, define roles.
    #[serde(rename = "teamManagement")]
    TeamManagement,
}

impl Permission {
    /// The name the API and the store use (its serde name).
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// Every permission.
    pub const ALL: [Permission; 8] = [
        Permission::GeneralSettings,
        Permission::ContactsRead,
        Permission::ContactsEdit,
        Permission::ContactsReveal,
        Permission::ContactsExport,
        Permission::Marketing,
        Permission::Workflows,
        Permission::TeamManagement,
    ];
}

/// Which chats a role sees in the inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum InboxScope {
    /// Every chat of the channel.
    All,
    /// Only chats assigned to or followed by the manager.
    Assigned,
}

impl InboxScope {
    /// Both scopes.
    pub const ALL: [InboxScope; 2] = [InboxScope::All, InboxScope::Assigned];

    /// The name the API and the store use.
    pub fn as_str(self) -> &'static str {
        match self {
            InboxScope::All => "all",
            InboxScope::Assigned => "assigned",
        }
    }
}

/// A role: a named set of permissions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Role {
    /// Stable id; `owner` and `basic` for the built-in roles.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Granted permissions.
    pub permissions: BTreeSet<Permission>,
    /// Inbox visibility.
    pub inbox_scope: InboxScope,
    /// Built-in roles cannot be edited or deleted.
    pub builtin: bool,
}

impl Role {
    /// The owner role: everything.
    pub fn owner() -> Self {
        Self {
            id: "owner".into(),
            name: "Owner".into(),
            permissions: Permission::ALL.into_iter().collect(),
            inbox_scope: InboxScope::All,
            builtin: true,
        }
    }

    /// The basic role: day-to-day work on contacts, inbox and marketing, no settings, no
    /// reveal or export of personal data.
    pub fn basic() -> Self {
        Self {
            id: "basic".into(),
            name: "Basic".into(),
            permissions: [
                Permission::ContactsRead,
                Permission::ContactsEdit,
                Permission::Marketing,
            ]
            .into_iter()
            .collect(),
            inbox_scope: InboxScope::All,
            builtin: true,
        }
    }

    /// Whether the role grants `p`.
    pub fn allows(&self, p: Permission) -> bool {
        self.permissions.contains(&p)
    }

    /// Whether a manager holding `self` may hand out `granted` (assign it, or define it):
    /// only owners deal in the owner role, and nobody grants permissions they lack, so
    /// team management cannot be turned into a way to become owner.
    pub fn may_grant(&self, granted: &Role) -> Result<(), String> {
        if self.id == "owner" {
            return Ok(());
        }
        if granted.id == "owner" {
            return Err("only owners may grant the owner role".into());
        }
        match granted
            .permissions
            .iter()
            .find(|p| !self.permissions.contains(p))
        {
            Some(p) => Err(format!(
                "you cannot grant `{}`, which your own role lacks",
                p.name()
            )),
            None => Ok(()),
        }
    }

    /// Checks a custom role's name (1–50 characters; see [`crate::value::display_name`]).
    pub fn check_name(name: &str) -> Result<String, Invalid> {
        crate::value::display_name("name", name, 50)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn custom(perms: &[Permission]) -> Role {
        Role {
            id: "r1".into(),
            name: "Team lead".into(),
            permissions: perms.iter().copied().collect(),
            inbox_scope: InboxScope::All,
            builtin: false,
        }
    }

    #[test]
    fn nobody_but_owners_grants_owner_or_more_than_they_have() {
        let lead = custom(&[Permission::TeamManagement, Permission::ContactsRead]);
        assert!(lead.may_grant(&Role::owner()).is_err());
        assert!(lead.may_grant(&custom(&[Permission::ContactsRead])).is_ok());
        let err = lead
            .may_grant(&custom(&[Permission::ContactsReveal]))
            .unwrap_err();
        assert!(err.contains("contacts.reveal"));
        assert!(
            lead.may_grant(&Role::basic()).is_err(),
            "basic has contacts.edit and marketing"
        );
        assert!(Role::owner().may_grant(&Role::owner()).is_ok());
    }
}
