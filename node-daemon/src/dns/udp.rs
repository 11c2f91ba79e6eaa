//! The UDP path: receive threads that answer local names inline and send straight to the socket.
//!
//! hickory-server's own UDP path funnels every query of a socket through one task and a channel
//! and spawns a task per query; for names answered from memory that plumbing costs more than the
//! answer (measured: BENCHMARKS.md, DNS). Here each socket (SO_REUSEPORT siblings, one per
//! runtime worker) has a thread of its own that waits in `recvmmsg` for queries, takes every one
//! queued, answers local names from the views straight into reply buffers and sends them in one
//! `sendmmsg`, as NSD and Knot serve UDP; the first thread alone gets the queries until it falls
//! behind (`spreading.rs`). A thread, not a task: under load the runtime's readiness round per
//! wakeup (an `epoll_wait`, an empty `recvmmsg` to learn the queue is drained, a task scheduled)
//! cost about 6% of the CPU per answer (benches/notes/dns.md), and a thread can give its CPU to
//! the askers between batches (a yield or a short pause: `yielding.rs`). Other queries are decoded with hickory (`Request::from_bytes`) and run
//! through the same `PierHandler` with a responder that encodes and sends directly; only
//! queries that go upstream get a task of their own on the runtime, so a slow upstream never
//! stalls local answers. TCP stays on hickory's `Server`.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hickory_server::net::NetError;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::MessageType;
use hickory_server::proto::rr::Record;
use hickory_server::proto::serialize::binary::BinEncoder;
use hickory_server::server::{Request, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use socket2::{SockAddr, SockRef};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use super::datagrams::{BATCH, Received, Replies};
use super::server::PierHandler;
use super::sockets;
use super::spreading::{IDLE_CHECK, Spread, SpreadWhenBehind};
use super::wire;
use super::yielding::{GiveWay, GiveWayToAskers, PAUSE, PAUSE_TIMER_SLACK_NS};

/// Without EDNS, a UDP answer may be at most 512 bytes (RFC 1035 §4.2.1).
const CLASSIC_UDP: u16 = 512;

/// How long a send may wait for room in a full send buffer before that answer is given up (the
/// asker retries): a wedged asker must not stall the others for long.
const SEND_WAIT: Duration = Duration::from_secs(1);

/// One gateway's UDP receive threads. They end on [`stop`](Self::stop), or soon after this is
/// dropped.
#[derive(Debug)]
pub struct ReceiveThreads {
    sockets: Vec<Arc<UdpSocket>>,
    /// One per thread, closed when the thread ends: waiting on these holds no thread of the
    /// runtime, as joining would (and a runtime shutting down waits for those).
    exited: Vec<oneshot::Receiver<()>>,
    stopping: Arc<AtomicBool>,
}

/// Starts one receive thread per socket; queries that need the runtime (upstream ones) run on
/// `runtime`.
pub fn serve(
    sockets: Vec<UdpSocket>,
    handler: PierHandler,
    runtime: Handle,
) -> io::Result<ReceiveThreads> {
    let mut loops = ReceiveThreads {
        sockets: Vec::with_capacity(sockets.len()),
        exited: Vec::with_capacity(sockets.len()),
        stopping: Arc::new(AtomicBool::new(false)),
    };
    let taken_by_all = Arc::new(AtomicU64::new(0));
    // The first thread answers alone until it falls behind, and judges that (spreading.rs); a
    // lone socket has nothing to steer.
    let mut spreading = match sockets.first() {
        Some(first) if sockets.len() > 1 => match sockets::steer(first, Spread::First) {
            Ok(()) => Some(SpreadWhenBehind::new(Instant::now(), 0)),
            Err(error) => {
                tracing::debug!(%error, "DNS queries stay spread over the receive threads");
                None
            }
        },
        _ => None,
    };
    for socket in sockets {
        // The thread waits in the kernel for queries, and a full send buffer makes it wait
        // (bounded) rather than drop answers.
        socket.set_nonblocking(false)?;
        socket.set_write_timeout(Some(SEND_WAIT))?;
        let socket = Arc::new(socket);
        let (exiting, exited) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("pier-dns-udp".into())
            .spawn({
                let thread = ReceiveThread {
                    socket: socket.clone(),
                    handler: handler.clone(),
                    runtime: runtime.clone(),
                    stopping: loops.stopping.clone(),
                    taken_by_all: taken_by_all.clone(),
                    spreading: spreading.take(),
                };
                move || {
                    // The thread lets go of its socket (`run` consumes `thread`) before `stop`
                    // hears that it is done; a panic drops `exiting` too.
                    thread.run();
                    drop(exiting);
                }
            })?;
        // (On an error above `loops` is dropped, which stops the threads already started.)
        loops.exited.push(exited);
        loops.sockets.push(socket);
    }
    Ok(loops)
}

impl ReceiveThreads {
    /// Stops the threads and waits for them to let go of their sockets (up to `grace`), so a
    /// listener bound again on the same address does not share queries with sockets nobody reads.
    pub async fn stop(mut self, grace: Duration) {
        self.signal_stop();
        let exited = futures::future::join_all(std::mem::take(&mut self.exited));
        if tokio::time::timeout(grace, exited).await.is_err() {
            // Until its socket closes, a listener bound again on the address shares the old
            // sockets' group, and may see its queries steered to them (`sockets::steer`).
            tracing::warn!("a DNS receive thread did not stop in time");
        }
    }

    /// Tells the threads to stop and wakes them: shutting a socket down for reading makes a
    /// thread waiting in `recvmmsg` return at once (for an unconnected UDP socket the call
    /// reports ENOTCONN but does shut it down).
    fn signal_stop(&self) {
        self.stopping.store(true, Ordering::Release);
        for socket in &self.sockets {
            let _ = SockRef::from(socket.as_ref()).shutdown(std::net::Shutdown::Read);
        }
    }
}

impl Drop for ReceiveThreads {
    fn drop(&mut self) {
        self.signal_stop();
    }
}

/// What one receive thread works with.
struct ReceiveThread {
    socket: Arc<UdpSocket>,
    handler: PierHandler,
    /// Where queries that need it (upstream ones) run.
    runtime: Handle,
    stopping: Arc<AtomicBool>,
    /// Queries taken by all of the gateway's threads so far.
    taken_by_all: Arc<AtomicU64>,
    /// The first thread's: where the gateway's queries go (spreading.rs).
    spreading: Option<SpreadWhenBehind>,
}

impl ReceiveThread {
    fn run(self) {
        let ReceiveThread {
            socket,
            handler,
            runtime,
            stopping,
            taken_by_all,
            mut spreading,
        } = self;
        // Should the first thread end while its siblings answer on (a panic), they get the
        // queries.
        let _spread_on_exit = spreading.is_some().then(|| SpreadOnExit(&socket));
        let mut received = Received::default();
        let mut replies = Replies::default();
        // This loop's own reference to the views, refreshed when the generation moves: no lock and
        // no shared reference count touched per query.
        let mut generation = handler.shared().generation();
        let mut views = handler.shared().views();
        let mut courtesy = GiveWayToAskers::default();
        let mut taken = 0;
        if let Err(error) = nix::sys::prctl::set_timerslack(PAUSE_TIMER_SLACK_NS) {
            tracing::debug!(%error, "DNS receive thread keeps the default timer slack");
        }
        loop {
            // Under load, let the askers this thread just answered send their next queries before
            // taking a batch (yielding.rs).
            let now = Instant::now();
            match courtesy.before_receive(now, taken, BATCH) {
                GiveWay::No => {}
                GiveWay::Yield => {
                    std::thread::yield_now();
                    let after = Instant::now();
                    courtesy.yielded(after, after - now);
                }
                GiveWay::Pause => std::thread::sleep(PAUSE),
            }
            let result = received.receive(socket.as_raw_fd());
            if stopping.load(Ordering::Acquire) {
                return;
            }
            taken = match result {
                Ok(taken) => taken,
                // The first thread's wait, while the queries are spread, ends now and then.
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => 0,
                // ICMP errors from earlier answers and the like: the socket itself is fine.
                Err(error) => {
                    tracing::debug!(%error, "UDP receive error");
                    continue;
                }
            };
            let taken_count = taken as u64;
            let all_taken = taken_by_all.fetch_add(taken_count, Ordering::Relaxed) + taken_count;
            if let Some(policy) = spreading.as_mut() {
                let received_at = Instant::now();
                if let Some(spread) = policy.after_receive(received_at, taken, BATCH, all_taken) {
                    steer_and_wait(&socket, spread);
                }
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
                // Answered from memory here (nothing in it waits on I/O); only what must go
                // upstream leaves for a task.
                if let Err(responder) = runtime.block_on(handler.answer(&request, responder, true))
                {
                    let handler = handler.clone();
                    runtime.spawn(async move {
                        let _ = handler.answer(&request, responder, false).await;
                    });
                }
            }
            send_replies(&socket, &mut replies);
            handler.count_segmented(replies.segmented());
            replies.clear();
        }
    }
}

/// Sends the gateway's queries where `spread` says, from the first thread. While they are
/// spread that thread may hear none for long, so its wait ends every [`IDLE_CHECK`] for it to
/// judge all the same.
fn steer_and_wait(first: &UdpSocket, spread: Spread) {
    let wait = match spread {
        Spread::First => None,
        Spread::All => Some(IDLE_CHECK),
    };
    if let Err(error) = first.set_read_timeout(wait) {
        tracing::warn!(%error, ?wait, "the first DNS receive thread's wait is not bounded");
    }
    match sockets::steer(first, spread) {
        Ok(()) => tracing::debug!(?spread, "DNS queries steered"),
        Err(error) => tracing::warn!(%error, ?spread, "DNS queries could not be steered"),
    }
}

/// Held by the first thread: when it ends, the gateway's queries go to all its sockets.
struct SpreadOnExit<'a>(&'a UdpSocket);

impl Drop for SpreadOnExit<'_> {
    fn drop(&mut self) {
        let _ = sockets::steer(self.0, Spread::All);
    }
}

/// Sends every answer of the batch (waiting, up to [`SEND_WAIT`] per call, for room in the
/// socket's send buffer when it is full).
fn send_replies(socket: &UdpSocket, replies: &mut Replies) {
    let mut datagrams = replies.seal();
    let mut sent = 0;
    while sent < datagrams {
        match replies.send(socket.as_raw_fd(), sent) {
            Ok(count) => sent += count.max(1),
            // The kernel does not segment on this route: the same answers again, one by one.
            Err(error) if replies.stop_segmenting_after(sent, &error) => {
                tracing::debug!(%error, "UDP segmentation refused; answers go one by one");
                datagrams = replies.planned();
            }
            // The first of the rest could not go (its destination unreachable, the buffer
            // still full after the wait, say): the asker retries; the others still go.
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
        // Never waits (it may run on a runtime worker): with the send buffer full this answer
        // is lost and the asker retries, as with any UDP loss.
        SockRef::from(self.socket.as_ref()).send_to_with_flags(
            &bytes,
            &SockAddr::from(self.destination),
            nix::libc::MSG_DONTWAIT,
        )?;
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use hickory_server::proto::op::{Message, OpCode, Query, ResponseCode};
    use hickory_server::proto::rr::{Name, RData, RecordType};

    use super::*;
    use crate::dns::forward::{Forwarder, UpstreamConfig};
    use crate::dns::metrics::DnsMetrics;
    use crate::dns::server::Shared;
    use crate::dns::sockets::{self, NetnsSockets};
    use crate::dns::views::Views;
    use crate::dns::views::tests::{endpoint, network};
    use crate::state::NodeState;

    /// One network on loopback: the asker (127.0.0.1) is `con1`, and `con2` is 127.0.0.2.
    fn loopback_state() -> NodeState {
        NodeState {
            networks: vec![network("n", "127.0.0.0/8", "127.0.0.1")],
            endpoints: vec![
                endpoint("default/con1", "con1", "n", "127.0.0.1"),
                endpoint("default/con2", "con2", "n", "127.0.0.2"),
            ],
            ports: vec![],
            ..NodeState::default()
        }
    }

    fn ask(client: &UdpSocket, server: SocketAddr, id: u16, name: &str) -> Message {
        let mut query = Message::new(id, MessageType::Query, OpCode::Query);
        query.add_query(Query::query(
            Name::from_ascii(name).expect("name"),
            RecordType::A,
        ));
        client
            .send_to(&query.to_vec().expect("query encodes"), server)
            .expect("send");
        let mut buffer = [0; 1500];
        let (length, from) = client.recv_from(&mut buffer).expect("an answer");
        assert_eq!(from, server);
        let answer = Message::from_vec(&buffer[..length]).expect("answer decodes");
        assert_eq!(answer.metadata.id, id);
        answer
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn threads_answer_from_memory_and_through_the_runtime_and_let_go_of_the_address_on_stop()
    {
        let config = UpstreamConfig {
            resolv_conf: "/nonexistent/resolv.conf".into(),
            ..UpstreamConfig::default()
        };
        let shared = Arc::new(Shared::new(
            Views::build(&loopback_state()),
            Forwarder::new(&config, NetnsSockets::start(None).expect("socket thread")),
            DnsMetrics::default(),
        ));
        let first = sockets::bind_udp("127.0.0.1:0".parse().expect("address")).expect("bind");
        let server = first.local_addr().expect("address");
        let second = sockets::bind_udp(server).expect("a sibling on the same address");
        let loops = serve(
            vec![first, second],
            PierHandler::new(shared.clone()),
            Handle::current(),
        )
        .expect("threads start");
        // A third member of the group, which nobody reads: the hash would hand it about a third
        // of the askers, but the first thread alone gets them (spreading.rs).
        let stray = sockets::bind_udp(server).expect("a third sibling");
        stray.set_nonblocking(true).expect("nonblocking");

        let client = tokio::task::spawn_blocking(move || {
            for id in 0..16 {
                let asker = UdpSocket::bind("127.0.0.1:0").expect("bind");
                asker
                    .set_read_timeout(Some(Duration::from_secs(2)))
                    .expect("timeout");
                ask(&asker, server, 100 + id, "con2.");
            }
            let client = UdpSocket::bind("127.0.0.1:0").expect("bind");
            client
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            // A local name: the wire fast path.
            let answer = ask(&client, server, 1, "con2.");
            let addresses: Vec<RData> = answer.answers.iter().map(|r| r.data.clone()).collect();
            assert_eq!(
                addresses,
                vec![RData::A(std::net::Ipv4Addr::new(127, 0, 0, 2).into())]
            );
            // Not local, and no upstream to forward to: answered on a task of the runtime.
            let answer = ask(&client, server, 2, "elsewhere.example.");
            assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
            client
        })
        .await
        .expect("client");
        drop(client);
        assert_eq!(shared.counters.snapshot().local, 17);
        assert!(
            stray.recv_from(&mut [0; 512]).is_err(),
            "no query reached a socket past the first"
        );
        drop(stray);

        let started = std::time::Instant::now();
        loops.stop(Duration::from_secs(5)).await;
        assert!(started.elapsed() < Duration::from_secs(1), "stop is prompt");
        // No socket of the group is left open: the address can be bound without SO_REUSEPORT.
        std::net::UdpSocket::bind(server).expect("the address is free after stop");
    }
}
