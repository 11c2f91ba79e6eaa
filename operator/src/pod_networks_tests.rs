use pier_crds::EndpointStatus;
use pier_crds::pod::{PodNetwork, parse_networks, reason};

use super::*;

const UID: &str = "0b5c7e9e-3f0d-4c1a-9e2b-5d6f7a8b9c0d";
const EARLIER: &str = "11111111-3f0d-4c1a-9e2b-5d6f7a8b9c0d";

fn web() -> PodFacts<'static> {
    PodFacts {
        namespace: "default",
        name: "web",
        uid: UID,
        finished: false,
        deleting: false,
    }
}

fn entries(text: &str) -> Vec<PodNetwork> {
    parse_networks(text).expect("a valid annotation")
}

/// An Endpoint as the operator made it for `pod` (uid `uid`) with interface `interface`.
fn made(pod: &PodFacts<'_>, uid: &str, network: &str, interface: &str) -> Endpoint {
    let facts = PodFacts { uid, ..*pod };
    let entry = PodNetwork {
        network: network.into(),
        ..PodNetwork::default()
    };
    endpoint(
        &facts,
        &endpoint_name(pod.name, network),
        &entry,
        interface.into(),
    )
}

fn names(endpoints: &[Endpoint]) -> Vec<(String, String)> {
    endpoints
        .iter()
        .map(|e| {
            (
                e.metadata.name.clone().unwrap_or_default(),
                e.spec.interface.clone().unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn each_entry_becomes_an_endpoint_owned_by_the_pod() {
    let wanted =
        entries(r#"[{"network": "workshop-tage", "aliases": ["web"]}, {"network": "ch-open"}]"#);
    let plan = plan(&web(), Some(&wanted), &[]);
    assert_eq!(
        names(&plan.create),
        [
            ("web-workshop-tage".into(), "net1".into()),
            ("web-ch-open".into(), "net2".into())
        ]
    );
    let first = &plan.create[0];
    assert_eq!(first.metadata.namespace.as_deref(), Some("default"));
    assert_eq!(
        first
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(pod::POD_LABEL)),
        Some(&"web".to_owned())
    );
    let owner = made_for(&first.metadata).expect("owned by the pod");
    assert_eq!((owner.name.as_str(), owner.uid.as_str()), ("web", UID));
    assert_eq!(
        first.spec.target.pod.as_ref().map(|p| p.name.as_str()),
        Some("web")
    );
    assert_eq!(first.spec.aliases, Some(vec!["web".to_owned()]));
    assert_eq!(plan.wanted, ["web-workshop-tage", "web-ch-open"]);
    assert!(plan.update.is_empty() && plan.delete.is_empty() && plan.conflicts.is_empty());
}

#[test]
fn default_interfaces_skip_the_ones_taken() {
    // An explicit net1 for the second entry; a hand-written Endpoint already has net2.
    let mut by_hand = made(&web(), UID, "other", "net2");
    by_hand.metadata.owner_references = None;
    by_hand.metadata.name = Some("by-hand".into());
    let plan = plan(&web(), Some(&entries("a, b@net1, c")), &[&by_hand]);
    assert_eq!(
        names(&plan.create),
        [
            ("web-a".into(), "net3".into()),
            ("web-b".into(), "net1".into()),
            ("web-c".into(), "net4".into())
        ]
    );
}

#[test]
fn annotation_edits_connect_and_disconnect_and_keep_interfaces() {
    let a = made(&web(), UID, "a", "net1");
    let b = made(&web(), UID, "b", "net2");
    // b removed, c added: c takes the lowest free name, a keeps net1.
    let plan = plan(&web(), Some(&entries("a, c")), &[&a, &b]);
    assert_eq!(names(&plan.create), [("web-c".into(), "net2".into())]);
    assert_eq!(plan.delete, ["web-b"]);
    assert!(plan.update.is_empty(), "a is as the annotation says");
    // An alias added to a: its spec is replaced, its interface kept.
    let aliased = entries(r#"[{"network": "a", "aliases": ["web"]}]"#);
    let plan = super::plan(&web(), Some(&aliased), &[&a]);
    assert_eq!(names(&plan.update), [("web-a".into(), "net1".into())]);
    assert_eq!(plan.update[0].spec.aliases, Some(vec!["web".to_owned()]));
}

#[test]
fn an_unreadable_annotation_keeps_what_exists() {
    let a = made(&web(), UID, "a", "net1");
    let plan = plan(&web(), None, &[&a]);
    assert!(plan.create.is_empty() && plan.delete.is_empty() && plan.update.is_empty());
}

#[test]
fn a_finished_pod_loses_its_endpoints_and_a_terminating_one_keeps_them() {
    let a = made(&web(), UID, "a", "net1");
    let finished = PodFacts {
        finished: true,
        ..web()
    };
    let plan = plan(&finished, Some(&entries("a, b")), &[&a]);
    assert_eq!(plan.delete, ["web-a"]);
    assert!(plan.create.is_empty());
    let deleting = PodFacts {
        deleting: true,
        ..web()
    };
    let plan = super::plan(&deleting, Some(&entries("b")), &[&a]);
    assert!(plan.delete.is_empty() && plan.create.is_empty());
}

#[test]
fn a_predecessors_endpoints_go_and_a_stranger_is_a_conflict() {
    // The earlier Pod of this name (re-created StatefulSet Pod): its Endpoint is deleted, this
    // Pod's is created once the name is free.
    let earlier = made(&web(), EARLIER, "a", "net1");
    let plan = plan(&web(), Some(&entries("a")), &[&earlier]);
    assert_eq!(plan.delete, ["web-a"]);
    assert!(plan.create.is_empty() && plan.conflicts.is_empty());
    // A hand-written Endpoint holds the name: left alone, said on the Pod.
    let mut stranger = made(&web(), UID, "a", "net1");
    stranger.metadata.owner_references = None;
    let plan = super::plan(&web(), Some(&entries("a")), &[&stranger]);
    assert!(plan.delete.is_empty() && plan.create.is_empty());
    assert_eq!(plan.conflicts.len(), 1);
    assert!(plan.conflicts[0].contains("web-a"), "{:?}", plan.conflicts);
}

#[test]
fn only_the_pods_endpoints_are_its_own() {
    let mine = made(&web(), UID, "a", "net1");
    let mut elsewhere = made(&web(), UID, "a", "net1");
    elsewhere.metadata.namespace = Some("other".into());
    let mut another_pod = made(&web(), UID, "b", "net1");
    another_pod.spec.target.pod = Some(LocalObjectReference { name: "db".into() });
    let all = [mine, elsewhere, another_pod];
    let found = endpoints_of(&web(), &all);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].metadata.name.as_deref(), Some("web-a"));
}

fn with_conditions(mut endpoint: Endpoint, attached: Option<bool>) -> Endpoint {
    let mut status = EndpointStatus {
        network: endpoint.spec.network.clone(),
        interface: endpoint.spec.interface.clone(),
        ..EndpointStatus::default()
    };
    status.conditions.push(conditions::observe(
        &[],
        conditions::ALLOCATED,
        true,
        "Allocated",
        "ok",
        None,
    ));
    if let Some(attached) = attached {
        let why = if attached {
            "Attached"
        } else {
            "PodNetnsNotFound"
        };
        status.conditions.push(conditions::observe(
            &[],
            conditions::ATTACHED,
            attached,
            why,
            "no process of pod default/web found",
            None,
        ));
    }
    endpoint.status = Some(status);
    endpoint
}

#[test]
fn the_pod_is_attached_only_when_every_endpoint_is() {
    let a = with_conditions(made(&web(), UID, "a", "net1"), Some(true));
    let b = with_conditions(made(&web(), UID, "b", "net2"), None);
    let wanted = vec!["web-a".to_owned(), "web-b".to_owned()];

    let r = readiness(&[], &wanted, &[&a]);
    assert_eq!((r.attached, r.reason), (false, reason::ATTACHING));
    assert!(r.message.contains("web-b to be created"), "{}", r.message);

    let r = readiness(&[], &wanted, &[&a, &b]);
    assert_eq!((r.attached, r.reason), (false, reason::ATTACHING));
    assert!(
        r.message.contains("web-b is not attached (Allocated: ok)"),
        "{}",
        r.message
    );

    let b = with_conditions(made(&web(), UID, "b", "net2"), Some(false));
    let r = readiness(&[], &wanted, &[&a, &b]);
    assert!(r.message.contains("PodNetnsNotFound"), "{}", r.message);

    let mut b = with_conditions(made(&web(), UID, "b", "net2"), Some(true));
    if let Some(status) = b.status.as_mut() {
        status.ipv4_address = Some("172.18.0.2".into());
    }
    let r = readiness(&[], &wanted, &[&a, &b]);
    assert_eq!((r.attached, r.reason), (true, reason::ATTACHED));
    assert_eq!(r.message, "attached: net1 on a, net2 172.18.0.2 on b");
}

#[test]
fn problems_and_no_endpoints_keep_the_pod_unready() {
    let a = with_conditions(made(&web(), UID, "a", "net1"), Some(true));
    let r = readiness(&["lists network \"a\" twice".to_owned()], &[], &[&a]);
    assert_eq!((r.attached, r.reason), (false, reason::INVALID_ANNOTATION));
    assert!(r.message.contains("twice"));
    let r = readiness(&[], &[], &[]);
    assert_eq!((r.attached, r.reason), (false, reason::NO_ENDPOINTS));
}
