//! The hickory-server request handler: asker → view → local answer, NXDOMAIN, REFUSED, or a
//! forwarded answer. One handler (cheap to clone) serves every listener.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

use super::forward::{Counters, ForwardError, Forwarder};
use super::metrics::DnsMetrics;
use super::views::{Resolution, Views};

/// What every listener shares: the current views, the forwarder, the counters.
#[derive(Debug)]
pub struct Shared {
    views: RwLock<Arc<Views>>,
    /// Bumped on every swap, so hot loops can keep their own `Arc` and refresh only on change.
    generation: AtomicU64,
    pub forwarder: Forwarder,
    pub counters: Counters,
    /// Answers by response code.
    pub rcodes: DnsMetrics,
}

impl Shared {
    pub fn new(views: Views, forwarder: Forwarder, rcodes: DnsMetrics) -> Shared {
        Shared {
            views: RwLock::new(Arc::new(views)),
            generation: AtomicU64::new(0),
            forwarder,
            counters: Counters::default(),
            rcodes,
        }
    }

    /// The views now in force (a query keeps the ones it started with).
    pub fn views(&self) -> Arc<Views> {
        self.views
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Swaps in new views: the next query sees them.
    pub fn set_views(&self, views: Views) {
        let new = Arc::new(views);
        let old = std::mem::replace(
            &mut *self
                .views
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            new,
        );
        self.generation.fetch_add(1, Ordering::Release);
        // Freeing thousands of records happens here, not while queries wait on the lock.
        drop(old);
    }

    /// The generation of the views now in force.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

/// The request handler registered with every hickory `Server`.
#[derive(Debug, Clone)]
pub struct PierHandler {
    shared: Arc<Shared>,
}

impl PierHandler {
    pub fn new(shared: Arc<Shared>) -> PierHandler {
        PierHandler { shared }
    }

    /// Counts a query dropped without an answer (malformed input, a response sent to us).
    pub fn count_dropped(&self) {
        Counters::bump(&self.shared.counters.dropped);
    }

    /// Counts answers that left in segmented datagrams.
    pub fn count_segmented(&self, answers: usize) {
        if answers > 0 {
            let answers = u64::try_from(answers).unwrap_or(u64::MAX);
            Counters::add(&self.shared.counters.segmented, answers);
        }
    }

    /// Counts a received query.
    pub fn count_query(&self) {
        Counters::bump(&self.shared.counters.queries);
    }

    /// Counts a query answered locally outside the handler (the wire fast path).
    pub fn count_local_answer(&self) {
        Counters::bump(&self.shared.counters.queries);
        Counters::bump(&self.shared.counters.local);
        self.shared.rcodes.answered(ResponseCode::NoError);
    }

    /// The shared views and their generation.
    pub fn shared(&self) -> &Shared {
        &self.shared
    }
}

/// The response metadata for a request, with our flags: we answer recursively (we forward).
fn response_metadata(request: &Metadata, code: ResponseCode) -> Metadata {
    let mut metadata = Metadata::response_from_request(request);
    metadata.recursion_available = true;
    metadata.response_code = code;
    metadata
}

/// What to report when nothing could be sent.
fn unsent(request: &Metadata, code: ResponseCode) -> ResponseInfo {
    ResponseInfo::from(Header {
        metadata: response_metadata(request, code),
        counts: HeaderCounts::default(),
    })
}

#[async_trait::async_trait]
impl RequestHandler for PierHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response: R,
    ) -> ResponseInfo {
        self.count_query();
        match self.answer(request, response, false).await {
            Ok(info) => info,
            // Not reached: only `local_only` hands the responder back.
            Err(_) => unsent(&request.metadata, ResponseCode::ServFail),
        }
    }
}

impl PierHandler {
    /// Answers `request`. With `local_only`, a query that must go upstream is not answered:
    /// `Err(response)` hands the responder back so the caller can answer it on a task of its own.
    pub async fn answer<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response: R,
        local_only: bool,
    ) -> Result<ResponseInfo, R> {
        let counters = &self.shared.counters;
        let metadata = &request.metadata;
        // Answer with the client's EDNS payload size, so UDP answers fit what it can take.
        let edns = request.edns.as_ref().map(|theirs| {
            let mut ours = Edns::new();
            ours.set_max_payload(theirs.max_payload().max(512));
            ours
        });
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(edns) = &edns {
            builder.edns(edns);
        }
        let query = match (metadata.op_code, request.request_info()) {
            (OpCode::Query, Ok(info)) => info.query,
            (OpCode::Query, Err(_)) => {
                self.shared.rcodes.answered(ResponseCode::FormErr);
                let message = builder.error_msg(metadata, ResponseCode::FormErr);
                return Ok(send(&mut response, message, metadata).await);
            }
            _ => {
                self.shared.rcodes.answered(ResponseCode::NotImp);
                let message = builder.error_msg(metadata, ResponseCode::NotImp);
                return Ok(send(&mut response, message, metadata).await);
            }
        };

        let views = self.shared.views();
        let resolution = views.resolve(request.src().ip(), query.name(), query.query_type());
        match resolution {
            Resolution::Refused => {
                Counters::bump(&counters.refused);
                self.shared.rcodes.answered(ResponseCode::Refused);
                let message = builder.error_msg(metadata, ResponseCode::Refused);
                Ok(send(&mut response, message, metadata).await)
            }
            Resolution::NxDomain => {
                Counters::bump(&counters.nxdomain);
                self.shared.rcodes.answered(ResponseCode::NXDomain);
                let mut header = response_metadata(metadata, ResponseCode::NXDomain);
                header.authoritative = true;
                let message = builder.build_no_records(header);
                Ok(send(&mut response, message, metadata).await)
            }
            Resolution::Local(records) => {
                Counters::bump(&counters.local);
                self.shared.rcodes.answered(ResponseCode::NoError);
                let mut header = response_metadata(metadata, ResponseCode::NoError);
                header.authoritative = true;
                let message = builder.build(header, records.iter(), [], [], []);
                Ok(send(&mut response, message, metadata).await)
            }
            Resolution::Forward if local_only => Err(response),
            Resolution::Forward => {
                Counters::bump(&counters.forwarded);
                let info = match self.shared.forwarder.forward(request.as_slice()).await {
                    Ok(answer) => {
                        let mut header = answer.metadata;
                        header.id = metadata.id;
                        header.recursion_available = true;
                        self.shared.rcodes.answered(header.response_code);
                        let message = builder.build(
                            header,
                            answer.answers.iter(),
                            answer.authorities.iter(),
                            [],
                            answer.additionals.iter(),
                        );
                        send(&mut response, message, metadata).await
                    }
                    Err(ForwardError::Overloaded) => {
                        // Shed load: no answer, the client retries; counted so it shows.
                        Counters::bump(&counters.dropped);
                        unsent(metadata, ResponseCode::ServFail)
                    }
                    Err(error) => {
                        tracing::debug!(error = %error, "forwarding failed");
                        Counters::bump(&counters.servfail);
                        self.shared.rcodes.answered(ResponseCode::ServFail);
                        let message = builder.error_msg(metadata, ResponseCode::ServFail);
                        send(&mut response, message, metadata).await
                    }
                };
                Ok(info)
            }
        }
    }
}

async fn send<'a, R: ResponseHandler>(
    response: &mut R,
    message: hickory_server::zone_handler::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a hickory_server::proto::rr::Record> + Send + 'a,
        impl Iterator<Item = &'a hickory_server::proto::rr::Record> + Send + 'a,
        impl Iterator<Item = &'a hickory_server::proto::rr::Record> + Send + 'a,
        impl Iterator<Item = &'a hickory_server::proto::rr::Record> + Send + 'a,
    >,
    request: &Metadata,
) -> ResponseInfo {
    match response.send_response(message).await {
        Ok(info) => info,
        Err(error) => {
            tracing::debug!(error = %error, "sending a DNS response failed");
            unsent(request, ResponseCode::ServFail)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Mutex;

    use hickory_server::net::NetError;
    use hickory_server::net::xfer::Protocol;
    use hickory_server::proto::op::{Message, MessageType, Query};
    use hickory_server::proto::rr::{Name, Record, RecordType};
    use hickory_server::proto::serialize::binary::BinEncoder;
    use hickory_server::zone_handler::MessageResponse;

    use super::*;
    use crate::dns::forward::UpstreamConfig;
    use crate::dns::sockets::NetnsSockets;
    use crate::dns::wire;
    use crate::state::{
        Attachment, BridgeAttachment, Driver, EndpointState, Netns, NetworkState, NodeState,
    };

    /// A responder that keeps the encoded answer.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    #[async_trait::async_trait]
    impl ResponseHandler for Capture {
        async fn send_response<'a>(
            &mut self,
            response: MessageResponse<
                '_,
                'a,
                impl Iterator<Item = &'a Record> + Send + 'a,
                impl Iterator<Item = &'a Record> + Send + 'a,
                impl Iterator<Item = &'a Record> + Send + 'a,
                impl Iterator<Item = &'a Record> + Send + 'a,
            >,
        ) -> Result<ResponseInfo, NetError> {
            let mut bytes = Vec::new();
            let info = response.destructive_emit(&mut BinEncoder::new(&mut bytes))?;
            *self.0.lock().expect("capture lock") = bytes;
            Ok(info)
        }
    }

    fn endpoint(
        name: &str,
        address: [u8; 4],
        address6: Option<&str>,
        aliases: &[&str],
    ) -> EndpointState {
        EndpointState {
            id: format!("default/{name}"),
            uid: format!("uid-{name}"),
            name: name.into(),
            aliases: aliases.iter().map(|a| (*a).to_owned()).collect(),
            netns: Netns::Named(name.into()),
            attachment: Attachment::Bridge(BridgeAttachment {
                network: "n".into(),
                interface: "eth0".into(),
                address: Some(address.into()),
                address6: address6.map(|a| a.parse().expect("address6")),
                mac: "02:42:00:00:00:01".into(),
                default_route: true,
            }),
        }
    }

    #[tokio::test]
    async fn the_wire_fast_path_answers_exactly_like_the_handler() {
        let state = NodeState {
            networks: vec![NetworkState {
                name: "n".into(),
                uid: "u".into(),
                driver: Driver::Bridge,
                subnet: Some("172.18.0.0/16".parse().expect("subnet")),
                gateway: Some("172.18.0.1".parse().expect("gateway")),
                mtu: 1500,
                internal: false,
                dns: true,
                vxlan_id: None,
                subnet6: Some("fd00:18::/64".parse().expect("subnet6")),
                gateway6: Some("fd00:18::1".parse().expect("gateway6")),
            }],
            endpoints: vec![
                endpoint("con1", [172, 18, 0, 2], Some("fd00:18::2"), &["web"]),
                endpoint("con2", [172, 18, 0, 3], Some("fd00:18::3"), &["web"]),
                endpoint("con3", [172, 18, 0, 4], None, &[]),
            ],
            ports: vec![],
            ..NodeState::default()
        };
        let config = UpstreamConfig {
            resolv_conf: "/nonexistent/resolv.conf".into(),
            ..UpstreamConfig::default()
        };
        let sockets = NetnsSockets::start(None).expect("socket thread");
        let shared = Arc::new(Shared::new(
            Views::build(&state),
            Forwarder::new(&config, sockets),
            DnsMetrics::default(),
        ));
        let handler = PierHandler::new(shared.clone());
        let cases = [
            ("172.18.0.2:5353", "web.", RecordType::A, false),
            ("172.18.0.2:5353", "CON2.n.", RecordType::A, true),
            ("172.18.0.2:5353", "con1.", RecordType::A, true),
            ("[fd00:18::2]:5353", "web.", RecordType::AAAA, false),
            ("[fd00:18::2]:5353", "con2.N.", RecordType::AAAA, true),
            // NODATA: con3 has no IPv6 address.
            ("172.18.0.2:5353", "con3.", RecordType::AAAA, true),
        ];
        for (source, name, kind, edns) in cases {
            let source: SocketAddr = source.parse().expect("source");
            let mut query = Message::new(77, MessageType::Query, OpCode::Query);
            query.metadata.recursion_desired = true;
            query.add_query(Query::query(Name::from_ascii(name).expect("name"), kind));
            if edns {
                let mut opt = Edns::new();
                opt.set_max_payload(1232);
                query.set_edns(opt);
            }
            let packet = query.to_vec().expect("query encodes");

            let capture = Capture::default();
            let request =
                Request::from_bytes(packet.clone(), source, Protocol::Udp).expect("request");
            assert!(
                handler
                    .answer(&request, capture.clone(), false)
                    .await
                    .is_ok()
            );
            let by_handler =
                Message::from_vec(&capture.0.lock().expect("lock")).expect("handler answer");

            let views = shared.views();
            let view = views.view_of(source.ip()).expect("asker is known");
            let mut fast = Vec::new();
            assert!(wire::answer(&packet, |n| view.wire(n), &mut fast), "{name}");
            let by_wire = Message::from_vec(&fast).expect("wire answer");

            assert_eq!(by_wire.metadata, by_handler.metadata, "{name}");
            assert_eq!(by_wire.queries, by_handler.queries, "{name}");
            assert_eq!(by_wire.answers, by_handler.answers, "{name}");
            assert_eq!(
                by_wire.answers.is_empty(),
                name == "con3.",
                "{name} {kind}: {:?}",
                by_wire.answers
            );
            assert_eq!(
                by_wire.edns.as_ref().map(Edns::max_payload),
                by_handler.edns.as_ref().map(Edns::max_payload),
                "{name}"
            );
        }
        assert_eq!(
            shared.rcodes.count(ResponseCode::NoError),
            cases.len() as u64,
            "each handler answer is counted once by its code"
        );
    }
}
