//! Groups: creation, membership and roles, each a change through the log, with the events
//! the members hear.

use super::UserManager;
use crate::UserError;
use crate::social::{Group, Role, SocialWrite, successor};
use im_protocol::wire::{GroupChange, GroupEvent, GroupView, MemberView};
use im_protocol::{GroupId, UserId};

impl UserManager {
    /// A group as the API shows it: id, name, owner and members with usernames and roles.
    pub fn group_view(&self, g: &Group) -> GroupView {
        let members = g
            .members
            .iter()
            .map(|&(id, role)| MemberView {
                id,
                role,
                username: self.name_of(id),
            })
            .collect();
        GroupView {
            id: g.id,
            members,
            name: g.name.clone(),
            owner: g.owner(),
        }
    }

    pub(super) fn announce_group(
        &self,
        group: &Group,
        change: GroupChange,
        user: UserId,
        extra: Option<UserId>,
    ) {
        let data = GroupEvent {
            change,
            group: self.group_view(group),
            user,
        };
        self.emit(group.member_ids().chain(extra), "group", &data);
    }

    /// Creates a group owned by `owner`; every initial member must be a friend of the owner.
    pub async fn create_group(
        &self,
        owner: UserId,
        name: &str,
        members: &[UserId],
    ) -> Result<Group, UserError> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 64 {
            return Err(UserError::InvalidGroupName);
        }
        let _serial = self.social_writes.lock().await;
        self.fresh().await?;
        let mut list = vec![(owner, Role::Owner)];
        {
            let social = self.social.read();
            for &m in members {
                if m == owner || list.iter().any(|(u, _)| *u == m) {
                    continue;
                }
                if !self.exists(m) {
                    return Err(UserError::NoSuchUser);
                }
                if !social.are_friends(owner, m) {
                    return Err(UserError::NotFriends);
                }
                list.push((m, Role::Member));
            }
        }
        let id = self
            .write(&SocialWrite::CreateGroup {
                name: name.to_owned(),
                members: list,
            })
            .await?;
        let group = self.social.read().group(GroupId(id))?.clone();
        self.announce_group(&group, GroupChange::Created, owner, None);
        Ok(group)
    }

    /// The groups `user` belongs to.
    pub fn groups(&self, user: UserId) -> Vec<Group> {
        self.social
            .read()
            .groups_of(user)
            .into_iter()
            .cloned()
            .collect()
    }

    /// One group, for its members only.
    pub fn group(&self, user: UserId, id: GroupId) -> Result<Group, UserError> {
        let social = self.social.read();
        let g = social.group(id)?;
        g.role_of(user).ok_or(UserError::NotMember)?;
        Ok(g.clone())
    }

    /// Adds `user` as a member; the actor must be an owner or admin and a friend of `user`.
    pub async fn add_member(
        &self,
        actor: UserId,
        id: GroupId,
        user: UserId,
    ) -> Result<Group, UserError> {
        self.settled(|| self.user(user)).await?;
        let _serial = self.social_writes.lock().await;
        self.fresh().await?;
        {
            let social = self.social.read();
            let g = social.group(id)?;
            let role = g.role_of(actor).ok_or(UserError::NotMember)?;
            if !role.manages() {
                return Err(UserError::NotAdmin);
            }
            if g.role_of(user).is_some() {
                return Ok(g.clone());
            }
            if social.blocked_between(actor, user) {
                return Err(UserError::Blocked);
            }
            if !social.are_friends(actor, user) {
                return Err(UserError::NotFriends);
            }
        }
        self.write(&SocialWrite::SetMember {
            group: id,
            user,
            role: Role::Member,
        })
        .await?;
        let group = self.social.read().group(id)?.clone();
        self.announce_group(&group, GroupChange::MemberAdded, user, None);
        Ok(group)
    }

    /// Makes a member an admin or a plain member again; only the owner may.
    pub async fn set_role(
        &self,
        actor: UserId,
        id: GroupId,
        user: UserId,
        role: Role,
    ) -> Result<Group, UserError> {
        let _serial = self.social_writes.lock().await;
        self.fresh().await?;
        {
            let social = self.social.read();
            let g = social.group(id)?;
            let actor_role = g.role_of(actor).ok_or(UserError::NotMember)?;
            if actor_role != Role::Owner || role == Role::Owner {
                return Err(UserError::NotAdmin);
            }
            let current = g.role_of(user).ok_or(UserError::NoSuchUser)?;
            if current == Role::Owner || current == role {
                return Ok(g.clone());
            }
        }
        self.write(&SocialWrite::SetMember {
            group: id,
            user,
            role,
        })
        .await?;
        let group = self.social.read().group(id)?.clone();
        self.announce_group(&group, GroupChange::RoleChanged, user, None);
        Ok(group)
    }

    /// Removes `user` from the group: themselves (leave), or by an owner or admin. An admin
    /// cannot remove the owner or another admin. A leaving owner hands the group on; the last
    /// one out deletes it.
    pub async fn remove_member(
        &self,
        actor: UserId,
        id: GroupId,
        user: UserId,
    ) -> Result<(), UserError> {
        self.settled(|| self.user(user)).await?;
        let _serial = self.social_writes.lock().await;
        self.fresh().await?;
        let (w, before) = {
            let social = self.social.read();
            let g = social.group(id)?;
            let actor_role = g.role_of(actor).ok_or(UserError::NotMember)?;
            let Some(target_role) = g.role_of(user) else {
                return Ok(());
            };
            if actor != user {
                let allowed = match actor_role {
                    Role::Owner => true,
                    Role::Admin => target_role == Role::Member,
                    Role::Member => false,
                };
                if !allowed {
                    return Err(UserError::NotAdmin);
                }
            }
            let new_owner = if target_role == Role::Owner {
                successor(&g.members, user)
            } else {
                None
            };
            let delete_group = g.members.len() == 1;
            (
                SocialWrite::RemoveMember {
                    group: id,
                    user,
                    new_owner,
                    delete_group,
                },
                g.clone(),
            )
        };
        self.write(&w).await?;
        let after = self.social.read().group(id).ok().cloned();
        match after {
            Some(g) => self.announce_group(&g, GroupChange::MemberRemoved, user, Some(user)),
            None => self.announce_group(&before, GroupChange::Deleted, user, None),
        }
        Ok(())
    }
}
