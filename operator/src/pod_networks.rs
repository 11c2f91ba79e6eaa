//! What a Pod's `pier.dev/networks` annotation asks of its Endpoints (pure): which to create,
//! update and delete, and the Pod condition `pier.dev/attached` its Endpoints add up to.

use std::collections::{BTreeMap, BTreeSet};

use pier_crds::endpoint::LocalObjectReference;
use pier_crds::pod::{self, PodNetwork, endpoint_name, made_for, owner_reference, reason};
use pier_crds::{Endpoint, EndpointSpec, EndpointTarget, conditions};

use crate::allocations::{TargetKind, next_free_interface};

/// What the controller knows of the Pod.
#[derive(Debug, Clone, Copy)]
pub struct PodFacts<'a> {
    /// Its namespace.
    pub namespace: &'a str,
    /// Its name.
    pub name: &'a str,
    /// Its uid: an Endpoint made for an earlier Pod of the same name is not this one's.
    pub uid: &'a str,
    /// Succeeded or Failed: its sandbox, and so its namespace, is gone.
    pub finished: bool,
    /// Being deleted: it keeps its network until it is gone.
    pub deleting: bool,
}

/// The writes that make a Pod's Endpoints what its annotation says.
#[derive(Debug, Default)]
pub struct Plan {
    /// Endpoints to create.
    pub create: Vec<Endpoint>,
    /// Endpoints whose spec to replace (an entry's aliases or addresses changed).
    pub update: Vec<Endpoint>,
    /// Endpoints to delete: entries removed, the Pod finished, or made for an earlier Pod.
    pub delete: Vec<String>,
    /// Entries that cannot be had (their Endpoint's name is taken by another one).
    pub conflicts: Vec<String>,
    /// The Endpoints the annotation asks for, by name.
    pub wanted: Vec<String>,
}

/// The Endpoints of the Pod's namespace that target it (made for it or written by hand).
pub fn endpoints_of<'a>(
    pod: &PodFacts<'_>,
    endpoints: impl IntoIterator<Item = &'a Endpoint>,
) -> Vec<&'a Endpoint> {
    endpoints
        .into_iter()
        .filter(|e| e.metadata.namespace.as_deref() == Some(pod.namespace))
        .filter(|e| {
            e.spec
                .target
                .pod
                .as_ref()
                .is_some_and(|p| p.name == pod.name)
        })
        .collect()
}

/// Whether `endpoint` was made for this Pod (this uid), or for an earlier one of its name.
fn made_for_this(pod: &PodFacts<'_>, endpoint: &Endpoint) -> Option<bool> {
    let owner = made_for(&endpoint.metadata)?;
    (owner.name == pod.name).then(|| owner.uid == pod.uid)
}

/// The plan for `pod` with annotation entries `wanted` (`None`: the annotation cannot be read,
/// so what exists stays as it is), given the Endpoints that target it (see [`endpoints_of`]).
pub fn plan(pod: &PodFacts<'_>, wanted: Option<&[PodNetwork]>, mine: &[&Endpoint]) -> Plan {
    let mut plan = Plan::default();
    let by_name: BTreeMap<&str, &Endpoint> = mine
        .iter()
        .filter_map(|e| Some((e.metadata.name.as_deref()?, *e)))
        .collect();
    // Made for an earlier Pod of this name (a StatefulSet's Pod re-created): never this one's.
    plan.delete.extend(
        by_name
            .iter()
            .filter(|(_, e)| made_for_this(pod, e) == Some(false))
            .map(|(name, _)| (*name).to_owned()),
    );
    // A finished Pod's namespace is gone: nothing of its annotation stays.
    let entries = match wanted {
        _ if pod.finished => &[][..],
        Some(entries) => entries,
        None => return plan,
    };
    if pod.deleting && !pod.finished {
        // A terminating Pod keeps its network to the end, and gets nothing new.
        return plan;
    }
    let keep: BTreeSet<String> = entries
        .iter()
        .map(|entry| endpoint_name(pod.name, &entry.network))
        .collect();
    plan.delete.extend(
        by_name
            .iter()
            .filter(|(name, e)| made_for_this(pod, e) == Some(true) && !keep.contains(**name))
            .map(|(name, _)| (*name).to_owned()),
    );
    // The names already used in the Pod: those of its remaining Endpoints and every entry's own.
    let mut used: BTreeSet<String> = mine
        .iter()
        .filter(|e| {
            !plan
                .delete
                .iter()
                .any(|d| Some(d.as_str()) == e.metadata.name.as_deref())
        })
        .filter_map(|e| interface_of(e))
        .chain(entries.iter().filter_map(|entry| entry.interface.clone()))
        .collect();
    for entry in entries {
        let name = endpoint_name(pod.name, &entry.network);
        plan.wanted.push(name.clone());
        match by_name.get(name.as_str()) {
            None => {
                let interface = entry.interface.clone().unwrap_or_else(|| {
                    next_free_interface(TargetKind::Pod, used.iter().map(String::as_str))
                });
                used.insert(interface.clone());
                plan.create.push(endpoint(pod, &name, entry, interface));
            }
            Some(existing) => match made_for_this(pod, existing) {
                Some(true) => {
                    let interface = entry
                        .interface
                        .clone()
                        .or_else(|| existing.spec.interface.clone())
                        .unwrap_or_default();
                    let desired = endpoint(pod, &name, entry, interface);
                    if desired.spec != existing.spec {
                        plan.update.push(desired);
                    }
                }
                // Its predecessor's, being deleted: this Pod's comes once it is gone.
                Some(false) => {}
                None => plan.conflicts.push(format!(
                    "endpoint {name} (for network {}) already exists and was not made for this Pod",
                    entry.network
                )),
            },
        }
    }
    plan
}

/// The interface an Endpoint has or asks for.
fn interface_of(endpoint: &Endpoint) -> Option<String> {
    endpoint
        .spec
        .interface
        .clone()
        .or_else(|| endpoint.status.as_ref().and_then(|s| s.interface.clone()))
}

/// The Endpoint made for `pod` from one annotation entry.
fn endpoint(pod: &PodFacts<'_>, name: &str, entry: &PodNetwork, interface: String) -> Endpoint {
    let mut endpoint = Endpoint::new(
        name,
        EndpointSpec {
            network: Some(entry.network.clone()),
            target: EndpointTarget {
                pod: Some(LocalObjectReference {
                    name: pod.name.to_owned(),
                }),
                ..EndpointTarget::default()
            },
            interface: Some(interface),
            ipv4_address: entry.ipv4_address.clone(),
            ipv6_address: entry.ipv6_address.clone(),
            mac_address: entry.mac_address.clone(),
            aliases: entry.aliases.clone(),
        },
    );
    endpoint.metadata.namespace = Some(pod.namespace.to_owned());
    // A label value holds at most 63 characters; longer Pod names are found by owner reference.
    if pod.name.len() <= 63 {
        endpoint.metadata.labels = Some(BTreeMap::from([(
            pod::POD_LABEL.to_owned(),
            pod.name.to_owned(),
        )]));
    }
    endpoint.metadata.owner_references = Some(vec![owner_reference(pod.name, pod.uid)]);
    endpoint
}

/// The Pod condition `pier.dev/attached`: status, reason, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// Whether every Endpoint of the Pod is attached.
    pub attached: bool,
    /// Why (a [`reason`]).
    pub reason: &'static str,
    /// What is attached, or what is missing and why.
    pub message: String,
}

impl Readiness {
    fn waiting(reason: &'static str, message: String) -> Readiness {
        Readiness {
            attached: false,
            reason,
            message,
        }
    }
}

/// What the Pod's Endpoints add up to. `problems`: why the annotation (or part of it) cannot be
/// had; `wanted`: the Endpoints it asks for, which may not exist yet; `mine`: those that target
/// the Pod now.
pub fn readiness(problems: &[String], wanted: &[String], mine: &[&Endpoint]) -> Readiness {
    if !problems.is_empty() {
        return Readiness::waiting(reason::INVALID_ANNOTATION, problems.join("; "));
    }
    let existing: BTreeSet<&str> = mine
        .iter()
        .filter_map(|e| e.metadata.name.as_deref())
        .collect();
    if let Some(missing) = wanted.iter().find(|w| !existing.contains(w.as_str())) {
        return Readiness::waiting(
            reason::ATTACHING,
            format!("waiting for endpoint {missing} to be created"),
        );
    }
    if mine.is_empty() {
        return Readiness::waiting(
            reason::NO_ENDPOINTS,
            "no Endpoint attaches this Pod: list networks in its pier.dev/networks annotation"
                .to_owned(),
        );
    }
    let mut attached = Vec::new();
    for endpoint in mine {
        let name = endpoint.metadata.name.as_deref().unwrap_or_default();
        let status = endpoint.status.clone().unwrap_or_default();
        if !conditions::is_true(&status.conditions, conditions::ATTACHED) {
            // The node's word if it has spoken, else the operator's (waiting for a network...).
            let why = conditions::find(&status.conditions, conditions::ATTACHED)
                .or_else(|| conditions::find(&status.conditions, conditions::ALLOCATED))
                .map(|c| format!("{}: {}", c.reason, c.message))
                .unwrap_or_else(|| "not allocated yet".to_owned());
            return Readiness::waiting(
                reason::ATTACHING,
                format!("endpoint {name} is not attached ({why})"),
            );
        }
        let address = status
            .ipv4_address
            .map(|a| format!(" {a}"))
            .unwrap_or_default();
        attached.push(format!(
            "{}{address} on {}",
            status.interface.unwrap_or_default(),
            status.network.unwrap_or_default()
        ));
    }
    attached.sort();
    Readiness {
        attached: true,
        reason: reason::ATTACHED,
        message: format!("attached: {}", attached.join(", ")),
    }
}

#[cfg(test)]
#[path = "pod_networks_tests.rs"]
mod tests;
