//! Forwarding to the node's upstream resolvers: UDP first, TCP when the answer is truncated, a
//! timeout per server and failover to the next, bounded concurrency.
//!
//! Sockets come from the node's namespace (`NetnsSockets`), so the upstreams are reached exactly as
//! the node itself reaches them. Each query goes out from a fresh socket with a fresh random id;
//! only an answer with that id and the same question is accepted.

use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_server::proto::op::{Message, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use super::resolv_conf::ResolvConf;
use super::sockets::{self, NetnsSockets, SocketThreadGone};

/// Forwarding failed; the client gets SERVFAIL (or nothing, for `Overloaded`).
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("too many forwarded queries in flight; query dropped")]
    Overloaded,
    #[error("no upstream resolver configured")]
    NoUpstream,
    #[error("the query is shorter than a DNS header")]
    ShortQuery,
    #[error("making a socket in the node namespace")]
    Thread(#[source] SocketThreadGone),
    #[error("making a socket for upstream {server}")]
    Socket {
        server: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to upstream {server}")]
    Io {
        server: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("upstream {server} did not answer within {timeout:?}")]
    Timeout {
        server: SocketAddr,
        timeout: Duration,
    },
    #[error("upstream {server} answered with {code}")]
    Failed {
        server: SocketAddr,
        code: ResponseCode,
    },
}

/// How forwarding behaves.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The node's resolv.conf (its `nameserver` lines are the upstreams; re-read when it changes).
    pub resolv_conf: std::path::PathBuf,
    /// How long one upstream gets before the next one is tried.
    pub timeout: Duration,
    /// Forwarded queries in flight at most; beyond that, queries are dropped and counted.
    pub max_in_flight: usize,
    /// How often the resolv.conf is checked for changes.
    pub reload_every: Duration,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            resolv_conf: "/etc/resolv.conf".into(),
            // Below glibc's and dig's 5 s, so a dead first server still leaves time for the next.
            timeout: Duration::from_millis(1500),
            max_in_flight: 512,
            reload_every: Duration::from_secs(1),
        }
    }
}

/// Counters shared by the server and the forwarder (exposed later as metrics).
#[derive(Debug, Default)]
pub struct Counters {
    pub queries: AtomicU64,
    pub local: AtomicU64,
    pub forwarded: AtomicU64,
    pub refused: AtomicU64,
    pub nxdomain: AtomicU64,
    pub servfail: AtomicU64,
    /// Queries dropped without an answer (forwarding overloaded).
    pub dropped: AtomicU64,
    /// Answers that left in a segmented datagram, with others to the same asker.
    pub segmented: AtomicU64,
}

/// A snapshot of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DnsStats {
    pub queries: u64,
    pub local: u64,
    pub forwarded: u64,
    pub refused: u64,
    pub nxdomain: u64,
    pub servfail: u64,
    pub dropped: u64,
    pub segmented: u64,
}

impl Counters {
    pub fn snapshot(&self) -> DnsStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DnsStats {
            queries: get(&self.queries),
            local: get(&self.local),
            forwarded: get(&self.forwarded),
            refused: get(&self.refused),
            nxdomain: get(&self.nxdomain),
            servfail: get(&self.servfail),
            dropped: get(&self.dropped),
            segmented: get(&self.segmented),
        }
    }

    pub fn bump(counter: &AtomicU64) {
        Self::add(counter, 1);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// The forwarder: upstreams (kept current by `reload`), a concurrency limit, sockets.
#[derive(Debug)]
pub struct Forwarder {
    upstream: RwLock<Arc<ResolvConf>>,
    limit: Arc<Semaphore>,
    timeout: Duration,
    sockets: NetnsSockets,
}

impl Forwarder {
    pub fn new(config: &UpstreamConfig, sockets: NetnsSockets) -> Forwarder {
        Forwarder {
            upstream: RwLock::new(Arc::new(ResolvConf::read_or_empty(&config.resolv_conf))),
            limit: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
            timeout: config.timeout,
            sockets,
        }
    }

    /// The upstream configuration now in use.
    pub fn upstream(&self) -> Arc<ResolvConf> {
        self.upstream
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces the upstreams (the reload task calls this when the resolv.conf changed).
    pub fn set_upstream(&self, conf: ResolvConf) {
        *self
            .upstream
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(conf);
    }

    /// Forwards a raw query and returns the upstream's parsed answer (with the client's id).
    pub async fn forward(&self, query: &[u8]) -> Result<Message, ForwardError> {
        let _permit = self
            .limit
            .clone()
            .try_acquire_owned()
            .map_err(|_| ForwardError::Overloaded)?;
        if query.len() < 12 {
            return Err(ForwardError::ShortQuery);
        }
        let client_id = u16::from_be_bytes([query[0], query[1]]);
        let question = Message::from_vec(query).map(|m| m.queries).ok();
        let servers = self.upstream().nameservers.clone();
        let mut last = ForwardError::NoUpstream;
        for server in servers {
            let id = random_id();
            let mut outgoing = query.to_vec();
            outgoing[..2].copy_from_slice(&id.to_be_bytes());
            match self.ask(server, &outgoing, id, question.as_deref()).await {
                Ok(mut answer) => {
                    answer.metadata.id = client_id;
                    return Ok(answer);
                }
                Err(error) => {
                    tracing::debug!(%server, error = %error, "upstream failed, trying the next");
                    last = error;
                }
            }
        }
        Err(last)
    }

    /// One server: UDP, then TCP if the answer was truncated. Errors and SERVFAIL/REFUSED mean
    /// "try the next server".
    async fn ask(
        &self,
        server: SocketAddr,
        query: &[u8],
        id: u16,
        question: Option<&[hickory_server::proto::op::Query]>,
    ) -> Result<Message, ForwardError> {
        let timeout = self.timeout;
        let late = |_| ForwardError::Timeout { server, timeout };
        let mut answer = tokio::time::timeout(timeout, self.udp(server, query, id, question))
            .await
            .map_err(late)??;
        if answer.metadata.truncation {
            answer = tokio::time::timeout(timeout, self.tcp(server, query, id, question))
                .await
                .map_err(late)??;
        }
        match answer.metadata.response_code {
            code @ (ResponseCode::ServFail | ResponseCode::Refused) => {
                Err(ForwardError::Failed { server, code })
            }
            _ => Ok(answer),
        }
    }

    async fn udp(
        &self,
        server: SocketAddr,
        query: &[u8],
        id: u16,
        question: Option<&[hickory_server::proto::op::Query]>,
    ) -> Result<Message, ForwardError> {
        let ipv6 = server.is_ipv6();
        let socket = self
            .sockets
            .run(move || sockets::ephemeral_udp(ipv6))
            .await
            .map_err(ForwardError::Thread)?
            .and_then(tokio::net::UdpSocket::from_std)
            .map_err(|source| ForwardError::Socket { server, source })?;
        let io = |source| ForwardError::Io { server, source };
        socket.connect(server).await.map_err(io)?;
        socket.send(query).await.map_err(io)?;
        let mut buffer = vec![0u8; 65535];
        loop {
            let n = socket.recv(&mut buffer).await.map_err(io)?;
            // Anything that is not our answer (late, spoofed, garbage) is ignored until the timeout.
            if let Some(answer) = accept(&buffer[..n], id, question) {
                return Ok(answer);
            }
        }
    }

    async fn tcp(
        &self,
        server: SocketAddr,
        query: &[u8],
        id: u16,
        question: Option<&[hickory_server::proto::op::Query]>,
    ) -> Result<Message, ForwardError> {
        let ipv6 = server.is_ipv6();
        let socket = self
            .sockets
            .run(move || sockets::tcp_socket(ipv6))
            .await
            .map_err(ForwardError::Thread)?
            .map_err(|source| ForwardError::Socket { server, source })?;
        let io = |source| ForwardError::Io { server, source };
        let mut stream = tokio::net::TcpSocket::from_std_stream(socket)
            .connect(server)
            .await
            .map_err(io)?;
        let length = u16::try_from(query.len()).map_err(|_| {
            io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "query too long",
            ))
        })?;
        let mut framed = Vec::with_capacity(query.len() + 2);
        framed.extend_from_slice(&length.to_be_bytes());
        framed.extend_from_slice(query);
        stream.write_all(&framed).await.map_err(io)?;
        let length = stream.read_u16().await.map_err(io)?;
        let mut buffer = vec![0u8; usize::from(length)];
        stream.read_exact(&mut buffer).await.map_err(io)?;
        accept(&buffer, id, question).ok_or_else(|| {
            io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "answer does not match the query",
            ))
        })
    }
}

/// An upstream answer is ours if it parses, is a response, has our id and our question.
fn accept(
    bytes: &[u8],
    id: u16,
    question: Option<&[hickory_server::proto::op::Query]>,
) -> Option<Message> {
    let answer = Message::from_vec(bytes).ok()?;
    let ours = answer.metadata.id == id
        && answer.metadata.message_type == hickory_server::proto::op::MessageType::Response
        && question.is_none_or(|q| q == answer.queries.as_slice());
    ours.then_some(answer)
}

/// A random 16-bit id: std's per-process random hasher keys, stirred with a counter.
fn random_id() -> u16 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.finish() as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_vary() {
        let ids: std::collections::BTreeSet<u16> = (0..64).map(|_| random_id()).collect();
        assert!(ids.len() > 50, "{ids:?}");
    }

    #[test]
    fn accept_checks_id_direction_and_question() {
        use hickory_server::proto::op::{Message, MessageType, OpCode, Query};
        use hickory_server::proto::rr::{Name, RecordType};
        let q = Query::query(
            Name::from_ascii("example.com.").expect("name"),
            RecordType::A,
        );
        let mut answer = Message::new(7, MessageType::Response, OpCode::Query);
        answer.add_query(q.clone());
        let bytes = answer.to_vec().expect("encodes");
        assert!(accept(&bytes, 7, Some(std::slice::from_ref(&q))).is_some());
        assert!(accept(&bytes, 8, Some(std::slice::from_ref(&q))).is_none());
        let other = Query::query(
            Name::from_ascii("example.org.").expect("name"),
            RecordType::A,
        );
        assert!(accept(&bytes, 7, Some(&[other])).is_none());
        assert!(accept(b"garbage", 7, None).is_none());
    }
}
