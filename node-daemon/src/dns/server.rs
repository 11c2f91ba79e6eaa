//! The hickory-server request handler: asker → view → local answer, NXDOMAIN, REFUSED, or a
//! forwarded answer. One handler (cheap to clone) serves every listener.

use std::sync::{Arc, RwLock};

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

use super::forward::{Counters, ForwardError, Forwarder};
use super::views::{Resolution, Views};

/// What every listener shares: the current views, the forwarder, the counters.
#[derive(Debug)]
pub struct Shared {
    views: RwLock<Arc<Views>>,
    pub forwarder: Forwarder,
    pub counters: Counters,
}

impl Shared {
    pub fn new(views: Views, forwarder: Forwarder) -> Shared {
        Shared {
            views: RwLock::new(Arc::new(views)),
            forwarder,
            counters: Counters::default(),
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
        // Freeing thousands of records happens here, not while queries wait on the lock.
        drop(old);
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

    /// Counts a received query.
    pub fn count_query(&self) {
        Counters::bump(&self.shared.counters.queries);
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
                let message = builder.error_msg(metadata, ResponseCode::FormErr);
                return Ok(send(&mut response, message, metadata).await);
            }
            _ => {
                let message = builder.error_msg(metadata, ResponseCode::NotImp);
                return Ok(send(&mut response, message, metadata).await);
            }
        };

        let views = self.shared.views();
        let resolution = views.resolve(request.src().ip(), query.name(), query.query_type());
        match resolution {
            Resolution::Refused => {
                Counters::bump(&counters.refused);
                let message = builder.error_msg(metadata, ResponseCode::Refused);
                Ok(send(&mut response, message, metadata).await)
            }
            Resolution::NxDomain => {
                Counters::bump(&counters.nxdomain);
                let mut header = response_metadata(metadata, ResponseCode::NXDomain);
                header.authoritative = true;
                let message = builder.build_no_records(header);
                Ok(send(&mut response, message, metadata).await)
            }
            Resolution::Local(records) => {
                Counters::bump(&counters.local);
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
