//! A nested group tree read group by group: each group's direct members (⌈members/999⌉ pages
//! per group), breadth first from the root, each group and each object once, so a cycle ends
//! where it meets itself. Reading it this way costs at most one partial page per group more
//! than the flat `transitiveMembers` list and gives what that list does not: the group each
//! object sits in, and so the path from the root to it ("Berlin-Staff › SOC-Tier2"), the
//! shortest one when an object sits in several groups (breadth-first order finds it first).

use std::collections::{HashSet, VecDeque};

use crate::graph::{GraphClient, SelectorError, TreeMember};
use crate::model::ObjectId;

/// One group of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeGroup {
    pub id: ObjectId,
    /// The display name, or the id when the service gave none.
    pub name: String,
    /// The group it was first found in (`None` for the root).
    pub parent: Option<usize>,
}

/// Every group of the tree (the root first) and every other object in it, each with the
/// index of the group it was first found in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree {
    pub groups: Vec<TreeGroup>,
    pub members: Vec<(TreeMember, usize)>,
}

impl Tree {
    /// The names from the root down to group `at`, joined with ` › `.
    pub fn path(&self, at: usize) -> String {
        let mut names = Vec::new();
        let mut next = Some(at);
        // A parent always comes before its child, so this ends; the bound is a second guard.
        while let Some(i) = next
            && names.len() <= self.groups.len()
        {
            let Some(g) = self.groups.get(i) else { break };
            names.push(g.name.as_str());
            next = g.parent;
        }
        names.reverse();
        names.join(" › ")
    }

    /// The ids of every group in the tree, the root first.
    pub fn group_ids(&self) -> Vec<ObjectId> {
        self.groups.iter().map(|g| g.id.clone()).collect()
    }
}

/// Reads the tree under `root`. The root's name is read first: a deleted or forbidden root
/// fails here. A nested group that cannot be read fails the whole read, so a partial tree
/// never stands for the whole one.
pub async fn read_tree(graph: &GraphClient, root: &ObjectId) -> Result<Tree, SelectorError> {
    let root_name = graph
        .group_name(root)
        .await?
        .unwrap_or_else(|| root.to_string());
    let mut tree = Tree {
        groups: vec![TreeGroup {
            id: root.clone(),
            name: root_name,
            parent: None,
        }],
        members: Vec::new(),
    };
    let mut seen_groups: HashSet<ObjectId> = HashSet::from([root.clone()]);
    let mut seen: HashSet<String> = HashSet::new();
    let mut queue = VecDeque::from([0usize]);
    while let Some(at) = queue.pop_front() {
        let id = tree.groups[at].id.clone();
        for member in graph.direct_members(&id).await? {
            match member {
                TreeMember::Group { id, name } => {
                    if seen_groups.insert(id.clone()) {
                        tree.groups.push(TreeGroup {
                            name: name.unwrap_or_else(|| id.to_string()),
                            id,
                            parent: Some(at),
                        });
                        queue.push_back(tree.groups.len() - 1);
                    }
                }
                other => {
                    if seen.insert(member_key(&other)) {
                        tree.members.push((other, at));
                    }
                }
            }
        }
    }
    Ok(tree)
}

/// What makes two objects of the tree the same one: the object id.
fn member_key(m: &TreeMember) -> String {
    match m {
        TreeMember::User { id, .. } => id.to_string(),
        TreeMember::Device { id, .. } => id.to_string(),
        TreeMember::Group { id, .. } => id.to_string(),
        TreeMember::Other { id, .. } => id.to_ascii_lowercase(),
    }
}
