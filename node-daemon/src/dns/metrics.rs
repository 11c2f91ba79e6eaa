//! DNS answers by response code, for `pier_node_dns_queries_total{rcode}`. Every label set is
//! created up front and its counter kept, so counting an answer is one atomic add (no lookup, no
//! allocation on the query path).

use hickory_server::proto::op::ResponseCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// The response codes counted apart; any other is counted as `OTHER`.
const RCODES: [&str; 7] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "OTHER",
];

/// The label of a DNS answer.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RcodeLabels {
    /// The response code's mnemonic (`NOERROR`, `NXDOMAIN`, ...).
    pub rcode: &'static str,
}

/// Answers sent, by response code. Clones count into the same counters.
#[derive(Debug, Clone)]
pub struct DnsMetrics {
    family: Family<RcodeLabels, Counter>,
    by_rcode: [Counter; RCODES.len()],
}

impl Default for DnsMetrics {
    fn default() -> Self {
        let family = Family::<RcodeLabels, Counter>::default();
        let by_rcode = RCODES.map(|rcode| family.get_or_create(&RcodeLabels { rcode }).clone());
        DnsMetrics { family, by_rcode }
    }
}

/// Where `code` is counted in [`RCODES`].
fn index_of(code: ResponseCode) -> usize {
    match code {
        ResponseCode::NoError => 0,
        ResponseCode::FormErr => 1,
        ResponseCode::ServFail => 2,
        ResponseCode::NXDomain => 3,
        ResponseCode::NotImp => 4,
        ResponseCode::Refused => 5,
        _ => 6,
    }
}

impl DnsMetrics {
    /// Counts an answer sent with `code`.
    pub fn answered(&self, code: ResponseCode) {
        self.by_rcode[index_of(code)].inc();
    }

    /// Answers sent with `code` so far.
    pub fn count(&self, code: ResponseCode) -> u64 {
        self.by_rcode[index_of(code)].get()
    }

    /// Registers the counters in `registry` as `dns_queries` (a prefix comes from the caller).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "dns_queries",
            "DNS queries answered, by response code",
            self.family.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_code_with_every_label_listed_from_the_start() {
        let metrics = DnsMetrics::default();
        let clone = metrics.clone();
        clone.answered(ResponseCode::NXDomain);
        metrics.answered(ResponseCode::NoError);
        metrics.answered(ResponseCode::NoError);
        metrics.answered(ResponseCode::YXDomain);
        assert_eq!(metrics.count(ResponseCode::NoError), 2);
        assert_eq!(metrics.count(ResponseCode::NXDomain), 1);
        assert_eq!(metrics.count(ResponseCode::Refused), 0);
        let mut registry = Registry::default();
        metrics.register(registry.sub_registry_with_prefix("pier_node"));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        for line in [
            "pier_node_dns_queries_total{rcode=\"NOERROR\"} 2",
            "pier_node_dns_queries_total{rcode=\"NXDOMAIN\"} 1",
            "pier_node_dns_queries_total{rcode=\"SERVFAIL\"} 0",
            "pier_node_dns_queries_total{rcode=\"REFUSED\"} 0",
            "pier_node_dns_queries_total{rcode=\"OTHER\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
    }
}
