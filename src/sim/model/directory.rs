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
    /// An organisational contact: a member of a group that is not a user.
    Contact,
    ServicePrincipal,
}

impl ObjKind {
    pub fn odata_type(self) -> &'static str {
        match self {
            ObjKind::User => "#microsoft.graph.user",
            ObjKind::Group => "#microsoft.graph.group",
            ObjKind::Device => "#microsoft.graph.device",
            ObjKind::Contact => "#microsoft.graph.orgContact",
            ObjKind::ServicePrincipal => "#microsoft.graph.servicePrincipal",
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
    /// Attributes of users that have any (department, country, …; see [`UserAttrs`]).
    pub user_attrs: HashMap<Uuid, UserAttrs>,
    /// Contacts and service principals: group members that are neither users nor devices.
    pub others: HashMap<Uuid, ObjKind>,
    pub delta_seq: u64,
    /// Delta links issued at or before this sequence are refused with `delta_refusal`.
    pub delta_refused_upto: Option<(u64, DeltaRefusal)>,
}

/// A user's attributes that attribute selectors filter on, and whether the account is enabled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserAttrs {
    pub department: Option<String>,
    pub country: Option<String>,
    pub company_name: Option<String>,
    pub job_title: Option<String>,
    pub office_location: Option<String>,
    pub usage_location: Option<String>,
    pub employee_type: Option<String>,
    pub disabled: bool,
}

impl UserAttrs {
    /// The value of Graph user property `property` (case-insensitive), `None` when unset or
    /// not an attribute the simulator keeps.
    pub fn get(&self, property: &str) -> Option<&str> {
        let v = match property.to_ascii_lowercase().as_str() {
            "department" => &self.department,
            "country" => &self.country,
            "companyname" => &self.company_name,
            "jobtitle" => &self.job_title,
            "officelocation" => &self.office_location,
            "usagelocation" => &self.usage_location,
            "employeetype" => &self.employee_type,
            _ => return None,
        };
        v.as_deref()
    }

    /// Whether the simulator knows `property` as a user attribute.
    pub fn known(property: &str) -> bool {
        matches!(
            property.to_ascii_lowercase().as_str(),
            "department"
                | "country"
                | "companyname"
                | "jobtitle"
                | "officelocation"
                | "usagelocation"
                | "employeetype"
        )
    }
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
            self.others.get(id).copied()
        }
    }

    /// Deletes a group: it no longer reads, and it leaves every group it was nested in.
    pub fn delete_group(&mut self, id: &Uuid) -> bool {
        let Some(i) = self.group_by_id.remove(id) else {
            return false;
        };
        let gids: Vec<Uuid> = self.groups.iter().map(|g| g.id).collect();
        for g in gids {
            self.remove_member(&g, id);
        }
        // The slot stays (indexes of the other groups must not move); only the id is gone.
        self.groups[i as usize].members.clear();
        true
    }

    /// Renames a user (a new UPN for the same object id).
    pub fn rename_user(&mut self, id: &Uuid, upn: &str) -> bool {
        let Some(&i) = self.user_by_id.get(id) else {
            return false;
        };
        let Some(u) = self.users[i as usize].as_mut() else {
            return false;
        };
        self.user_by_upn.remove(u.upn.to_lowercase().as_str());
        u.upn = upn.into();
        self.user_by_upn.insert(upn.to_lowercase().into(), i);
        true
    }

    /// Every object reachable from `group` through nested groups, each once, nested groups
    /// included, in breadth-first order (a cycle of groups ends where it meets itself);
    /// `None` when the group does not exist.
    pub fn transitive_members(&self, group: &Uuid) -> Option<Vec<(Uuid, ObjKind)>> {
        self.group(group)?;
        let mut seen = std::collections::HashSet::from([*group]);
        let mut queue = std::collections::VecDeque::from([*group]);
        let mut out = Vec::new();
        while let Some(g) = queue.pop_front() {
            let Some(g) = self.group(&g) else { continue };
            for m in &g.members {
                let Some(kind) = self.kind_of(m) else {
                    continue;
                };
                if !seen.insert(*m) {
                    continue;
                }
                out.push((*m, kind));
                if kind == ObjKind::Group {
                    queue.push_back(*m);
                }
            }
        }
        Some(out)
    }

    /// Declares every delta link issued so far expired; links issued from now on are not.
    pub fn expire_delta_links(&mut self, how: DeltaRefusal) {
        self.delta_refused_upto = Some((self.delta_seq, how));
        self.delta_seq += 1;
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
