//! The UDP path: receive loops that answer local names inline and send straight to the socket.
//!
//! hickory-server's own UDP path funnels every query of a socket through one task and a channel
//! and spawns a task per query; for names answered from memory that plumbing costs more than the
//! answer (measured: BENCHMARKS.md, DNS). Here one loop per runtime worker takes the queries
//! queued on its socket in batches (`recvmmsg`), answers local names from the views straight into
//! reply buffers and sends them in one call (`sendmmsg`); other queries are decoded with hickory
//! (`Request::from_bytes`) and run through the same `PierHandler` with a responder that encodes
//! and `send_to`s directly. Only queries that go upstream get a task of their own, so a slow
//! upstream never stalls local answers. TCP stays on hickory's `Server`.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use hickory_server::net::NetError;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::MessageType;
use hickory_server::proto::rr::Record;
use hickory_server::proto::serialize::binary::BinEncoder;
use hickory_server::server::{Request, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::task::JoinSet;

use super::datagrams::{Received, Replies};
use super::server::PierHandler;
use super::wire;

/// Without EDNS, a UDP answer may be at most 512 bytes (RFC 1035 §4.2.1).
const CLASSIC_UDP: u16 = 512;

/// Starts one receive loop per socket (SO_REUSEPORT siblings on one address); they end when the
/// returned set is dropped.
pub fn serve(sockets: Vec<UdpSocket>, handler: PierHandler) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    for socket in sockets {
        tasks.spawn(receive_loop(Arc::new(socket), handler.clone()));
    }
    tasks
}

async fn receive_loop(socket: Arc<UdpSocket>, handler: PierHandler) {
    let mut received = Received::default();
    let mut replies = Replies::default();
    // This loop's own reference to the views, refreshed when the generation moves: no lock and
    // no shared reference count touched per query.
    let mut generation = handler.shared().generation();
    let mut views = handler.shared().views();
    loop {
        let taken = socket
            .async_io(Interest::READABLE, || received.receive(socket.as_raw_fd()))
            .await;
        // ICMP errors from earlier answers and the like: the socket itself is fine.
        if let Err(error) = taken {
            tracing::debug!(%error, "UDP receive error");
            continue;
        }
        if handler.shared().generation() != generation {
            generation = handler.shared().generation();
            views = handler.shared().views();
        }
        for (packet, source) in received.datagrams() {
            let Some(source) = source else {
                handler.count_dropped();
                continue;
            };
            if let Some(view) = views.view_of(source.ip()) {
                if wire::answer(packet, |name| view.wire(name), replies.next_buffer(source)) {
                    handler.count_local_answer();
                    continue;
                }
                replies.discard_last();
            }
            // Malformed input, and responses (a reflection loop in the making), are dropped.
            let request = match Request::from_bytes(packet.to_vec(), source, Protocol::Udp) {
                Ok(request) if request.metadata.message_type == MessageType::Query => request,
                _ => {
                    handler.count_dropped();
                    continue;
                }
            };
            let responder = UdpResponder {
                socket: socket.clone(),
                destination: source,
            };
            handler.count_query();
            if let Err(responder) = handler.answer(&request, responder, true).await {
                let handler = handler.clone();
                tokio::spawn(async move {
                    let _ = handler.answer(&request, responder, false).await;
                });
            }
        }
        send_replies(&socket, &mut replies).await;
        handler.count_segmented(replies.segmented());
        replies.clear();
    }
}

/// Sends every answer of the batch, waiting for room in the socket's send buffer when it is full.
async fn send_replies(socket: &UdpSocket, replies: &mut Replies) {
    let mut datagrams = replies.seal();
    let mut sent = 0;
    while sent < datagrams {
        let result = socket
            .async_io(Interest::WRITABLE, || {
                replies.send(socket.as_raw_fd(), sent)
            })
            .await;
        match result {
            Ok(count) => sent += count.max(1),
            // The kernel does not segment on this route: the same answers again, one by one.
            Err(error) if replies.stop_segmenting_after(sent, &error) => {
                tracing::debug!(%error, "UDP segmentation refused; answers go one by one");
                datagrams = replies.planned();
            }
            // The first of the rest could not go (its destination unreachable, say): the asker
            // retries; the others still go.
            Err(error) => {
                tracing::debug!(%error, "UDP send error");
                sent += 1;
            }
        }
    }
}

/// Encodes a response and sends it to the asker from the listening socket.
#[derive(Debug, Clone)]
struct UdpResponder {
    socket: Arc<UdpSocket>,
    destination: SocketAddr,
}

#[async_trait::async_trait]
impl ResponseHandler for UdpResponder {
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
        // Records beyond the asker's payload size are left out and TC is set (the encoder does
        // both), so the client retries over TCP.
        let limit = response
            .edns()
            .map_or(CLASSIC_UDP, |edns| edns.max_payload().max(CLASSIC_UDP));
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(limit);
        let info = response.destructive_emit(&mut encoder)?;
        self.socket.send_to(&bytes, self.destination).await?;
        Ok(info)
    }
}
