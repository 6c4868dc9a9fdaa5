//! Team rules (SPEC §2): which changes of a channel's roles and managers are allowed.
//!
//! The rules compare a change with the whole team (a name no other role has, at most 20
//! custom roles, one owner at least, no role deleted while held), so they are checked
//! against the team as the store holds it inside the write: two requests at once, on one
//! node or two, cannot both pass a check that only one of them may pass. The acting
//! manager's role is read from the same team, not from their request's start, so a
//! manager demoted meanwhile cannot grant what they held a moment ago.

use crate::role::{MAX_CUSTOM_ROLES, Permission, Role};

/// What the rules need to know of a manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seat {
    /// Manager id.
    pub id: String,
    /// The role they hold.
    pub role_id: String,
}

/// A channel's roles and who holds which, as stored.
#[derive(Debug, Clone, Default)]
pub struct Team {
    /// Every role, built-in ones included.
    pub roles: Vec<Role>,
    /// Every manager.
    pub seats: Vec<Seat>,
}

/// One change of a team.
#[derive(Debug, Clone, Copy)]
pub enum TeamChange<'a> {
    /// A new custom role.
    CreateRole(&'a Role),
    /// New name, permissions or inbox scope of a custom role (matched by id).
    UpdateRole(&'a Role),
    /// Deleting a custom role by id.
    DeleteRole(&'a str),
    /// A new manager holding a role.
    AddManager {
        /// The role the new manager holds.
        role_id: &'a str,
    },
    /// Another role for a manager.
    SetRole {
        /// The manager.
        manager_id: &'a str,
        /// The role they are to hold.
        role_id: &'a str,
    },
    /// Removing a manager.
    RemoveManager(&'a str),
}

/// Why a team change is refused; each maps to one answer of the API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TeamRefusal {
    /// The actor may not do this (no team management, no escalation, own role, owners).
    #[error("{0}")]
    Forbidden(String),
    /// The channel has its 20 custom roles.
    #[error("a channel may have at most {MAX_CUSTOM_ROLES} custom roles")]
    TooManyRoles,
    /// Another role of the channel has the name (in any case).
    #[error("a role named `{0}` exists")]
    NameTaken(String),
    /// The change would leave the channel without an owner.
    #[error("a channel must keep at least one owner")]
    LastOwner,
    /// `owner` and `basic` are the same in every channel.
    #[error("built-in roles cannot be changed or deleted")]
    BuiltIn,
    /// A role managers hold cannot be deleted.
    #[error("managers still hold this role")]
    RoleHeld,
    /// A manager is to hold a role the channel does not have (the request's `roleId`).
    #[error("no role `{0}` in this channel")]
    NoSuchRole(String),
    /// The custom role or manager named by the request's path does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
}

impl Team {
    fn role(&self, id: &str) -> Option<&Role> {
        self.roles.iter().find(|r| r.id == id)
    }

    fn seat(&self, id: &str) -> Option<&Seat> {
        self.seats.iter().find(|s| s.id == id)
    }

    /// Checks `change` made by the manager `actor_id`.
    pub fn check(&self, actor_id: &str, change: TeamChange<'_>) -> Result<(), TeamRefusal> {
        let actor = self
            .seat(actor_id)
            .and_then(|s| self.role(&s.role_id))
            .filter(|r| r.allows(Permission::TeamManagement))
            .ok_or_else(|| {
                TeamRefusal::Forbidden("your role does not allow team management".into())
            })?;
        let grant = |role: &Role| actor.may_grant(role).map_err(TeamRefusal::Forbidden);
        match change {
            TeamChange::CreateRole(role) => {
                if self.roles.iter().filter(|r| !r.builtin).count() >= MAX_CUSTOM_ROLES {
                    return Err(TeamRefusal::TooManyRoles);
                }
                self.name_is_free(role)?;
                grant(role)
            }
            TeamChange::UpdateRole(role) => {
                let stored = self
                    .role(&role.id)
                    .ok_or(TeamRefusal::NotFound("custom role"))?;
                if stored.builtin {
                    return Err(TeamRefusal::BuiltIn);
                }
                // A name kept as it was is not checked: two alike stored before names
                // were unique must still be changeable.
                if stored.name.to_lowercase() != role.name.to_lowercase() {
                    self.name_is_free(role)?;
                }
                if role.id == actor.id {
                    return Err(TeamRefusal::Forbidden(
                        "you cannot change your own role".into(),
                    ));
                }
                grant(role)
            }
            TeamChange::DeleteRole(id) => match self.role(id) {
                None => Err(TeamRefusal::NotFound("custom role")),
                Some(r) if r.builtin => Err(TeamRefusal::BuiltIn),
                Some(_) if self.seats.iter().any(|s| s.role_id == id) => Err(TeamRefusal::RoleHeld),
                Some(_) => Ok(()),
            },
            TeamChange::AddManager { role_id } => grant(self.granted(role_id)?),
            TeamChange::SetRole {
                manager_id,
                role_id,
            } => {
                if manager_id == actor_id {
                    return Err(TeamRefusal::Forbidden(
                        "you cannot change your own role".into(),
                    ));
                }
                grant(self.granted(role_id)?)?;
                self.may_unseat(actor, manager_id, "change an owner's role")?;
                if role_id != "owner" {
                    self.keeps_an_owner(manager_id)?;
                }
                Ok(())
            }
            TeamChange::RemoveManager(manager_id) => {
                self.may_unseat(actor, manager_id, "remove an owner")?;
                self.keeps_an_owner(manager_id)
            }
        }
    }

    fn granted(&self, role_id: &str) -> Result<&Role, TeamRefusal> {
        self.role(role_id)
            .ok_or_else(|| TeamRefusal::NoSuchRole(role_id.to_owned()))
    }

    /// A manager picks a role by its name, so two alike (built-in ones included, in any
    /// case) could not be told apart.
    fn name_is_free(&self, role: &Role) -> Result<(), TeamRefusal> {
        let name = role.name.to_lowercase();
        match self
            .roles
            .iter()
            .find(|r| r.id != role.id && r.name.to_lowercase() == name)
        {
            Some(taken) => Err(TeamRefusal::NameTaken(taken.name.clone())),
            None => Ok(()),
        }
    }

    /// Only owners change or remove an owner.
    fn may_unseat(&self, actor: &Role, manager_id: &str, what: &str) -> Result<(), TeamRefusal> {
        let target = self
            .seat(manager_id)
            .ok_or(TeamRefusal::NotFound("manager"))?;
        if target.role_id == "owner" && actor.id != "owner" {
            return Err(TeamRefusal::Forbidden(format!("only owners may {what}")));
        }
        Ok(())
    }

    /// Whether the team still has an owner once `manager_id` holds another role or leaves.
    fn keeps_an_owner(&self, manager_id: &str) -> Result<(), TeamRefusal> {
        if self
            .seats
            .iter()
            .any(|s| s.role_id == "owner" && s.id != manager_id)
        {
            Ok(())
        } else if self.seat(manager_id).is_some_and(|s| s.role_id == "owner") {
            Err(TeamRefusal::LastOwner)
        } else {
            // A channel without an owner (a hand-edited store) does not lock its team.
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::role::InboxScope;

    fn custom(id: &str, name: &str, perms: &[Permission]) -> Role {
        Role {
            id: id.into(),
            name: name.into(),
            permissions: perms.iter().copied().collect(),
            inbox_scope: InboxScope::All,
            builtin: false,
        }
    }

    fn seat(id: &str, role_id: &str) -> Seat {
        Seat {
            id: id.into(),
            role_id: role_id.into(),
        }
    }

    fn team() -> Team {
        Team {
            roles: vec![
                Role::owner(),
                Role::basic(),
                custom(
                    "lead",
                    "Lead",
                    &[Permission::TeamManagement, Permission::ContactsRead],
                ),
                custom("reader", "Reader", &[Permission::ContactsRead]),
            ],
            seats: vec![seat("o1", "owner"), seat("l1", "lead"), seat("b1", "basic")],
        }
    }

    #[test]
    fn names_are_unique_in_any_case_and_custom_roles_are_capped() {
        let t = team();
        let r = t.check("o1", TeamChange::CreateRole(&custom("x", "READER", &[])));
        assert_eq!(r, Err(TeamRefusal::NameTaken("Reader".into())));
        let r = t.check("o1", TeamChange::CreateRole(&custom("x", "owner", &[])));
        assert_eq!(r, Err(TeamRefusal::NameTaken("Owner".into())));
        // Renaming a role to its own name in another case is fine.
        let r = t.check(
            "o1",
            TeamChange::UpdateRole(&custom("reader", "READER", &[])),
        );
        assert_eq!(r, Ok(()));
        let mut full = team();
        for i in full.roles.len() - 2..MAX_CUSTOM_ROLES {
            full.roles
                .push(custom(&format!("r{i}"), &format!("R{i}"), &[]));
        }
        let r = full.check("o1", TeamChange::CreateRole(&custom("x", "New", &[])));
        assert_eq!(r, Err(TeamRefusal::TooManyRoles));
    }

    #[test]
    fn the_last_owner_stays() {
        let t = team();
        let demote = TeamChange::SetRole {
            manager_id: "o1",
            role_id: "basic",
        };
        // Nobody changes their own role; nobody else may leave the channel ownerless.
        assert!(matches!(
            t.check("o1", demote),
            Err(TeamRefusal::Forbidden(_))
        ));
        assert_eq!(
            t.check("o1", TeamChange::RemoveManager("o1")),
            Err(TeamRefusal::LastOwner)
        );
        let mut two = team();
        two.seats.push(seat("o2", "owner"));
        assert_eq!(two.check("o2", demote), Ok(()));
        assert_eq!(two.check("o2", TeamChange::RemoveManager("o1")), Ok(()));
    }

    #[test]
    fn the_actor_is_judged_by_the_role_they_hold_now() {
        let t = team();
        let grant_reader = TeamChange::SetRole {
            manager_id: "b1",
            role_id: "reader",
        };
        assert_eq!(t.check("l1", grant_reader), Ok(()));
        let mut demoted = team();
        demoted.seats[1].role_id = "basic".into();
        assert!(matches!(
            demoted.check("l1", grant_reader),
            Err(TeamRefusal::Forbidden(_))
        ));
        let mut gone = team();
        gone.seats.remove(1);
        assert!(matches!(
            gone.check("l1", grant_reader),
            Err(TeamRefusal::Forbidden(_))
        ));
        // A lead grants neither owner nor what they lack, and does not touch owners.
        for role_id in ["owner", "basic"] {
            let r = t.check("l1", TeamChange::AddManager { role_id });
            assert!(matches!(r, Err(TeamRefusal::Forbidden(_))), "{role_id}");
        }
        let r = t.check("l1", TeamChange::RemoveManager("o1"));
        assert_eq!(
            r,
            Err(TeamRefusal::Forbidden(
                "only owners may remove an owner".into()
            ))
        );
    }

    #[test]
    fn held_built_in_and_missing_roles() {
        let t = team();
        assert_eq!(
            t.check("o1", TeamChange::DeleteRole("lead")),
            Err(TeamRefusal::RoleHeld)
        );
        assert_eq!(t.check("o1", TeamChange::DeleteRole("reader")), Ok(()));
        assert_eq!(
            t.check("o1", TeamChange::DeleteRole("ghost")),
            Err(TeamRefusal::NotFound("custom role"))
        );
        let mut unheld = team();
        unheld.seats.retain(|s| s.role_id != "basic");
        for held in [&t, &unheld] {
            assert_eq!(
                held.check("o1", TeamChange::DeleteRole("basic")),
                Err(TeamRefusal::BuiltIn)
            );
        }
        assert_eq!(
            t.check("o1", TeamChange::UpdateRole(&Role::owner())),
            Err(TeamRefusal::BuiltIn)
        );
        assert_eq!(
            t.check("o1", TeamChange::UpdateRole(&custom("ghost", "Ghost", &[]))),
            Err(TeamRefusal::NotFound("custom role"))
        );
        assert_eq!(
            t.check("o1", TeamChange::AddManager { role_id: "ghost" }),
            Err(TeamRefusal::NoSuchRole("ghost".into()))
        );
        assert_eq!(
            t.check(
                "o1",
                TeamChange::SetRole {
                    manager_id: "nobody",
                    role_id: "basic"
                }
            ),
            Err(TeamRefusal::NotFound("manager"))
        );
    }
}
