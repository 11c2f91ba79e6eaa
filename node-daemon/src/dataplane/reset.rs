//! Removing everything Pier owns in a host namespace: its links (veths, VXLAN devices with their
//! entries, bridges: in one request),
//! table `inet pier`, and its accepts in other firewalls.

use std::path::Path;

use super::DataplaneError;
use super::diff::is_owned;
use pier_runtime::error_chain as chain;

use super::bulk::{self, Deleted, Doomed};
use super::report::{ObjectKey, Report};
use crate::firewall;
use crate::kernel::netlink::Nl;

pub(super) fn reset(host: &Nl, host_netns: Option<&Path>) -> Result<Report, DataplaneError> {
    let links = host.links().map_err(DataplaneError::ReadBack)?;
    let mut report = Report::default();
    let doomed: Vec<Doomed> = links
        .iter()
        .filter(|l| is_owned(l))
        .map(|l| Doomed {
            index: l.index,
            name: l.name.clone(),
        })
        .collect();
    // Together (see `bulk`): the kernel takes a bridge's ports and VXLAN device with it in
    // whatever order they come.
    for (link, result) in doomed.iter().zip(bulk::delete_links(host, &doomed)) {
        let object = ObjectKey::Link(link.name.clone());
        match result {
            Ok(Deleted::InGroup(links)) => {
                report.changed(object, format!("deleted, one request for {links} links"));
            }
            Ok(Deleted::Alone) => report.changed(object, "deleted".to_owned()),
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
