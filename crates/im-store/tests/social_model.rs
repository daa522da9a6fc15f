//! Random sequences of friend, block and group operations, run through the `UserManager` on a
//! real store (SQLite, and PostgreSQL) and through a plain in-memory model. After every step the manager must
//! agree with the model (results and state); at the end a manager freshly loaded from the
//! store must agree too, so what was persisted is what was acknowledged.

use im_cluster::LogReader;
use im_cluster::{Appliers, Follower, FollowerConfig, Topic};
use im_protocol::{GroupId, UserId};
use im_store::{CommitListener, PgConfig, PgStore, SqliteStore, StoreConfig};
use im_testkit::TempDatabase;
use im_users::UserStore;
use im_users::{HashParams, Role, UserError, UserManager, UsersConfig};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

const USERS: u64 = 4;
const NAMES: [&str; USERS as usize] = ["ann", "ben", "cat", "dan"];

#[derive(Debug, Clone)]
enum Op {
    Request(u64, u64),
    Answer {
        who: u64,
        pick: usize,
        accept: bool,
    },
    Unfriend(u64, u64),
    Block(u64, u64),
    Unblock(u64, u64),
    CreateGroup(u64, Vec<u64>),
    AddMember {
        group: usize,
        actor: u64,
        user: u64,
    },
    SetRole {
        group: usize,
        actor: u64,
        user: u64,
        admin: bool,
    },
    Remove {
        group: usize,
        actor: u64,
        user: u64,
    },
}

fn user() -> impl Strategy<Value = u64> {
    1..=USERS
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (user(), user()).prop_map(|(a, b)| Op::Request(a, b)),
        3 => (user(), any::<usize>(), any::<bool>()).prop_map(|(who, pick, accept)| Op::Answer { who, pick, accept }),
        1 => (user(), user()).prop_map(|(a, b)| Op::Unfriend(a, b)),
        1 => (user(), user()).prop_map(|(a, b)| Op::Block(a, b)),
        1 => (user(), user()).prop_map(|(a, b)| Op::Unblock(a, b)),
        2 => (user(), proptest::collection::vec(user(), 0..4)).prop_map(|(o, m)| Op::CreateGroup(o, m)),
        2 => (any::<usize>(), user(), user()).prop_map(|(group, actor, user)| Op::AddMember { group, actor, user }),
        1 => (any::<usize>(), user(), user(), any::<bool>()).prop_map(|(group, actor, user, admin)| Op::SetRole { group, actor, user, admin }),
        2 => (any::<usize>(), user(), user()).prop_map(|(group, actor, user)| Op::Remove { group, actor, user }),
    ]
}

/// The rules of docs/API.md, written as plainly as possible.
#[derive(Debug, Default)]
struct Model {
    friends: BTreeSet<(u64, u64)>,
    blocks: BTreeSet<(u64, u64)>,
    /// Pending requests (from, to), oldest first.
    pending: Vec<(u64, u64)>,
    /// Live groups: (real id, members in joining order).
    groups: Vec<(GroupId, Vec<(u64, Role)>)>,
}

/// A member's role in a model group.
fn role_in(members: &[(u64, Role)], user: u64) -> Option<Role> {
    members.iter().find(|m| m.0 == user).map(|m| m.1)
}

fn pair(a: u64, b: u64) -> (u64, u64) {
    (a.min(b), a.max(b))
}

impl Model {
    fn are_friends(&self, a: u64, b: u64) -> bool {
        self.friends.contains(&pair(a, b))
    }

    fn blocked(&self, a: u64, b: u64) -> bool {
        self.blocks.contains(&(a, b)) || self.blocks.contains(&(b, a))
    }

    fn request(&mut self, from: u64, to: u64) -> Result<(), UserError> {
        if from == to {
            return Err(UserError::SelfRelation);
        }
        if self.blocked(from, to) {
            return Err(UserError::Blocked);
        }
        if self.are_friends(from, to) {
            return Err(UserError::AlreadyFriends);
        }
        if self.pending.contains(&(from, to)) {
            return Ok(());
        }
        if self.pending.contains(&(to, from)) {
            self.pending.retain(|p| *p != (to, from));
            self.friends.insert(pair(from, to));
        } else {
            self.pending.push((from, to));
        }
        Ok(())
    }

    fn block(&mut self, a: u64, b: u64) -> Result<(), UserError> {
        if a == b {
            return Err(UserError::SelfRelation);
        }
        if self.blocks.insert((a, b)) {
            self.friends.remove(&pair(a, b));
            self.pending.retain(|p| *p != (a, b) && *p != (b, a));
        }
        Ok(())
    }

    fn create_group(&mut self, owner: u64, members: &[u64]) -> Result<Vec<(u64, Role)>, UserError> {
        let mut list = vec![(owner, Role::Owner)];
        for &m in members {
            if m == owner || list.iter().any(|(u, _)| *u == m) {
                continue;
            }
            if !self.are_friends(owner, m) {
                return Err(UserError::NotFriends);
            }
            list.push((m, Role::Member));
        }
        Ok(list)
    }

    fn add_member(&mut self, g: usize, actor: u64, user: u64) -> Result<(), UserError> {
        let (blocked, friends) = (self.blocked(actor, user), self.are_friends(actor, user));
        let members = &mut self.groups[g].1;
        let role = role_in(members, actor).ok_or(UserError::NotMember)?;
        if role == Role::Member {
            return Err(UserError::NotAdmin);
        }
        if members.iter().any(|m| m.0 == user) {
            return Ok(());
        }
        if blocked {
            return Err(UserError::Blocked);
        }
        if !friends {
            return Err(UserError::NotFriends);
        }
        members.push((user, Role::Member));
        Ok(())
    }

    fn set_role(&mut self, g: usize, actor: u64, user: u64, role: Role) -> Result<(), UserError> {
        let members = &mut self.groups[g].1;
        let actor_role = role_in(members, actor).ok_or(UserError::NotMember)?;
        if actor_role != Role::Owner {
            return Err(UserError::NotAdmin);
        }
        let m = members
            .iter_mut()
            .find(|m| m.0 == user)
            .ok_or(UserError::NoSuchUser)?;
        if m.1 != Role::Owner {
            m.1 = role;
        }
        Ok(())
    }

    fn remove(&mut self, g: usize, actor: u64, user: u64) -> Result<(), UserError> {
        let members = &mut self.groups[g].1;
        let actor_role = role_in(members, actor).ok_or(UserError::NotMember)?;
        let Some(target_role) = role_in(members, user) else {
            return Ok(());
        };
        let allowed = actor == user
            || actor_role == Role::Owner
            || (actor_role == Role::Admin && target_role == Role::Member);
        if !allowed {
            return Err(UserError::NotAdmin);
        }
        members.retain(|m| m.0 != user);
        if members.is_empty() {
            self.groups.remove(g);
        } else if target_role == Role::Owner {
            let heir = members.iter().position(|m| m.1 == Role::Admin).unwrap_or(0);
            members[heir].1 = Role::Owner;
        }
        Ok(())
    }
}

/// Friends, blocks, pending requests and groups' members, in a comparable form.
type State = (
    BTreeSet<(u64, u64)>,
    BTreeSet<(u64, u64)>,
    Vec<(u64, u64)>,
    Vec<Vec<(u64, Role)>>,
);

/// The manager's view of everything the model tracks.
fn observe(users: &UserManager) -> State {
    let mut friends = BTreeSet::new();
    let mut blocks = BTreeSet::new();
    let mut pending = BTreeMap::new();
    let mut groups = BTreeMap::new();
    for u in 1..=USERS {
        let id = UserId(u);
        friends.extend(users.friends(id).iter().map(|f| pair(u, f.id.0)));
        blocks.extend(users.blocked(id).iter().map(|b| (u, b.id.0)));
        let (incoming, outgoing) = users.requests(id);
        for r in incoming.into_iter().chain(outgoing) {
            pending.insert(r.id, (r.from.0, r.to.0));
        }
        for g in users.groups(id) {
            groups.insert(
                g.id,
                g.members.iter().map(|(m, r)| (m.0, *r)).collect::<Vec<_>>(),
            );
        }
    }
    (
        friends,
        blocks,
        pending.into_values().collect(),
        groups.into_values().collect(),
    )
}

fn expected(m: &Model) -> State {
    (
        m.friends.clone(),
        m.blocks.clone(),
        m.pending.clone(),
        m.groups.iter().map(|g| g.1.clone()).collect(),
    )
}

fn config() -> UsersConfig {
    UsersConfig {
        hash: HashParams {
            memory_kib: 8,
            iterations: 1,
            concurrency: 2,
            ..HashParams::default()
        },
        ..UsersConfig::default()
    }
}

/// The store under test: its ports, and how to connect its commits to the follower.
struct Under {
    users: Arc<dyn UserStore>,
    reader: Arc<dyn LogReader>,
    listen: Box<dyn FnOnce(Arc<dyn CommitListener>)>,
    /// What must live as long as the store (its directory or database).
    _keep: Box<dyn std::any::Any>,
}

async fn open(postgres: bool) -> Under {
    if postgres {
        let db = TempDatabase::create().await;
        let s = PgStore::open(PgConfig::new(db.url())).await.unwrap();
        let l = s.clone();
        Under {
            users: Arc::new(s.clone()),
            reader: Arc::new(s),
            listen: Box::new(move |c| l.set_commit_listener(c)),
            _keep: Box::new(db),
        }
    } else {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path(), StoreConfig::default()).unwrap();
        let l = s.clone();
        Under {
            users: Arc::new(s.clone()),
            reader: Arc::new(s),
            listen: Box::new(move |c| l.set_commit_listener(c)),
            _keep: Box::new(dir),
        }
    }
}

async fn run(postgres: bool, seed: Vec<bool>, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let under = open(postgres).await;
    let store = under.users.clone();
    let start = under.reader.head().await.unwrap();
    let users = UserManager::new(store.clone(), config()).await.unwrap();
    // Memory changes only through the log follower, as in the server.
    let follower = Follower::start(
        under.reader.clone(),
        Appliers::new().topic(Topic::Users, users.clone()),
        start,
        FollowerConfig::default(),
    )
    .unwrap();
    let offer = follower.clone();
    (under.listen)(Arc::new(move |entries| offer.offer(entries)));
    users.attach_log(follower);
    for name in NAMES {
        users.register(name, "long enough").await.unwrap();
    }
    let mut model = Model::default();
    // Start from a random set of friendships, so group operations get going quickly.
    let pairs = (1..=USERS).flat_map(|a| (a + 1..=USERS).map(move |b| (a, b)));
    let seeded: Vec<Op> = pairs
        .zip(seed)
        .filter(|(_, on)| *on)
        .flat_map(|((a, b), _)| [Op::Request(a, b), Op::Request(b, a)])
        .collect();
    for op in seeded.into_iter().chain(ops) {
        let (got, want) = match op.clone() {
            Op::Request(a, b) => (
                users
                    .request_friend(UserId(a), NAMES[b as usize - 1])
                    .await
                    .map(drop),
                model.request(a, b),
            ),
            Op::Answer { who, pick, accept } => {
                let (incoming, _) = users.requests(UserId(who));
                if incoming.is_empty() {
                    continue;
                }
                let r = incoming[pick % incoming.len()];
                let model_incoming: Vec<_> = model
                    .pending
                    .iter()
                    .filter(|p| p.1 == who)
                    .copied()
                    .collect();
                prop_assert_eq!(
                    model_incoming[pick % model_incoming.len()],
                    (r.from.0, r.to.0)
                );
                model.pending.retain(|p| *p != (r.from.0, r.to.0));
                if accept {
                    model.friends.insert(pair(r.from.0, r.to.0));
                }
                (
                    users
                        .answer_request(UserId(who), r.id, accept)
                        .await
                        .map(drop),
                    Ok(()),
                )
            }
            Op::Unfriend(a, b) => {
                model.friends.remove(&pair(a, b));
                (users.unfriend(UserId(a), UserId(b)).await, Ok(()))
            }
            Op::Block(a, b) => (users.block(UserId(a), UserId(b)).await, model.block(a, b)),
            Op::Unblock(a, b) => {
                model.blocks.remove(&(a, b));
                (users.unblock(UserId(a), UserId(b)).await, Ok(()))
            }
            Op::CreateGroup(owner, members) => {
                let ids: Vec<UserId> = members.iter().map(|m| UserId(*m)).collect();
                let got = users.create_group(UserId(owner), "g", &ids).await;
                let want = model.create_group(owner, &members);
                if let (Ok(g), Ok(list)) = (&got, &want) {
                    model.groups.push((g.id, list.clone()));
                }
                (got.map(drop), want.map(drop))
            }
            Op::AddMember { group, actor, user } if !model.groups.is_empty() => {
                let g = group % model.groups.len();
                let id = model.groups[g].0;
                (
                    users
                        .add_member(UserId(actor), id, UserId(user))
                        .await
                        .map(drop),
                    model.add_member(g, actor, user),
                )
            }
            Op::SetRole {
                group,
                actor,
                user,
                admin,
            } if !model.groups.is_empty() => {
                let g = group % model.groups.len();
                let id = model.groups[g].0;
                let role = if admin { Role::Admin } else { Role::Member };
                (
                    users
                        .set_role(UserId(actor), id, UserId(user), role)
                        .await
                        .map(drop),
                    model.set_role(g, actor, user, role),
                )
            }
            Op::Remove { group, actor, user } if !model.groups.is_empty() => {
                let g = group % model.groups.len();
                let id = model.groups[g].0;
                (
                    users.remove_member(UserId(actor), id, UserId(user)).await,
                    model.remove(g, actor, user),
                )
            }
            _ => continue,
        };
        prop_assert_eq!(&got, &want, "result of {:?}", op);
        prop_assert_eq!(observe(&users), expected(&model), "state after {:?}", op);
    }
    // What the store holds, loaded afresh, is what the model says.
    let reloaded = UserManager::new(store, config()).await.unwrap();
    prop_assert_eq!(observe(&reloaded), expected(&model), "state after reload");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn manager_and_sqlite_agree_with_the_model(
        seed in proptest::collection::vec(any::<bool>(), 6),
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(false, seed, ops))?;
    }
}

proptest! {
    // Each case makes and drops a database, so fewer of them.
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn manager_and_postgres_agree_with_the_model(
        seed in proptest::collection::vec(any::<bool>(), 6),
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(true, seed, ops))?;
    }
}
