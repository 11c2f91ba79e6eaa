//! Many datagrams per system call: `recvmmsg` takes every query queued on a socket (up to
//! [`BATCH`]) and `sendmmsg` sends the answers to them in one call, those of one length to one
//! asker as one segmented datagram.
//!
//! Under load a DNS socket has many queries queued, and answering one from memory costs less than
//! the system calls around it. A batch shares each call's fixed cost (entry, exit, whatever the
//! machine traces on them); segmentation shares the kernel's work per datagram on the way out
//! (routing, connection tracking, bridge, veth), most of the DNS threads' CPU
//! (benches/notes/dns.md).
//!
//! Both calls wait on a blocking socket: `recvmmsg` for the first query (then it takes what is
//! queued without waiting), `sendmmsg` for room in a full send buffer (up to the socket's send
//! timeout); a receive thread owns each socket (`udp.rs`). `sendmmsg` goes through libc
//! directly: nix's wrapper reports how many were sent only by reading addresses it never
//! initialised for sends.

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
    /// Waits for a datagram on `socket`, then takes it and whatever else is queued, up to
    /// [`BATCH`]; returns how many (`WouldBlock` when the socket's receive timeout passed first;
    /// after the socket is shut down for reading, empty datagrams from no one).
    pub fn receive(&mut self, socket: RawFd) -> io::Result<usize> {
        // Whatever happens, the last batch is not seen again.
        self.datagrams.clear();
        // The headers hold raw pointers (not `Send`): made per call, so `Received` stays
        // `Send`.
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
            MsgFlags::MSG_WAITFORONE,
            None,
        )
        .map_err(io::Error::from)?;
        for message in results {
            let source = message.address.as_ref().and_then(socket_addr);
            self.datagrams.push((message.bytes, source));
        }
        Ok(self.datagrams.len())
    }

    /// The datagrams the last [`receive`](Self::receive) took, none if it failed: each one's
    /// bytes and its sender (`None` for a sender address that is not IP, which a UDP socket does
    /// not produce).
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
///
/// Answers of the same length to the same asker leave as one datagram that the kernel cuts into
/// one per answer (UDP segmentation offload, `UDP_SEGMENT`), the way QUIC servers send: routing,
/// connection tracking, the bridge and the veth then handle the batch once, and only the
/// asker's socket sees each answer. A load generator, or a resolver forwarding many lookups from
/// one socket, has many queries of the same shape in flight; a lone stub query gains nothing and
/// loses nothing.
#[derive(Debug)]
pub struct Replies {
    answers: Vec<Vec<u8>>,
    destinations: Vec<SocketAddr>,
    /// Answers filled since the last `clear` (`answers` keeps spare buffers beyond).
    len: usize,
    /// Indices of the filled answers in sending order (those of one datagram side by side).
    order: Vec<usize>,
    /// The datagrams `seal` planned, in sending order.
    datagrams: Vec<Outgoing>,
    /// Off once the kernel refused a segmented datagram (no checksum offload on the route, say):
    /// from then on every answer leaves on its own.
    segmenting: bool,
}

/// One datagram to send: `order[first..first + count]`, all to one destination and, when more
/// than one, all of one length (the segment size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Outgoing {
    first: usize,
    count: usize,
}

/// At most this many answers in one segmented datagram (the kernel's `UDP_MAX_SEGMENTS`).
const MAX_SEGMENTS: usize = 64;

/// Largest answer sent as a segment: each segment must fit the path's MTU with its IP and UDP
/// headers, and 1,232 bytes fit IPv6's minimum MTU (the size DNS Flag Day 2020 picked for the
/// same reason); larger answers leave on their own and may be fragmented as before.
const MAX_SEGMENT: usize = 1232;

/// Largest payload of one segmented datagram: what fits one IPv4 packet's length field before
/// the kernel cuts it (65,535 less the IPv4 and UDP headers).
const MAX_SEGMENTED_PAYLOAD: usize = 65_507;

/// `UDP_SEGMENT` (linux/udp.h): the control message giving a send's segment size. libc defines
/// it for some targets only.
const UDP_SEGMENT: nix::libc::c_int = 103;

impl Default for Replies {
    fn default() -> Self {
        Replies {
            answers: Vec::new(),
            destinations: Vec::new(),
            len: 0,
            order: Vec::with_capacity(BATCH),
            datagrams: Vec::with_capacity(BATCH),
            segmenting: true,
        }
    }
}

impl Replies {
    /// A buffer for the next answer, to `destination`; it is sent unless the caller takes it
    /// back with [`discard_last`](Self::discard_last).
    pub fn next_buffer(&mut self, destination: SocketAddr) -> &mut Vec<u8> {
        if self.len == self.answers.len() {
            self.answers.push(Vec::with_capacity(512));
        }
        match self.destinations.get_mut(self.len) {
            Some(slot) => *slot = destination,
            None => self.destinations.push(destination),
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

    /// Plans the datagrams for the answers filled so far: those of one length to one asker
    /// together, up to the kernel's limits. Returns how many datagrams there are to send.
    pub fn seal(&mut self) -> usize {
        let (answers, destinations) = (&self.answers, &self.destinations);
        self.order.clear();
        self.order.extend(0..self.len);
        self.datagrams.clear();
        if self.segmenting {
            // By asker, the longest answers first: a segmented datagram's last segment may be
            // shorter than the others.
            self.order
                .sort_unstable_by_key(|&i| (destinations[i], std::cmp::Reverse(answers[i].len())));
        }
        let mut first = 0;
        while first < self.order.len() {
            let lead = self.order[first];
            let size = answers[lead].len();
            let mut count = 1;
            if self.segmenting && (1..=MAX_SEGMENT).contains(&size) {
                let most = MAX_SEGMENTS.min(MAX_SEGMENTED_PAYLOAD / size);
                while count < most
                    && self.order.get(first + count).is_some_and(|&next| {
                        destinations[next] == destinations[lead] && answers[next].len() == size
                    })
                {
                    count += 1;
                }
                // A shorter answer to the same asker ends the datagram.
                if count < most
                    && self.order.get(first + count).is_some_and(|&next| {
                        destinations[next] == destinations[lead] && !answers[next].is_empty()
                    })
                {
                    count += 1;
                }
            }
            self.datagrams.push(Outgoing { first, count });
            first += count;
        }
        self.datagrams.len()
    }

    /// Datagrams planned (by `seal`, or again after `stop_segmenting_after`).
    pub fn planned(&self) -> usize {
        self.datagrams.len()
    }

    /// Answers planned into segmented datagrams (with others to the same asker).
    pub fn segmented(&self) -> usize {
        self.datagrams
            .iter()
            .filter(|datagram| datagram.count > 1)
            .map(|datagram| datagram.count)
            .sum()
    }

    /// Sends the planned datagrams from the `from`-th on; returns how many went (`WouldBlock`
    /// when the socket's send buffer stayed full for its send timeout).
    pub fn send(&self, socket: RawFd, from: usize) -> io::Result<usize> {
        let datagrams = self.datagrams.get(from..).unwrap_or_default();
        send_many(
            socket,
            datagrams,
            &self.order,
            &self.answers,
            &self.destinations,
        )
    }

    /// After the kernel refused the `index`-th planned datagram with `error`: when that datagram
    /// was segmented and the error is the kernel refusing segmentation, stops segmenting (this
    /// batch and the next) and returns true; the datagrams from `index` on are then one per
    /// answer, to be sent again from `index`.
    pub fn stop_segmenting_after(&mut self, index: usize, error: &io::Error) -> bool {
        let refused = matches!(
            error.raw_os_error(),
            Some(nix::libc::EIO | nix::libc::EINVAL | nix::libc::EMSGSIZE | nix::libc::EOPNOTSUPP)
        );
        let Some(&Outgoing { first, count }) = self.datagrams.get(index) else {
            return false;
        };
        if !refused || count == 1 {
            return false;
        }
        self.segmenting = false;
        self.datagrams.truncate(index);
        self.datagrams
            .extend((first..self.order.len()).map(|first| Outgoing { first, count: 1 }));
        true
    }

    /// Forgets the answers (keeps their buffers).
    pub fn clear(&mut self) {
        self.len = 0;
        self.order.clear();
        self.datagrams.clear();
    }
}

/// `sendmmsg(2)`: each of `datagrams` (answers of `order`, to their destination) in one call, a
/// segmented one with its segment size.
#[allow(unsafe_code)]
fn send_many(
    socket: RawFd,
    datagrams: &[Outgoing],
    order: &[usize],
    answers: &[Vec<u8>],
    destinations: &[SocketAddr],
) -> io::Result<usize> {
    use nix::libc;

    /// Room for one control message carrying a `u16`, aligned as `cmsghdr` needs.
    #[derive(Clone, Copy)]
    #[repr(C, align(8))]
    struct SegmentControl([u8; 32]);

    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(order.len());
    let mut addresses: Vec<SockAddr> = Vec::with_capacity(datagrams.len());
    for datagram in datagrams {
        let members = &order[datagram.first..datagram.first + datagram.count];
        slices.extend(members.iter().map(|&i| IoSlice::new(&answers[i])));
        addresses.push(SockAddr::from(destinations[members[0]]));
    }
    let mut controls = vec![SegmentControl([0; 32]); datagrams.len()];
    let mut headers: Vec<libc::mmsghdr> = Vec::with_capacity(datagrams.len());
    let mut next_slice = 0;
    for ((datagram, address), control) in datagrams.iter().zip(&addresses).zip(&mut controls) {
        // SAFETY: an all-zero `msghdr` is a valid empty one (no name, no data, no control).
        let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
        header.msg_name = address.as_ptr().cast_mut().cast();
        header.msg_namelen = address.len();
        // `IoSlice` is ABI-compatible with `iovec` (std guarantees it on Unix); the kernel
        // concatenates a datagram's slices, and cuts a segmented one back at the segment size.
        header.msg_iov = slices.as_ptr().wrapping_add(next_slice).cast_mut().cast();
        header.msg_iovlen = datagram.count;
        next_slice += datagram.count;
        if datagram.count > 1 {
            let segment = u16::try_from(answers[order[datagram.first]].len()).unwrap_or(u16::MAX);
            // SAFETY: the control buffer outlives the call and has room for one `u16` message
            // (CMSG_SPACE(2) is 24 on 64-bit targets, 16 on 32-bit); CMSG_FIRSTHDR returns its
            // start once `msg_controllen` says so.
            unsafe {
                header.msg_control = control.0.as_mut_ptr().cast();
                header.msg_controllen = libc::CMSG_SPACE(2) as _;
                let message = libc::CMSG_FIRSTHDR(&header);
                (*message).cmsg_level = libc::SOL_UDP;
                (*message).cmsg_type = UDP_SEGMENT;
                (*message).cmsg_len = libc::CMSG_LEN(2) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(message).cast::<u16>(), segment);
            }
        }
        headers.push(libc::mmsghdr {
            msg_hdr: header,
            msg_len: 0,
        });
    }
    let count = u32::try_from(headers.len()).unwrap_or(u32::MAX);
    // SAFETY: every header points at a destination, slices and a control buffer that outlive
    // this call (borrowed from the arguments, `addresses`, `slices` and `controls`), and `count`
    // is at most the number of headers.
    let sent = unsafe { libc::sendmmsg(socket, headers.as_mut_ptr(), count, 0) };
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
        // A receive with nothing queued gives up after this instead of waiting for good.
        server
            .set_read_timeout(Some(Duration::from_millis(50)))
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
        // A receive that timed out leaves nothing to answer again (udp.rs's first thread waits
        // with a timeout while queries are spread).
        assert_eq!(received.datagrams().count(), 0);
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
        assert_eq!(replies.seal(), 2);
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
        assert_eq!(replies.seal(), 0);
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
        for text in [&b"a"[..], b"bb", b"ccc"] {
            replies.next_buffer(to).extend_from_slice(text);
        }
        // Longest first; a shorter answer only ends a segmented datagram: "ccc" + "bb", then "a".
        assert_eq!(replies.seal(), 2);
        assert_eq!(replies.send(server.as_raw_fd(), 1).expect("send"), 1);
        assert_eq!(drain(&client), vec![b"a".to_vec()]);
    }

    /// Every datagram waiting on `socket`, as byte strings, sorted.
    fn drain(socket: &UdpSocket) -> Vec<Vec<u8>> {
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let mut buffer = [0u8; 2048];
        let mut got = Vec::new();
        while let Ok(n) = socket.recv(&mut buffer) {
            got.push(buffer[..n].to_vec());
        }
        got.sort();
        got
    }

    #[test]
    fn answers_of_one_length_to_one_asker_leave_as_one_datagram_and_arrive_one_by_one() {
        let (server, first) = pair();
        let second = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut replies = Replies::default();
        let mut want_first: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10]).collect();
        want_first.push(b"tail".to_vec());
        let want_second: Vec<Vec<u8>> = vec![vec![7; 20], vec![8; 20]];
        // Interleaved, as queries from two askers arrive.
        let to_first = first.local_addr().expect("a");
        let to_second = second.local_addr().expect("a");
        for (i, answer) in want_first.iter().enumerate() {
            replies.next_buffer(to_first).extend_from_slice(answer);
            if let Some(answer) = want_second.get(i) {
                replies.next_buffer(to_second).extend_from_slice(answer);
            }
        }
        // Five of 10 bytes and the shorter "tail" to the first asker, two to the second.
        assert_eq!(replies.seal(), 2);
        assert_eq!(replies.segmented(), 8);
        assert_eq!(replies.send(server.as_raw_fd(), 0).expect("send"), 2);
        want_first.sort();
        assert_eq!(drain(&first), want_first);
        assert_eq!(drain(&second), want_second);
    }

    #[test]
    fn segmented_datagrams_stay_within_the_kernels_limits() {
        let (server, client) = pair();
        let to = client.local_addr().expect("a");
        let mut replies = Replies::default();
        for i in 0..70u8 {
            replies.next_buffer(to).extend_from_slice(&[i; 900]);
        }
        // At most 64 segments in a datagram.
        assert_eq!(replies.seal(), 2);
        assert_eq!(replies.send(server.as_raw_fd(), 0).expect("send"), 2);
        assert_eq!(drain(&client).len(), 70);
        // Answers too long to be a segment on any path leave on their own.
        replies.clear();
        for i in 0..3u8 {
            replies
                .next_buffer(to)
                .extend_from_slice(&[i; MAX_SEGMENT + 1]);
        }
        assert_eq!(replies.seal(), 3);
        assert_eq!(replies.send(server.as_raw_fd(), 0).expect("send"), 3);
        assert_eq!(drain(&client).len(), 3);
    }

    #[allow(unsafe_code)]
    fn set_no_check(socket: &UdpSocket) {
        let on: nix::libc::c_int = 1;
        // SAFETY: a valid socket, and a pointer to an int with its size.
        let result = unsafe {
            nix::libc::setsockopt(
                socket.as_raw_fd(),
                nix::libc::SOL_SOCKET,
                nix::libc::SO_NO_CHECK,
                std::ptr::from_ref(&on).cast(),
                std::mem::size_of_val(&on) as nix::libc::socklen_t,
            )
        };
        assert_eq!(result, 0, "SO_NO_CHECK: {}", io::Error::last_os_error());
    }

    #[test]
    fn where_the_kernel_refuses_segmentation_the_answers_go_one_by_one() {
        let (server, client) = pair();
        // Without UDP checksums the kernel refuses to segment (EINVAL), as it does on a route
        // without checksum offload (EIO).
        set_no_check(&server);
        let to = client.local_addr().expect("a");
        let mut replies = Replies::default();
        for i in 0..3u8 {
            replies.next_buffer(to).extend_from_slice(&[i; 10]);
        }
        assert_eq!(replies.seal(), 1);
        let refused = replies
            .send(server.as_raw_fd(), 0)
            .expect_err("segmentation refused");
        assert!(replies.stop_segmenting_after(0, &refused), "{refused}");
        assert_eq!(replies.planned(), 3);
        assert_eq!(replies.segmented(), 0);
        assert_eq!(replies.send(server.as_raw_fd(), 0).expect("send"), 3);
        assert_eq!(drain(&client).len(), 3);
        // And for the batches after.
        replies.clear();
        for i in 0..3u8 {
            replies.next_buffer(to).extend_from_slice(&[i; 10]);
        }
        assert_eq!(replies.seal(), 3);
    }

    #[test]
    fn other_send_errors_do_not_stop_segmenting() {
        let mut replies = Replies::default();
        let to: SocketAddr = "127.0.0.1:9".parse().expect("address");
        for i in 0..3u8 {
            replies.next_buffer(to).extend_from_slice(&[i; 10]);
        }
        assert_eq!(replies.seal(), 1);
        let unreachable = io::Error::from_raw_os_error(nix::libc::ENETUNREACH);
        assert!(!replies.stop_segmenting_after(0, &unreachable));
        assert_eq!(replies.planned(), 1);
    }
}
