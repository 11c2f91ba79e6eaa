//! Many datagrams per system call: `recvmmsg` takes every query queued on a socket (up to
//! [`BATCH`]) and `sendmmsg` sends the answers to them in one call.
//!
//! Under load a DNS socket has many queries queued, and answering one from memory costs less than
//! the system calls around it. A batch shares each call's fixed cost (entry, exit, whatever the
//! machine traces on them); the kernel's work per datagram, most of the DNS threads' CPU, stays
//! (benches/notes/dns.md).
//!
//! Both calls are non-blocking; the caller runs them under tokio's readiness (`async_io`).
//! `sendmmsg` goes through libc directly: nix's wrapper reports how many were sent only by
//! reading addresses it never initialised for sends.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg};
use socket2::SockAddr;

/// Datagrams taken or sent per system call: enough to empty a socket's queue under a load
/// generator's hundreds of outstanding queries in a few calls, small enough that the answers to
/// the first do not wait long for the last.
pub const BATCH: usize = 32;

/// Largest query accepted over UDP; anything longer is not a query a stub resolver sends (and is
/// cut to this length, then dropped as malformed).
pub const MAX_QUERY: usize = 4096;

/// Buffers for one batch of received queries.
#[derive(Debug)]
pub struct Received {
    /// `BATCH` buffers of `MAX_QUERY` bytes, back to back.
    buffers: Vec<u8>,
    /// Per datagram received by the last call: its length and who sent it.
    datagrams: Vec<(usize, Option<SocketAddr>)>,
}

impl Default for Received {
    fn default() -> Self {
        Received {
            buffers: vec![0; BATCH * MAX_QUERY],
            datagrams: Vec::with_capacity(BATCH),
        }
    }
}

impl Received {
    /// Takes up to [`BATCH`] queued datagrams from `socket` without blocking (`WouldBlock` when
    /// none is queued); returns how many.
    pub fn receive(&mut self, socket: RawFd) -> io::Result<usize> {
        // The headers hold raw pointers (not `Send`): made per call, so the async loop holding
        // `Received` across awaits stays `Send`.
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
        let mut slices: Vec<[IoSliceMut<'_>; 1]> = self
            .buffers
            .chunks_mut(MAX_QUERY)
            .map(|buffer| [IoSliceMut::new(buffer)])
            .collect();
        let results = recvmmsg(
            socket,
            &mut headers,
            slices.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        )
        .map_err(io::Error::from)?;
        self.datagrams.clear();
        for message in results {
            let source = message.address.as_ref().and_then(socket_addr);
            self.datagrams.push((message.bytes, source));
        }
        Ok(self.datagrams.len())
    }

    /// The datagrams the last [`receive`](Self::receive) took: each one's bytes and its sender
    /// (`None` for a sender address that is not IP, which a UDP socket does not produce).
    pub fn datagrams(&self) -> impl Iterator<Item = (&[u8], Option<SocketAddr>)> {
        self.datagrams
            .iter()
            .zip(self.buffers.chunks(MAX_QUERY))
            .map(|(&(length, source), buffer)| (&buffer[..length.min(MAX_QUERY)], source))
    }
}

fn socket_addr(address: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = address.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    address
        .as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
}

/// Answers waiting to be sent, each with its destination; buffers are reused from batch to batch.
#[derive(Debug, Default)]
pub struct Replies {
    answers: Vec<Vec<u8>>,
    destinations: Vec<SockAddr>,
    /// Answers filled since the last `clear` (`answers` keeps spare buffers beyond).
    len: usize,
}

impl Replies {
    /// A buffer for the next answer, to `destination`; it is sent unless the caller leaves it
    /// empty.
    pub fn next_buffer(&mut self, destination: SocketAddr) -> &mut Vec<u8> {
        if self.len == self.answers.len() {
            self.answers.push(Vec::with_capacity(512));
        }
        let address = SockAddr::from(destination);
        match self.destinations.get_mut(self.len) {
            Some(slot) => *slot = address,
            None => self.destinations.push(address),
        }
        let buffer = &mut self.answers[self.len];
        buffer.clear();
        self.len += 1;
        buffer
    }

    /// Takes back the last buffer handed out (no answer for that query after all).
    pub fn discard_last(&mut self) {
        self.len = self.len.saturating_sub(1);
    }

    /// Answers filled and not sent yet.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sends the answers from the `from`-th on without blocking; returns how many went
    /// (`WouldBlock` when the socket's send buffer is full).
    pub fn send(&self, socket: RawFd, from: usize) -> io::Result<usize> {
        let from = from.min(self.len);
        let answers = &self.answers[from..self.len];
        let destinations = &self.destinations[from..self.len];
        send_many(socket, answers, destinations)
    }

    /// Forgets the answers (keeps their buffers).
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

/// `sendmmsg(2)`: each of `answers` to the destination beside it, in one call.
#[allow(unsafe_code)]
fn send_many(socket: RawFd, answers: &[Vec<u8>], destinations: &[SockAddr]) -> io::Result<usize> {
    use nix::libc;

    let mut slices: Vec<IoSlice<'_>> = answers.iter().map(|a| IoSlice::new(a)).collect();
    let mut headers: Vec<libc::mmsghdr> = slices
        .iter_mut()
        .zip(destinations)
        .map(|(slice, destination)| {
            // SAFETY: an all-zero `msghdr` is a valid empty one (no name, no data, no control).
            let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
            header.msg_name = destination.as_ptr().cast_mut().cast();
            header.msg_namelen = destination.len();
            // `IoSlice` is ABI-compatible with `iovec` (std guarantees it on Unix).
            header.msg_iov = std::ptr::from_mut(slice).cast();
            header.msg_iovlen = 1;
            libc::mmsghdr {
                msg_hdr: header,
                msg_len: 0,
            }
        })
        .collect();
    let count = u32::try_from(headers.len()).unwrap_or(u32::MAX);
    // SAFETY: every header points at a destination and a slice that outlive this call (borrowed
    // from the arguments and `slices`), and `count` is at most the number of headers.
    let sent = unsafe { libc::sendmmsg(socket, headers.as_mut_ptr(), count, libc::MSG_DONTWAIT) };
    usize::try_from(sent).map_err(|_| io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    use super::*;

    fn pair() -> (UdpSocket, UdpSocket) {
        let server = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let client = UdpSocket::bind("127.0.0.1:0").expect("bind");
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        (server, client)
    }

    #[test]
    fn one_call_takes_every_queued_datagram_with_its_sender() {
        let (server, client) = pair();
        let to = server.local_addr().expect("address");
        for i in 0..5u8 {
            client.send_to(&[i; 3], to).expect("send");
        }
        // Loopback delivers synchronously: all five are queued once `send_to` returned.
        let mut received = Received::default();
        assert_eq!(received.receive(server.as_raw_fd()).expect("receive"), 5);
        let from = client.local_addr().expect("address");
        let got: Vec<(Vec<u8>, Option<SocketAddr>)> = received
            .datagrams()
            .map(|(bytes, source)| (bytes.to_vec(), source))
            .collect();
        let want: Vec<(Vec<u8>, Option<SocketAddr>)> =
            (0..5u8).map(|i| (vec![i; 3], Some(from))).collect();
        assert_eq!(got, want);
        let empty = received
            .receive(server.as_raw_fd())
            .expect_err("nothing queued");
        assert_eq!(empty.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn more_than_a_batch_takes_several_calls() {
        let (server, client) = pair();
        let to = server.local_addr().expect("address");
        for i in 0..(BATCH + 3) {
            client.send_to(&i.to_be_bytes(), to).expect("send");
        }
        let mut received = Received::default();
        assert_eq!(received.receive(server.as_raw_fd()).expect("first"), BATCH);
        assert_eq!(received.receive(server.as_raw_fd()).expect("second"), 3);
        let last: Vec<Vec<u8>> = received.datagrams().map(|(b, _)| b.to_vec()).collect();
        assert_eq!(last.last(), Some(&(BATCH + 2).to_be_bytes().to_vec()));
    }

    #[test]
    fn one_call_sends_each_answer_to_its_own_destination() {
        let (server, first) = pair();
        let second = UdpSocket::bind("127.0.0.1:0").expect("bind");
        second
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut replies = Replies::default();
        replies
            .next_buffer(first.local_addr().expect("address"))
            .extend_from_slice(b"one");
        replies
            .next_buffer(second.local_addr().expect("address"))
            .extend_from_slice(b"two");
        replies.next_buffer(second.local_addr().expect("address"));
        replies.discard_last();
        assert_eq!(replies.len(), 2);
        assert_eq!(replies.send(server.as_raw_fd(), 0).expect("send"), 2);
        let mut buffer = [0u8; 16];
        let (n, from) = first.recv_from(&mut buffer).expect("first answer");
        assert_eq!(
            (&buffer[..n], from),
            (&b"one"[..], server.local_addr().expect("a"))
        );
        let (n, _) = second.recv_from(&mut buffer).expect("second answer");
        assert_eq!(&buffer[..n], b"two");
        // Buffers are kept for the next batch, their contents not.
        replies.clear();
        assert!(replies.is_empty());
        assert!(
            replies
                .next_buffer(first.local_addr().expect("a"))
                .is_empty()
        );
    }

    #[test]
    fn sending_from_an_offset_skips_what_already_went() {
        let (server, client) = pair();
        let to = client.local_addr().expect("address");
        let mut replies = Replies::default();
        for text in [&b"a"[..], b"b", b"c"] {
            replies.next_buffer(to).extend_from_slice(text);
        }
        assert_eq!(replies.send(server.as_raw_fd(), 2).expect("send"), 1);
        let mut buffer = [0u8; 4];
        let (n, _) = client.recv_from(&mut buffer).expect("answer");
        assert_eq!(&buffer[..n], b"c");
    }
}
