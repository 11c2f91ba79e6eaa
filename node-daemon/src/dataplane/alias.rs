//! The host veth's alias: the fingerprint of the configuration its attach completed, and what
//! that attach kept (see the module docs of [`super`]).

/// Appended to a host veth's fingerprint alias when its attach kept the namespace's own default
/// route, so that an in-sync plan still knows it (and says so) without entering the namespace.
const OWN_DEFAULT_ALIAS: &str = "own-default";

/// What a host veth's alias says about its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AliasState {
    AsPlanned,
    /// The namespace had a default route of its own, which stays.
    OwnDefaultKept,
}

/// Reads a host veth's `alias` against the `fingerprint` of the desired configuration; `None`
/// when it is not that configuration's.
pub fn read_alias(alias: &str, fingerprint: &str) -> Option<AliasState> {
    match alias.strip_prefix(fingerprint)? {
        "" => Some(AliasState::AsPlanned),
        rest if rest.strip_prefix(' ') == Some(OWN_DEFAULT_ALIAS) => {
            Some(AliasState::OwnDefaultKept)
        }
        _ => None,
    }
}

/// The alias written when an attach of `fingerprint` completed as `state`.
pub fn alias(fingerprint: &str, state: AliasState) -> String {
    match state {
        AliasState::AsPlanned => fingerprint.to_owned(),
        AliasState::OwnDefaultKept => format!("{fingerprint} {OWN_DEFAULT_ALIAS}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::names::fingerprint;

    #[test]
    fn an_alias_is_the_fingerprint_and_what_the_attach_kept() {
        let print = fingerprint("x");
        assert_eq!(read_alias(&print, &print), Some(AliasState::AsPlanned));
        assert_eq!(
            read_alias(&alias(&print, AliasState::OwnDefaultKept), &print),
            Some(AliasState::OwnDefaultKept)
        );
        assert_eq!(
            read_alias(&format!("{print} {OWN_DEFAULT_ALIAS}"), &print),
            Some(AliasState::OwnDefaultKept)
        );
        assert_eq!(read_alias(&fingerprint("y"), &print), None);
        assert_eq!(read_alias(&format!("{print} other"), &print), None);
        assert_eq!(
            read_alias(&format!("{print}{OWN_DEFAULT_ALIAS}"), &print),
            None
        );
        assert_eq!(read_alias("", &print), None);
    }
}
