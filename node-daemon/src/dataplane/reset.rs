//! Removing everything Pier owns in a host namespace: its links (veths first, then VXLAN devices
//! with their entries, then bridges),
//! table `inet pier`, and its accepts in other firewalls.

use std::path::Path;

use super::DataplaneError;
use super::diff::is_owned;
use pier_runtime::error_chain as chain;

use super::report::{ObjectKey, Report};
use crate::firewall;
use crate::kernel::netlink::{self, Link, LinkKind, Nl};

pub(super) fn reset(host: &Nl, host_netns: Option<&Path>) -> Result<Report, DataplaneError> {
    let links = host.links().map_err(DataplaneError::ReadBack)?;
    let mut report = Report::default();
    let mut owned: Vec<&Link> = links.iter().filter(|l| is_owned(l)).collect();
    owned.sort_by_key(|l| match l.kind {
        LinkKind::Veth => 0,
        LinkKind::Vxlan => 1,
        _ => 2,
    });
    for link in owned {
        let object = ObjectKey::Link(link.name.clone());
        match host.delete_link(link.index, &link.name) {
            Ok(()) => report.changed(object, "deleted".to_owned()),
            Err(error) if error.errno() == Some(netlink::ENODEV) => {
                report.changed(object, "deleted".to_owned())
            }
            Err(error) => report.failed(object, chain(&error)),
        }
    }
    reset_firewalls(host_netns, &mut report);
    Ok(report)
}

fn reset_firewalls(host_netns: Option<&Path>, report: &mut Report) {
    match firewall::reset(host_netns) {
        Ok(()) => report.changed(ObjectKey::Firewall, "table inet pier deleted".to_owned()),
        Err(error) => report.failed(ObjectKey::Firewall, chain(&error)),
    }
    match firewall::iptables_reset(host_netns) {
        Ok(removed) => {
            for change in removed {
                report.changed(ObjectKey::Iptables, change.summary.join("; "));
            }
        }
        Err(error) => report.failed(ObjectKey::Iptables, chain(&error)),
    }
    match firewall::native_reset(host_netns) {
        Ok(removed) => report.changed(
            ObjectKey::Nftables,
            format!(
                "Pier's rules removed from {} chain(s) of other nftables tables",
                removed.len()
            ),
        ),
        Err(error) => report.failed(ObjectKey::Nftables, chain(&error)),
    }
}
