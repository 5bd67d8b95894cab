//! The simulated Entra directory: users, groups with their members and the change log delta
//! queries read, and Entra devices.

use std::collections::{BTreeSet, HashMap};

use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct User {
    pub id: Uuid,
    pub upn: Box<str>,
    pub display_name: Box<str>,
}

#[derive(Debug, Clone)]
pub struct Group {
    pub id: Uuid,
    pub display_name: String,
    /// Direct members, ordered by id so `$skiptoken` paging is stable under changes.
    pub members: BTreeSet<Uuid>,
    /// Membership changes `(sequence, member, added)` for delta queries.
    pub log: Vec<(u64, Uuid, bool)>,
}

#[derive(Debug, Clone)]
pub struct EntraDevice {
    pub id: Uuid,
    pub device_id: Uuid,
    pub display_name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjKind {
    User,
    Group,
    Device,
}

impl ObjKind {
    pub fn odata_type(self) -> &'static str {
        match self {
            ObjKind::User => "#microsoft.graph.user",
            ObjKind::Group => "#microsoft.graph.group",
            ObjKind::Device => "#microsoft.graph.device",
        }
    }
}

#[derive(Debug, Default)]
pub struct Directory {
    pub users: Vec<Option<User>>,
    pub user_by_id: HashMap<Uuid, u32>,
    /// Lower-cased UPN → index.
    pub user_by_upn: HashMap<Box<str>, u32>,
    pub groups: Vec<Group>,
    pub group_by_id: HashMap<Uuid, u32>,
    pub devices: Vec<EntraDevice>,
    pub device_by_id: HashMap<Uuid, u32>,
    pub delta_seq: u64,
    /// Delta links issued at or before this sequence are refused with `delta_refusal`.
    pub delta_refused_upto: Option<(u64, DeltaRefusal)>,
}

/// How the simulator refuses an expired delta link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeltaRefusal {
    /// `410 Gone` with a `Location` header to start over from.
    Gone,
    /// `400 syncStateNotFound`.
    SyncStateNotFound,
}

impl Directory {
    pub fn add_user(&mut self, user: User) -> u32 {
        let i = self.users.len() as u32;
        self.user_by_id.insert(user.id, i);
        self.user_by_upn.insert(user.upn.to_lowercase().into(), i);
        self.users.push(Some(user));
        i
    }

    pub fn user(&self, id: &Uuid) -> Option<&User> {
        self.user_by_id
            .get(id)
            .and_then(|&i| self.users[i as usize].as_ref())
    }

    pub fn user_by_upn(&self, upn: &str) -> Option<&User> {
        self.user_by_upn
            .get(upn.to_lowercase().as_str())
            .and_then(|&i| self.users[i as usize].as_ref())
    }

    /// Deletes a user object and drops it from every group (what a member `DELETE` without
    /// `/$ref` does).
    pub fn delete_user(&mut self, id: &Uuid) -> bool {
        let Some(i) = self.user_by_id.remove(id) else {
            return false;
        };
        if let Some(u) = self.users[i as usize].take() {
            self.user_by_upn.remove(u.upn.to_lowercase().as_str());
        }
        let gids: Vec<Uuid> = self.groups.iter().map(|g| g.id).collect();
        for g in gids {
            self.remove_member(&g, id);
        }
        true
    }

    pub fn add_group(&mut self, id: Uuid, display_name: &str) {
        self.group_by_id.insert(id, self.groups.len() as u32);
        self.groups.push(Group {
            id,
            display_name: display_name.to_string(),
            members: BTreeSet::new(),
            log: Vec::new(),
        });
    }

    pub fn group(&self, id: &Uuid) -> Option<&Group> {
        self.group_by_id.get(id).map(|&i| &self.groups[i as usize])
    }

    fn group_mut(&mut self, id: &Uuid) -> Option<&mut Group> {
        self.group_by_id
            .get(id)
            .map(|&i| &mut self.groups[i as usize])
    }

    pub fn add_device(&mut self, device: EntraDevice) {
        self.device_by_id
            .insert(device.id, self.devices.len() as u32);
        self.devices.push(device);
    }

    pub fn kind_of(&self, id: &Uuid) -> Option<ObjKind> {
        if self.user(id).is_some() {
            Some(ObjKind::User)
        } else if self.group_by_id.contains_key(id) {
            Some(ObjKind::Group)
        } else if self.device_by_id.contains_key(id) {
            Some(ObjKind::Device)
        } else {
            None
        }
    }

    /// Adds a member; false when it already was one.
    pub fn add_member(&mut self, group: &Uuid, member: Uuid) -> bool {
        self.delta_seq += 1;
        let seq = self.delta_seq;
        let Some(g) = self.group_mut(group) else {
            return false;
        };
        let added = g.members.insert(member);
        if added {
            g.log.push((seq, member, true));
        }
        added
    }

    /// Removes a member; false when it was not one.
    pub fn remove_member(&mut self, group: &Uuid, member: &Uuid) -> bool {
        self.delta_seq += 1;
        let seq = self.delta_seq;
        let Some(g) = self.group_mut(group) else {
            return false;
        };
        let removed = g.members.remove(member);
        if removed {
            g.log.push((seq, *member, false));
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_user_drops_memberships() {
        let mut d = Directory::default();
        let gid = Uuid::from_u128(1);
        let uid = Uuid::from_u128(2);
        d.add_group(gid, "g");
        d.add_user(User {
            id: uid,
            upn: "Ann@contoso.com".into(),
            display_name: "Ann".into(),
        });
        assert!(d.add_member(&gid, uid));
        assert!(!d.add_member(&gid, uid));
        assert!(d.user_by_upn("ann@CONTOSO.com").is_some());
        assert!(d.delete_user(&uid));
        assert!(d.user(&uid).is_none());
        assert!(d.user_by_upn("ann@contoso.com").is_none());
        assert!(d.group(&gid).unwrap().members.is_empty());
    }
}
