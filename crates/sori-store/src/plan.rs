//! Planning a batch of user writes, shared by both backends: the backend loads the rows a
//! batch touches, this module applies the domain rules in order (so two writes to the same
//! user in one batch see each other), and the backend writes back what changed.

use std::collections::{BTreeMap, HashMap};

use sori_domain::{ApplyContext, Invalid, ProfileField, Registry, User, UserUpdate, apply_update};

/// Which user a write addresses.
#[derive(Debug, Clone, PartialEq)]
pub enum UserTarget {
    /// An existing user by id; not found is an error.
    Id(String),
    /// A member by member id, created with `new_id` when absent (upsert).
    MemberId {
        /// The business's id.
        member_id: String,
        /// Id to give the user if it has to be created.
        new_id: String,
    },
    /// A new user; fails when `member_id` is already taken.
    New {
        /// Id of the new user.
        id: String,
        /// Optional member id.
        member_id: Option<String>,
    },
}

/// One write request.
#[derive(Debug, Clone)]
pub struct UserOp {
    /// Tenant.
    pub channel_id: i64,
    /// Addressed user.
    pub target: UserTarget,
    /// Requested change.
    pub update: UserUpdate,
    /// Time, zone and limits for this request.
    pub ctx: ApplyContext,
}

/// Why one write of a batch failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UserOpError {
    /// No such user in the channel.
    #[error("user not found")]
    NotFound,
    /// The member id belongs to another user.
    #[error("memberId `{0}` is already taken")]
    MemberIdTaken(String),
    /// The update broke a rule.
    #[error(transparent)]
    Invalid(#[from] Invalid),
}

/// A successful write.
#[derive(Debug, Clone)]
pub struct UserOpOutcome {
    /// The user after the write.
    pub user: User,
    /// The user did not exist before.
    pub created: bool,
    /// Something changed (and was written).
    pub changed: bool,
}

/// Result of one write of a batch.
pub type UserOpResult = Result<UserOpOutcome, UserOpError>;

/// What a backend must write for a batch.
#[derive(Debug, Default)]
pub struct WritePlan {
    /// Users to insert or replace, keyed by (channel, id).
    pub users: BTreeMap<(i64, String), User>,
    /// Profile fields registered by the batch.
    pub new_fields: Vec<(i64, ProfileField)>,
    /// One result per op, in order.
    pub results: Vec<UserOpResult>,
}

/// Applies `ops` in order over the loaded rows. `loaded` holds every existing user the ops
/// address (by id or member id); `registries` every involved channel's field registry.
pub fn plan_user_writes(
    ops: Vec<UserOp>,
    loaded: Vec<(i64, User)>,
    mut registries: HashMap<i64, Registry>,
) -> WritePlan {
    let mut users: HashMap<(i64, String), User> = loaded
        .into_iter()
        .map(|(ch, u)| ((ch, u.id.clone()), u))
        .collect();
    let mut by_member: HashMap<(i64, String), String> = users
        .iter()
        .filter_map(|((ch, id), u)| u.member_id.as_ref().map(|m| ((*ch, m.clone()), id.clone())))
        .collect();
    let mut plan = WritePlan::default();

    for op in ops {
        let ch = op.channel_id;
        let (base, created) = match &op.target {
            UserTarget::Id(id) => match users.get(&(ch, id.clone())) {
                Some(u) => (u.clone(), false),
                None => {
                    plan.results.push(Err(UserOpError::NotFound));
                    continue;
                }
            },
            UserTarget::MemberId { member_id, new_id } => {
                match by_member
                    .get(&(ch, member_id.clone()))
                    .and_then(|id| users.get(&(ch, id.clone())))
                {
                    Some(u) => (u.clone(), false),
                    None => {
                        let mut u = User::new(new_id.clone(), op.ctx.now);
                        u.member_id = Some(member_id.clone());
                        (u, true)
                    }
                }
            }
            UserTarget::New { id, member_id } => {
                if let Some(m) = member_id
                    && by_member.contains_key(&(ch, m.clone()))
                {
                    plan.results
                        .push(Err(UserOpError::MemberIdTaken(m.clone())));
                    continue;
                }
                let mut u = User::new(id.clone(), op.ctx.now);
                u.member_id = member_id.clone();
                (u, true)
            }
        };
        let registry = registries.entry(ch).or_default();
        match apply_update(&base, created, registry, &op.update, &op.ctx) {
            Ok(applied) => {
                for f in applied.new_fields {
                    registry.insert(f.clone());
                    plan.new_fields.push((ch, f));
                }
                let user = applied.user;
                if applied.changed {
                    if let Some(m) = &user.member_id {
                        by_member.insert((ch, m.clone()), user.id.clone());
                    }
                    users.insert((ch, user.id.clone()), user.clone());
                    plan.users.insert((ch, user.id.clone()), user.clone());
                }
                plan.results.push(Ok(UserOpOutcome {
                    user,
                    created,
                    changed: applied.changed,
                }));
            }
            Err(e) => plan.results.push(Err(e.into())),
        }
    }
    plan
}

impl UserOp {
    /// The user ids this op may read.
    pub fn id_key(&self) -> Option<&str> {
        match &self.target {
            UserTarget::Id(id) => Some(id),
            _ => None,
        }
    }

    /// The member id this op may read.
    pub fn member_key(&self) -> Option<&str> {
        match &self.target {
            UserTarget::MemberId { member_id, .. } => Some(member_id),
            UserTarget::New { member_id, .. } => member_id.as_deref(),
            UserTarget::Id(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sori_domain::update::UPDATE_FIELDS;

    fn op(target: UserTarget, body: serde_json::Value) -> UserOp {
        UserOp {
            channel_id: 1,
            target,
            update: UserUpdate::from_json(&body, UPDATE_FIELDS).expect("valid"),
            ctx: ApplyContext {
                now: 5,
                tz: jiff::tz::TimeZone::UTC,
                tag_limit_per_call: 20,
                may_resubscribe: true,
                may_register: true,
            },
        }
    }

    fn upsert(m: &str, id: &str, body: serde_json::Value) -> UserOp {
        op(
            UserTarget::MemberId {
                member_id: m.into(),
                new_id: id.into(),
            },
            body,
        )
    }

    #[test]
    fn two_writes_to_one_new_member_in_a_batch_create_it_once() {
        let plan = plan_user_writes(
            vec![
                upsert("m1", "a", json!({"profile": {"name": "Kim"}})),
                upsert("m1", "b", json!({"profile": {"age": 3}})),
            ],
            vec![],
            HashMap::new(),
        );
        assert_eq!(plan.users.len(), 1);
        let u = &plan.users[&(1, "a".to_owned())];
        assert_eq!(u.profile["name"], json!("Kim"));
        assert_eq!(u.profile["age"], json!(3));
        assert!(plan.results[0].as_ref().expect("ok").created);
        assert!(!plan.results[1].as_ref().expect("ok").created);
        assert_eq!(plan.new_fields.len(), 2);
    }

    #[test]
    fn a_failing_op_leaves_the_others_alone() {
        let plan = plan_user_writes(
            vec![
                upsert("m1", "a", json!({"profile": {"name": 1}})),
                upsert("m2", "b", json!({"profile": {"name": "Lee"}})),
                op(UserTarget::Id("zz".into()), json!({})),
            ],
            vec![],
            HashMap::from([(1, Registry::new(Registry::preregistered(0)))]),
        );
        assert!(matches!(plan.results[0], Err(UserOpError::Invalid(_))));
        assert!(plan.results[1].is_ok());
        assert_eq!(plan.results[2].as_ref().err(), Some(&UserOpError::NotFound));
        assert_eq!(plan.users.len(), 1);
    }

    #[test]
    fn member_id_conflicts_on_create() {
        let mut existing = User::new("a".into(), 1);
        existing.member_id = Some("m1".into());
        let plan = plan_user_writes(
            vec![op(
                UserTarget::New {
                    id: "b".into(),
                    member_id: Some("m1".into()),
                },
                json!({}),
            )],
            vec![(1, existing)],
            HashMap::new(),
        );
        assert_eq!(
            plan.results[0].as_ref().err(),
            Some(&UserOpError::MemberIdTaken("m1".into()))
        );
    }
}
