//! Deleting many links with one request.
//!
//! Each `RTM_DELLINK` of one link makes the kernel wait for RCU grace periods (`synchronize_net`
//! under the RTNL lock, about 20 ms here), so deleting 500 veths one by one takes 10 s however
//! they are sent. Asked to delete a link group (`ip link delete group N`), the kernel unregisters
//! every link of the group together (one `unregister_netdevice_many`) and pays the grace periods
//! once: 500 veths in about 0.5 s on the same machine. So the links a plan deletes are moved into
//! Pier's removal group ([`REMOVAL_LINK_GROUP`]; a cheap change each) and the group is deleted.
//!
//! Only Pier's links may go that way: before the group is deleted, one dump checks that every
//! link in it is one this deletion moved there. A link of Pier's left there by an earlier
//! deletion that did not finish is moved back to the default group (whether it is wanted is the
//! plan's to say); a link Pier does not own means another program uses the number, and then the
//! group is not deleted: the links go one by one, as before. A link that cannot be moved or whose
//! batch failed is deleted by itself too, so one link's failure is reported for that link only.

use std::collections::BTreeMap;

use pier_crds::names::REMOVAL_LINK_GROUP;

use super::diff::is_owned;
use crate::kernel::netlink::{self, Link, NetlinkError, Nl};

/// The default group of a link (`ip link set NAME group default`).
const DEFAULT_GROUP: u32 = 0;

/// A link a plan deletes, as the plan found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Doomed {
    pub index: u32,
    pub name: String,
}

/// How a link was deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Deleted {
    /// With its group, in one request that deleted this many links.
    InGroup(usize),
    /// By itself (or it was gone already).
    Alone,
}

/// Why the group was not deleted (the links then go one by one).
#[derive(Debug, thiserror::Error)]
enum GroupError {
    #[error("reading the links to check the removal group")]
    ReadBack(#[source] NetlinkError),
    #[error("links Pier does not own are in group {REMOVAL_LINK_GROUP}: {}", .0.join(", "))]
    Foreign(Vec<String>),
    #[error("moving a link of Pier's left in the removal group back to the default group")]
    Release(#[source] NetlinkError),
    #[error(transparent)]
    Delete(NetlinkError),
}

/// What the removal group holds besides the links this deletion moved there: Pier's links left
/// by an earlier deletion that did not finish (moved back out first) and links of others (the
/// group must then not be deleted).
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct GroupCheck {
    pub release: Vec<Doomed>,
    pub foreign: Vec<String>,
}

/// Checks the links of the removal group among `links` (a dump of the namespace) against the
/// links this deletion moved there (`moved`, name by index).
pub(super) fn check_group(links: &[Link], moved: &BTreeMap<u32, &str>) -> GroupCheck {
    let mut check = GroupCheck::default();
    for link in links.iter().filter(|l| l.group == REMOVAL_LINK_GROUP) {
        if moved.get(&link.index) == Some(&link.name.as_str()) {
            continue;
        }
        if is_owned(link) {
            check.release.push(Doomed {
                index: link.index,
                name: link.name.clone(),
            });
        } else {
            check.foreign.push(link.name.clone());
        }
    }
    check
}

/// Deletes `doomed`, in one request when there are several; one result per link, in order.
/// A link that is gone already counts as deleted.
pub(super) fn delete_links(host: &Nl, doomed: &[Doomed]) -> Vec<Result<Deleted, NetlinkError>> {
    let mut results: Vec<Option<Result<Deleted, NetlinkError>>> =
        doomed.iter().map(|_| None).collect();
    if doomed.len() > 1 {
        let mut moved: BTreeMap<u32, &str> = BTreeMap::new();
        for (link, result) in doomed.iter().zip(results.iter_mut()) {
            match host.set_group(link.index, &link.name, REMOVAL_LINK_GROUP) {
                Ok(()) => {
                    moved.insert(link.index, &link.name);
                }
                Err(error) if error.errno() == Some(netlink::ENODEV) => {
                    *result = Some(Ok(Deleted::Alone));
                }
                // Tried again by itself below, which reports why it fails.
                Err(_) => {}
            }
        }
        match delete_group(host, &moved) {
            Ok(()) => {
                for (link, result) in doomed.iter().zip(results.iter_mut()) {
                    if moved.contains_key(&link.index) {
                        *result = Some(Ok(Deleted::InGroup(moved.len())));
                    }
                }
            }
            Err(error) => tracing::warn!(
                error = %pier_runtime::error_chain(&error),
                "deleting {} links one by one",
                moved.len()
            ),
        }
    }
    doomed
        .iter()
        .zip(results)
        .map(|(link, result)| result.unwrap_or_else(|| delete_one(host, link)))
        .collect()
}

/// Deletes the removal group once it holds only the links in `moved` (of Pier's).
fn delete_group(host: &Nl, moved: &BTreeMap<u32, &str>) -> Result<(), GroupError> {
    if moved.is_empty() {
        return Ok(());
    }
    let links = host.links().map_err(GroupError::ReadBack)?;
    let check = check_group(&links, moved);
    if !check.foreign.is_empty() {
        return Err(GroupError::Foreign(check.foreign));
    }
    for stray in &check.release {
        match host.set_group(stray.index, &stray.name, DEFAULT_GROUP) {
            Err(error) if error.errno() != Some(netlink::ENODEV) => {
                return Err(GroupError::Release(error));
            }
            _ => tracing::info!(link = %stray.name, "moved out of the removal group"),
        }
    }
    match host.delete_group(REMOVAL_LINK_GROUP) {
        // No link left in the group: those moved were deleted meanwhile (their namespaces went).
        Err(error) if error.errno() == Some(netlink::ENODEV) => Ok(()),
        other => other.map_err(GroupError::Delete),
    }
}

fn delete_one(host: &Nl, link: &Doomed) -> Result<Deleted, NetlinkError> {
    match host.delete_link(link.index, &link.name) {
        Err(error) if error.errno() == Some(netlink::ENODEV) => Ok(Deleted::Alone),
        other => other.map(|()| Deleted::Alone),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::netlink::LinkKind;

    fn link(index: u32, name: &str, kind: LinkKind, group: u32) -> Link {
        Link {
            up: true,
            group,
            ..Link::new(index, name, kind)
        }
    }

    #[test]
    fn the_links_moved_are_all_the_group_may_hold() {
        let g = REMOVAL_LINK_GROUP;
        let links = [
            link(1, "lo", LinkKind::None, 0),
            link(7, "pv0000000001", LinkKind::Veth, g),
            link(8, "pv0000000002", LinkKind::Veth, g),
            link(9, "pv0000000003", LinkKind::Veth, 0),
        ];
        let moved = BTreeMap::from([(7, "pv0000000001"), (8, "pv0000000002")]);
        assert_eq!(check_group(&links, &moved), GroupCheck::default());
    }

    #[test]
    fn a_link_of_pier_left_in_the_group_is_released_and_a_foreign_one_stops_the_group() {
        let g = REMOVAL_LINK_GROUP;
        let links = [
            link(7, "pv0000000001", LinkKind::Veth, g),
            // Pier's, left by a deletion that did not finish.
            link(8, "pier-0a1b2c3d", LinkKind::Bridge, g),
            // Another program's links in the same group number.
            link(9, "eth7", LinkKind::Veth, g),
            link(10, "pv0000000004", LinkKind::Other("dummy".into()), g),
        ];
        let moved = BTreeMap::from([(7, "pv0000000001")]);
        let check = check_group(&links, &moved);
        assert_eq!(
            check.release,
            vec![Doomed {
                index: 8,
                name: "pier-0a1b2c3d".into()
            }]
        );
        assert_eq!(check.foreign, vec!["eth7", "pv0000000004"]);
    }

    #[test]
    fn an_index_now_held_by_another_name_is_not_the_link_moved() {
        let links = [link(7, "eth7", LinkKind::Veth, REMOVAL_LINK_GROUP)];
        let moved = BTreeMap::from([(7, "pv0000000001")]);
        assert_eq!(check_group(&links, &moved).foreign, vec!["eth7"]);
    }
}
