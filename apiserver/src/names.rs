//! Object names as kube-apiserver accepts them: a DNS-1123 label for namespaces, a DNS-1123
//! subdomain for everything else Pier serves (custom resources, pods, nodes, events, leases,
//! CRDs), and the names `generateName` produces. The messages are the real server's word for word,
//! so kubectl prints what it prints against a cluster.

use crate::error::Cause;

/// Longest DNS-1123 label (a namespace name).
pub const LABEL_MAX: usize = 63;
/// Longest DNS-1123 subdomain (most object names).
pub const SUBDOMAIN_MAX: usize = 253;
/// Random characters `generateName` appends.
pub const GENERATED_SUFFIX_LEN: usize = 5;
/// Longest `generateName` prefix kept: the generated name stays a valid label.
pub const GENERATE_PREFIX_MAX: usize = LABEL_MAX - GENERATED_SUFFIX_LEN;

const LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric \
    characters or '-', and must start and end with an alphanumeric character";
const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case \
    alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";

/// Which rule an object's name follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// Namespaces.
    Label,
    /// Everything else.
    Subdomain,
}

fn max_len_error(max: usize) -> String {
    format!("must be no more than {max} characters")
}

/// apimachinery's `RegexError`, examples included (its odd double space too).
fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    let examples: Vec<String> = examples.iter().map(|e| format!("'{e}', ")).collect();
    format!(
        "{msg} (e.g. {}regex used for validation is '{fmt}')",
        examples.join(" or ")
    )
}

fn subdomain_fmt() -> String {
    format!("{LABEL_FMT}(\\.{LABEL_FMT})*")
}

fn is_label_shape(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => {
            alnum(first) && alnum(last) && b.iter().all(|c| alnum(c) || *c == b'-')
        }
        _ => false,
    }
}

fn is_subdomain_shape(s: &str) -> bool {
    s.split('.').all(is_label_shape)
}

/// What is wrong with `value` as a DNS-1123 label (empty: nothing).
pub fn dns1123_label(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > LABEL_MAX {
        errs.push(max_len_error(LABEL_MAX));
    }
    if !is_label_shape(value) {
        if is_subdomain_shape(value) {
            errs.push("must not contain dots".into());
        } else {
            errs.push(regex_error(LABEL_MSG, LABEL_FMT, &["my-name", "123-abc"]));
        }
    }
    errs
}

/// What is wrong with `value` as a DNS-1123 subdomain (empty: nothing).
pub fn dns1123_subdomain(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > SUBDOMAIN_MAX {
        errs.push(max_len_error(SUBDOMAIN_MAX));
    }
    if !is_subdomain_shape(value) {
        errs.push(regex_error(
            SUBDOMAIN_MSG,
            &subdomain_fmt(),
            &["example.com"],
        ));
    }
    errs
}

/// What is wrong with `name` under `rule`. A `generateName` prefix may end in '-': like
/// apimachinery's `maskTrailingDash`, its last two characters become one 'a' before the check.
fn check(rule: NameRule, name: &str, prefix: bool) -> Vec<String> {
    let masked;
    let name = match name.len().checked_sub(2) {
        Some(cut) if prefix && name.ends_with('-') && name.is_char_boundary(cut) => {
            masked = format!("{}a", &name[..cut]);
            masked.as_str()
        }
        _ => name,
    };
    match rule {
        NameRule::Label => dns1123_label(name),
        NameRule::Subdomain => dns1123_subdomain(name),
    }
}

/// The name `generateName` gives: the prefix (cut to [`GENERATE_PREFIX_MAX`]) and `suffix`.
pub fn generated(prefix: &str, suffix: &str) -> String {
    let mut cut = prefix.len().min(GENERATE_PREFIX_MAX);
    while !prefix.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}", &prefix[..cut])
}

fn quoted(v: &str) -> String {
    serde_json::Value::String(v.to_string()).to_string()
}

/// The 422 causes for a new object's `metadata.generateName` (if given) and `metadata.name`.
pub fn causes(rule: NameRule, name: &str, generate_name: Option<&str>) -> Vec<Cause> {
    let invalid = |field: &str, value: &str, msg: String| Cause {
        reason: "FieldValueInvalid".into(),
        field: field.into(),
        message: format!("Invalid value: {}: {msg}", quoted(value)),
    };
    let mut out = Vec::new();
    if let Some(g) = generate_name.filter(|g| !g.is_empty()) {
        out.extend(
            check(rule, g, true)
                .into_iter()
                .map(|m| invalid("metadata.generateName", g, m)),
        );
    }
    out.extend(
        check(rule, name, false)
            .into_iter()
            .map(|m| invalid("metadata.name", name, m)),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subdomains_as_kubernetes_checks_them() {
        for ok in ["a", "bad-name", "a.b.c", "0abc", "x".repeat(253).as_str()] {
            assert!(dns1123_subdomain(ok).is_empty(), "{ok}");
        }
        for bad in ["", "Bad_Name", "-a", "a-", "a..b", ".a", "a.", "a_b", "ä"] {
            assert!(!dns1123_subdomain(bad).is_empty(), "{bad:?}");
        }
        assert_eq!(
            dns1123_subdomain(&"x".repeat(254)),
            vec!["must be no more than 253 characters"]
        );
        assert_eq!(
            dns1123_subdomain("Bad_Name"),
            vec![
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric \
                 characters, '-' or '.', and must start and end with an alphanumeric character \
                 (e.g. 'example.com', regex used for validation is \
                 '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
            ]
        );
    }

    #[test]
    fn labels_as_kubernetes_checks_them() {
        assert!(dns1123_label("kube-system").is_empty());
        assert_eq!(dns1123_label("a.b"), vec!["must not contain dots"]);
        assert_eq!(
            dns1123_label(&"x".repeat(64)),
            vec!["must be no more than 63 characters"]
        );
        assert_eq!(
            dns1123_label("Bad_NS"),
            vec![
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters \
                 or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  \
                 or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
            ]
        );
    }

    #[test]
    fn causes_name_the_field_and_value() {
        let c = causes(NameRule::Subdomain, "Bad_Name", None);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].field, "metadata.name");
        assert_eq!(c[0].reason, "FieldValueInvalid");
        assert!(
            c[0].message
                .starts_with("Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"),
            "{}",
            c[0].message
        );
        // A prefix may end in '-'; a bad one is reported on generateName too.
        assert!(causes(NameRule::Subdomain, "web-x7k2p", Some("web-")).is_empty());
        assert!(causes(NameRule::Subdomain, "x-x7k2p", Some("x-")).is_empty());
        assert!(!causes(NameRule::Subdomain, "x.x7k2p", Some("x.")).is_empty());
        let c = causes(NameRule::Subdomain, "Web-x7k2p", Some("Web-"));
        let fields: Vec<&str> = c.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, vec!["metadata.generateName", "metadata.name"]);
        assert!(
            causes(NameRule::Label, "a.b", None)[0]
                .message
                .ends_with("must not contain dots")
        );
    }

    #[test]
    fn generated_names_stay_within_a_label() {
        let long = "p".repeat(100);
        let n = generated(&long, "abcde");
        assert_eq!(n.len(), LABEL_MAX);
        assert!(dns1123_label(&n).is_empty());
        assert_eq!(generated("web-", "abcde"), "web-abcde");
    }
}
