//! The hot path in wire format: `NAME A?` and `NAME AAAA?` for a local name, answered from
//! pre-encoded records.
//!
//! Almost every query a container sends is an A question (and, from glibc's `getaddrinfo`, its
//! AAAA twin) for a name on its own networks. For those, decoding into hickory's types and encoding
//! the answer again costs more than the rest of the query's trip (BENCHMARKS.md, DNS), so the views
//! keep each name's A and AAAA records already encoded and this module answers by copying bytes
//! (no records of the asked type: NODATA, as the handler answers). It only takes queries it fully
//! understands: one question, class IN, type A or AAAA, no compression, at most an EDNS(0) OPT
//! record, an answer that fits. Anything else (and every name that is not local) goes the ordinary
//! way through the hickory handler, which stays the reference: the unit tests check both give the
//! same answer.

use std::collections::HashMap;

use hickory_server::proto::rr::{LowerName, RData, Record};

use super::views::LOCAL_TTL;

const HEADER: usize = 12;
const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
const TYPE_OPT: u16 = 41;
/// A UDP answer without EDNS may be 512 bytes at most (RFC 1035 §4.2.1).
const CLASSIC_UDP: usize = 512;
/// One answer record before its address: pointer to the question's name, type, class, TTL, length.
const RECORD_HEAD: usize = 12;

/// A name's A and AAAA records, each encoded as answer records whose owner is the question name
/// (offset 12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireAnswer {
    a: WireRecords,
    aaaa: WireRecords,
}

/// Answer records of one type, encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct WireRecords {
    count: u16,
    records: Box<[u8]>,
}

impl WireRecords {
    /// Encodes `addresses` (the octets of each) as records of type `kind`.
    fn encode<'a>(kind: u16, addresses: impl ExactSizeIterator<Item = &'a [u8]>) -> Option<Self> {
        let count = u16::try_from(addresses.len()).ok()?;
        let mut out = Vec::with_capacity(addresses.len() * (RECORD_HEAD + 16));
        for address in addresses {
            out.extend_from_slice(&[0xc0, 0x0c]);
            out.extend_from_slice(&kind.to_be_bytes());
            out.extend_from_slice(&CLASS_IN.to_be_bytes());
            out.extend_from_slice(&LOCAL_TTL.to_be_bytes());
            out.extend_from_slice(&u16::try_from(address.len()).ok()?.to_be_bytes());
            out.extend_from_slice(address);
        }
        Some(WireRecords {
            count,
            records: out.into_boxed_slice(),
        })
    }
}

/// The lower-case wire form of a name (length-prefixed labels, ending with the root's 0).
pub fn wire_name(name: &LowerName) -> Box<[u8]> {
    let name: hickory_server::proto::rr::Name = name.clone().into();
    let mut out = Vec::with_capacity(name.len() + 2);
    for label in name.iter() {
        out.push(label.len() as u8);
        out.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    out.push(0);
    out.into_boxed_slice()
}

/// Encodes the A and AAAA records of one name (other records are not answered here).
pub fn encode(records: &[Record]) -> Option<WireAnswer> {
    let v4: Vec<[u8; 4]> = records
        .iter()
        .filter_map(|r| match r.data {
            RData::A(a) => Some(a.0.octets()),
            _ => None,
        })
        .collect();
    let v6: Vec<[u8; 16]> = records
        .iter()
        .filter_map(|r| match r.data {
            RData::AAAA(a) => Some(a.0.octets()),
            _ => None,
        })
        .collect();
    Some(WireAnswer {
        a: WireRecords::encode(TYPE_A, v4.iter().map(|a| a.as_slice()))?,
        aaaa: WireRecords::encode(TYPE_AAAA, v6.iter().map(|a| a.as_slice()))?,
    })
}

/// A query this module can answer: where its question ends, its lower-cased name, its type (A or
/// AAAA), its EDNS size.
#[derive(Debug)]
struct Simple {
    question_end: usize,
    name_len: usize,
    kind: u16,
    /// The client's EDNS payload size, if it sent an OPT record.
    edns: Option<u16>,
}

fn u16_at(packet: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*packet.get(at)?, *packet.get(at + 1)?]))
}

/// Checks the query and writes its lower-cased name into `name`.
fn parse(packet: &[u8], name: &mut [u8; 256]) -> Option<Simple> {
    if packet.len() < HEADER {
        return None;
    }
    let flags = u16_at(packet, 2)?;
    // QR=0 (a query), OPCODE=0 (QUERY); AA/TC/Z/RCODE bits are not looked at in queries.
    let is_plain_query = flags & 0xf800 == 0;
    let counts = (
        u16_at(packet, 4)?,
        u16_at(packet, 6)?,
        u16_at(packet, 8)?,
        u16_at(packet, 10)?,
    );
    if !is_plain_query || counts.0 != 1 || counts.1 != 0 || counts.2 != 0 || counts.3 > 1 {
        return None;
    }
    let mut at = HEADER;
    let mut name_len = 0;
    loop {
        let length = usize::from(*packet.get(at)?);
        // Compression pointers or extended labels in a question: leave it to hickory.
        if length > 63 || name_len + length + 1 > 255 {
            return None;
        }
        name[name_len] = length as u8;
        let label = packet.get(at + 1..at + 1 + length)?;
        for (slot, byte) in name[name_len + 1..name_len + 1 + length]
            .iter_mut()
            .zip(label)
        {
            *slot = byte.to_ascii_lowercase();
        }
        name_len += length + 1;
        at += length + 1;
        if length == 0 {
            break;
        }
    }
    let kind = u16_at(packet, at)?;
    if (kind != TYPE_A && kind != TYPE_AAAA) || u16_at(packet, at + 2)? != CLASS_IN {
        return None;
    }
    let question_end = at + 4;
    let edns = if counts.3 == 1 {
        // Only a bare EDNS(0) OPT: root name, type 41, payload size, version 0, then its data.
        let opt = packet.get(question_end..)?;
        let (&root, payload) = (opt.first()?, u16_at(opt, 3)?);
        let version = *opt.get(6)?;
        let data_len = usize::from(u16_at(opt, 9)?);
        if root != 0 || u16_at(opt, 1)? != TYPE_OPT || version != 0 || opt.len() != 11 + data_len {
            return None;
        }
        Some(payload)
    } else if packet.len() != question_end {
        return None;
    } else {
        None
    };
    Some(Simple {
        question_end,
        name_len,
        kind,
        edns,
    })
}

/// Answers `packet` into `out` if it is a simple A or AAAA query for a name `lookup` knows (with
/// no records of that type: NODATA). Returns false (and leaves the query to the full handler)
/// otherwise.
pub fn answer<'a>(
    packet: &[u8],
    lookup: impl FnOnce(&[u8]) -> Option<&'a WireAnswer>,
    out: &mut Vec<u8>,
) -> bool {
    let mut name = [0u8; 256];
    let Some(query) = parse(packet, &mut name) else {
        return false;
    };
    let Some(answer) = lookup(&name[..query.name_len]) else {
        return false;
    };
    let found = if query.kind == TYPE_AAAA {
        &answer.aaaa
    } else {
        &answer.a
    };
    let opt_len = if query.edns.is_some() { 11 } else { 0 };
    let size = query.question_end + found.records.len() + opt_len;
    let limit = query
        .edns
        .map_or(CLASSIC_UDP, |p| usize::from(p).max(CLASSIC_UDP));
    if size > limit {
        // Truncation is the full handler's business.
        return false;
    }
    out.clear();
    // `parse` checked the header is there.
    let (id, flags) = (&packet[..2], (packet[2], packet[3]));
    out.extend_from_slice(id);
    // QR=1, OPCODE=0, AA=1, TC=0, RD as asked; RA=1, Z=0, AD=0, CD as asked, RCODE=NOERROR.
    out.push(0x84 | (flags.0 & 0x01));
    out.push(0x80 | (flags.1 & 0x10));
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&found.count.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&u16::from(query.edns.is_some()).to_be_bytes());
    out.extend_from_slice(&packet[HEADER..query.question_end]);
    out.extend_from_slice(&found.records);
    if let Some(payload) = query.edns {
        // Our OPT: the client's payload size (at least 512), version 0, no flags, no options.
        out.push(0);
        out.extend_from_slice(&TYPE_OPT.to_be_bytes());
        out.extend_from_slice(&payload.max(CLASSIC_UDP as u16).to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    }
    true
}

/// The wire answers of a view, keyed by lower-cased wire name.
pub type WireNames = HashMap<Box<[u8]>, WireAnswer>;

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_server::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
    use hickory_server::proto::rr::rdata::{A, AAAA};
    use hickory_server::proto::rr::{Name, RecordType};

    fn table() -> WireNames {
        let name = Name::from_ascii("web.").expect("name");
        let records = [
            Record::from_rdata(name.clone(), 0, RData::A(A::new(172, 18, 0, 2))),
            Record::from_rdata(name.clone(), 0, RData::A(A::new(172, 18, 0, 3))),
        ];
        let mut table = WireNames::new();
        table.insert(
            wire_name(&LowerName::new(&name)),
            encode(&records).expect("encodes"),
        );
        table
    }

    fn query(name: &str, kind: RecordType, edns: bool) -> Vec<u8> {
        let mut message = Message::new(0x1234, MessageType::Query, OpCode::Query);
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(Name::from_ascii(name).expect("name"), kind));
        if edns {
            let mut opt = Edns::new();
            opt.set_max_payload(1232);
            message.set_edns(opt);
        }
        message.to_vec().expect("encodes")
    }

    #[test]
    fn answers_a_for_a_known_name_like_the_handler_would() {
        let table = table();
        for edns in [false, true] {
            let packet = query("WeB.", RecordType::A, edns);
            let mut out = Vec::new();
            assert!(answer(&packet, |n| table.get(n), &mut out), "edns {edns}");
            let response = Message::from_vec(&out).expect("answer parses");
            assert_eq!(response.metadata.id, 0x1234);
            assert_eq!(response.metadata.message_type, MessageType::Response);
            assert!(response.metadata.authoritative);
            assert!(response.metadata.recursion_desired && response.metadata.recursion_available);
            assert_eq!(response.metadata.response_code, ResponseCode::NoError);
            // The question comes back as asked (case kept); records carry its name.
            assert_eq!(response.queries[0].name().to_ascii(), "WeB.");
            let addresses: Vec<_> = response
                .answers
                .iter()
                .map(|r| (r.data.clone(), r.ttl))
                .collect();
            assert_eq!(
                addresses,
                vec![
                    (RData::A(A::new(172, 18, 0, 2)), 0),
                    (RData::A(A::new(172, 18, 0, 3)), 0)
                ]
            );
            assert_eq!(response.edns.is_some(), edns);
            if let Some(opt) = &response.edns {
                assert_eq!(opt.max_payload(), 1232);
            }
        }
    }

    /// AAAA answers the IPv6 records; a name without records of the asked type gets NODATA.
    #[test]
    fn answers_aaaa_and_nodata() {
        let mut table = table();
        let name = Name::from_ascii("v6.").expect("name");
        let address: std::net::Ipv6Addr = "fd00:18::2".parse().expect("ipv6");
        let records = [
            Record::from_rdata(name.clone(), 0, RData::AAAA(AAAA(address))),
            Record::from_rdata(name.clone(), 0, RData::A(A::new(172, 18, 0, 9))),
        ];
        table.insert(
            wire_name(&LowerName::new(&name)),
            encode(&records).expect("encodes"),
        );
        let ask = |asked: &str, kind: RecordType| {
            let mut out = Vec::new();
            assert!(answer(
                &query(asked, kind, true),
                |n| table.get(n),
                &mut out
            ));
            let response = Message::from_vec(&out).expect("answer parses");
            assert_eq!(response.metadata.response_code, ResponseCode::NoError);
            assert!(response.metadata.authoritative);
            assert_eq!(response.queries[0].query_type(), kind);
            response
                .answers
                .iter()
                .map(|r| r.data.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            ask("V6.", RecordType::AAAA),
            vec![RData::AAAA(AAAA(address))]
        );
        assert_eq!(
            ask("v6.", RecordType::A),
            vec![RData::A(A::new(172, 18, 0, 9))]
        );
        assert_eq!(ask("web.", RecordType::AAAA), vec![]);
    }

    #[test]
    fn leaves_everything_else_to_the_handler() {
        let table = table();
        let mut out = Vec::new();
        for packet in [
            query("nosuch.", RecordType::A, false),
            query("web.", RecordType::MX, false),
            query("web.", RecordType::PTR, true),
            vec![0u8; 5],
            b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01".to_vec(),
        ] {
            assert!(!answer(&packet, |n| table.get(n), &mut out), "{packet:?}");
        }
        // A response (QR=1) is never answered.
        let mut response = query("web.", RecordType::A, false);
        response[2] |= 0x80;
        assert!(!answer(&response, |n| table.get(n), &mut out));
        // Trailing garbage after the question.
        let mut trailing = query("web.", RecordType::A, false);
        trailing.push(0);
        assert!(!answer(&trailing, |n| table.get(n), &mut out));
    }

    #[test]
    fn random_input_never_panics() {
        let table = table();
        let mut out = Vec::new();
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for len in 0..600 {
            let packet: Vec<u8> = (0..len % 80)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = answer(&packet, |n| table.get(n), &mut out);
        }
    }
}
