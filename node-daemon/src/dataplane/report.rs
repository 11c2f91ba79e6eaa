//! What an apply did, per object, under one typed key per kernel or API object.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

/// The object a plan step, a problem, a report line or a refusal is about.
///
/// Displayed as `KIND/NAME` (`endpoint/default/web`, `firewall/inet-pier`): that text is what
/// users and logs see, and keys sort as their text does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ObjectKey {
    /// A network's bridge, by network name.
    Network(String),
    /// An endpoint, by `NAMESPACE/NAME`.
    Endpoint(String),
    /// A PortPublish, by `NAMESPACE/NAME` (refusals only: its ports are in
    /// [`ObjectKey::Firewall`]).
    Ports(String),
    /// A link deleted by name.
    Link(String),
    /// `net.ipv4.ip_forward` of the node.
    Forwarding,
    /// Table `inet pier`.
    Firewall,
    /// Pier's accepts in other firewalls' iptables tables.
    Iptables,
    /// Pier's accepts in other programs' nftables tables (firewalld, `inet filter`).
    Nftables,
}

impl ObjectKey {
    /// The key of an endpoint.
    pub fn endpoint(id: &str) -> ObjectKey {
        ObjectKey::Endpoint(id.to_owned())
    }

    /// The key of a network.
    pub fn network(name: &str) -> ObjectKey {
        ObjectKey::Network(name.to_owned())
    }

    /// Every kind a key can have (the text before the `/`).
    pub const KINDS: [&'static str; 6] = [
        "network",
        "endpoint",
        "portpublish",
        "link",
        "node",
        "firewall",
    ];

    /// The key's kind: `network`, `endpoint`, `portpublish`, `link`, `node` or `firewall`.
    pub fn kind(&self) -> &'static str {
        self.parts().0
    }

    /// The text before and after the `/`. No kind is a prefix of another, so comparing these
    /// pairs orders keys as their whole text would.
    fn parts(&self) -> (&'static str, &str) {
        match self {
            ObjectKey::Network(name) => ("network", name),
            ObjectKey::Endpoint(id) => ("endpoint", id),
            ObjectKey::Ports(id) => ("portpublish", id),
            ObjectKey::Link(name) => ("link", name),
            ObjectKey::Forwarding => ("node", "forwarding"),
            ObjectKey::Firewall => ("firewall", "inet-pier"),
            ObjectKey::Iptables => ("firewall", "iptables"),
            ObjectKey::Nftables => ("firewall", "nftables"),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, name) = self.parts();
        write!(f, "{kind}/{name}")
    }
}

impl Ord for ObjectKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.parts().cmp(&other.parts())
    }
}

impl PartialOrd for ObjectKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The note on an endpoint whose namespace kept a default route of its own (Docker's `network
/// connect` to a running container keeps the container's gateway).
pub const OWN_DEFAULT_ROUTE_KEPT: &str = "default route left as it was: the namespace has its own";

/// The result for one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    InSync,
    Changed(Vec<String>),
    Failed(String),
}

/// What an apply did, per object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub objects: BTreeMap<ObjectKey, Outcome>,
    /// What the user should know about objects that are as desired, per object.
    pub notes: BTreeMap<ObjectKey, Vec<String>>,
}

impl Report {
    /// The objects that failed, with their messages.
    pub fn failures(&self) -> impl Iterator<Item = (&ObjectKey, &str)> {
        self.objects
            .iter()
            .filter_map(|(object, outcome)| match outcome {
                Outcome::Failed(message) => Some((object, message.as_str())),
                _ => None,
            })
    }

    /// Whether every object is now as desired.
    pub fn is_success(&self) -> bool {
        self.failures().next().is_none()
    }

    /// The outcome for `object`, if the apply looked at it.
    pub fn outcome(&self, object: &ObjectKey) -> Option<&Outcome> {
        self.objects.get(object)
    }

    pub(crate) fn changed(&mut self, object: ObjectKey, what: String) {
        match self.objects.entry(object).or_insert(Outcome::InSync) {
            Outcome::Changed(changes) => changes.push(what),
            outcome @ Outcome::InSync => *outcome = Outcome::Changed(vec![what]),
            Outcome::Failed(_) => {}
        }
    }

    pub(crate) fn failed(&mut self, object: ObjectKey, message: String) {
        self.objects.insert(object, Outcome::Failed(message));
    }

    /// Adds what a later run of the same apply did (its changes after this run's, its failures
    /// over this run's outcome).
    pub(crate) fn absorb(&mut self, later: Report) {
        for (object, outcome) in later.objects {
            match outcome {
                Outcome::InSync => {
                    self.objects.entry(object).or_insert(Outcome::InSync);
                }
                Outcome::Changed(changes) => {
                    for change in changes {
                        self.changed(object.clone(), change);
                    }
                }
                Outcome::Failed(message) => self.failed(object, message),
            }
        }
        for (object, notes) in later.notes {
            let mine = self.notes.entry(object).or_default();
            for note in notes {
                if !mine.contains(&note) {
                    mine.push(note);
                }
            }
        }
    }

    /// Adds a note on `object`.
    pub fn note(&mut self, object: ObjectKey, note: String) {
        self.notes.entry(object).or_default().push(note);
    }

    /// The notes on `object` (empty when none).
    pub fn notes_of(&self, object: &ObjectKey) -> &[String] {
        self.notes.get(object).map_or(&[], Vec::as_slice)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (object, outcome) in &self.objects {
            match outcome {
                Outcome::InSync => writeln!(f, "{object}: in sync")?,
                Outcome::Changed(changes) => writeln!(f, "{object}: {}", changes.join("; "))?,
                Outcome::Failed(message) => writeln!(f, "{object}: FAILED: {message}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read_and_sort_as_their_text() {
        let keys = [
            ObjectKey::Firewall,
            ObjectKey::Iptables,
            ObjectKey::Nftables,
            ObjectKey::Forwarding,
            ObjectKey::endpoint("default/web"),
            ObjectKey::endpoint("default/web-1"),
            ObjectKey::network("front"),
            ObjectKey::Ports("default/p".to_owned()),
            ObjectKey::Link("pv0123456789".to_owned()),
        ];
        let texts: Vec<String> = keys.iter().map(ToString::to_string).collect();
        assert_eq!(
            texts,
            [
                "firewall/inet-pier",
                "firewall/iptables",
                "firewall/nftables",
                "node/forwarding",
                "endpoint/default/web",
                "endpoint/default/web-1",
                "network/front",
                "portpublish/default/p",
                "link/pv0123456789",
            ]
        );
        let mut by_key = keys.to_vec();
        by_key.sort();
        let mut by_text = texts.clone();
        by_text.sort();
        let sorted: Vec<String> = by_key.iter().map(ToString::to_string).collect();
        assert_eq!(sorted, by_text);
    }
}
