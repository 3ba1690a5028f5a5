//! The pure part of the server: given a parsed question and the daemon's
//! records, either the answer for a name in banger's zones or the decision
//! to forward it.

use std::net::Ipv4Addr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use super::{Error, Records, TTL_SECS};

/// The UDP payload size the server advertises in its own answers
/// (the size DNS flag day 2020 settled on).
pub(super) const EDNS_PAYLOAD: u16 = 1232;

/// The zones answered locally, with their SOA records ready for the
/// authority section of negative answers.
#[derive(Debug)]
pub(super) struct Zones {
    domain: Name,
    domain_soa: Record,
    reverse: Option<(Name, Record)>,
}

/// What to do with one request.
#[derive(Debug)]
pub(super) enum Decision {
    /// Send this message back.
    Answer(Message),
    /// Ask the upstreams.
    Forward,
    /// Not a question (a stray response): say nothing.
    Ignore,
}

impl Zones {
    /// Zones for `domain` (`vm`) and, if given, the reverse zone
    /// (`0.213.10.in-addr.arpa.`).
    pub(super) fn new(domain: &str, reverse: Option<&str>) -> Result<Zones, Error> {
        let domain = zone_name(domain)?;
        let reverse = match reverse {
            Some(zone) => {
                let zone = zone_name(zone)?;
                Some((zone.clone(), soa(&zone)))
            }
            None => None,
        };
        Ok(Zones { domain_soa: soa(&domain), domain, reverse })
    }
}

fn zone_name(name: &str) -> Result<Name, Error> {
    let fqdn = format!("{}.", name.trim_end_matches('.'));
    Name::from_ascii(&fqdn)
        .map(|n| n.to_lowercase())
        .map_err(|source| Error::ZoneName { name: name.to_owned(), source })
}

fn soa(zone: &Name) -> Record {
    let rname = Name::from_ascii("hostmaster").and_then(|h| h.append_domain(zone)).unwrap_or_else(|_| zone.clone());
    // The minimum (last field) is the negative-caching time: as short as
    // the records themselves, a VM created a second later must resolve.
    let soa = SOA::new(zone.clone(), rname, 1, 3600, 600, 86400, TTL_SECS);
    Record::from_rdata(zone.clone(), TTL_SECS, RData::SOA(soa))
}

/// Decides what to do with `request`.
pub(super) fn decide(zones: &Zones, records: &dyn Records, request: &Message) -> Decision {
    if request.metadata.message_type != MessageType::Query {
        return Decision::Ignore;
    }
    if request.metadata.op_code != OpCode::Query {
        return Decision::Answer(reply(request, ResponseCode::NotImp));
    }
    let [query] = request.queries.as_slice() else {
        return Decision::Answer(reply(request, ResponseCode::FormErr));
    };
    let name = &query.name;
    let class_ok = matches!(query.query_class, DNSClass::IN | DNSClass::ANY);
    let qtype = query.query_type;

    if zones.domain.zone_of(name) {
        if !class_ok {
            return Decision::Answer(reply(request, ResponseCode::Refused));
        }
        let relative = relative_name(name, &zones.domain);
        let found = match relative.as_deref() {
            None => Found::Apex,
            Some(vm) => match records.address(vm) {
                Some(addr) => Found::Data(RData::A(A(addr)), RecordType::A),
                None => Found::Nothing,
            },
        };
        return Decision::Answer(authoritative(request, &zones.domain_soa, found, qtype));
    }

    if let Some((zone, zone_soa)) = &zones.reverse {
        if zone.zone_of(name) {
            if !class_ok {
                return Decision::Answer(reply(request, ResponseCode::Refused));
            }
            let found = match reverse_address(name, zone) {
                Reverse::Apex => Found::Apex,
                Reverse::Between => Found::Empty,
                Reverse::Invalid => Found::Nothing,
                Reverse::Address(addr) => match records.name_of(addr) {
                    Some(vm) => match vm_name(&vm, &zones.domain) {
                        Some(target) => Found::Data(RData::PTR(PTR(target)), RecordType::PTR),
                        None => Found::Empty,
                    },
                    None => Found::Nothing,
                },
            };
            return Decision::Answer(authoritative(request, zone_soa, found, qtype));
        }
    }
    Decision::Forward
}

/// What a zone holds at a name.
enum Found {
    /// The zone's apex: only the SOA.
    Apex,
    /// A name with one record, of that type.
    Data(RData, RecordType),
    /// A name that exists with no records (an empty non-terminal).
    Empty,
    /// No such name.
    Nothing,
}

fn authoritative(request: &Message, zone_soa: &Record, found: Found, qtype: RecordType) -> Message {
    let owner = request.queries[0].name.clone();
    let mut msg = reply(request, ResponseCode::NoError);
    msg.metadata.authoritative = true;
    match found {
        Found::Apex if matches!(qtype, RecordType::SOA | RecordType::ANY) => {
            msg.add_answer(zone_soa.clone());
        }
        Found::Data(data, rtype) if qtype == rtype || qtype == RecordType::ANY => {
            msg.add_answer(Record::from_rdata(owner, TTL_SECS, data));
        }
        Found::Nothing => {
            msg.metadata.response_code = ResponseCode::NXDomain;
            msg.add_authority(zone_soa.clone());
        }
        // NODATA: the name exists, not with this type.
        Found::Apex | Found::Data(..) | Found::Empty => {
            msg.add_authority(zone_soa.clone());
        }
    }
    msg
}

/// An empty answer to `request` with `rcode`, echoing its question.
pub(super) fn reply(request: &Message, rcode: ResponseCode) -> Message {
    let mut msg = Message::response(request.metadata.id, request.metadata.op_code);
    msg.metadata.recursion_desired = request.metadata.recursion_desired;
    msg.metadata.recursion_available = true;
    msg.metadata.checking_disabled = request.metadata.checking_disabled;
    msg.metadata.response_code = rcode;
    msg.add_queries(request.queries.iter().cloned());
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        msg.set_edns(edns);
    }
    msg
}

/// A FORMERR for bytes that are not a DNS message but carry a header: the
/// id and opcode are echoed so the client can match it. `None` when not
/// even the header is there or it is not a query.
pub(super) fn formerr(bytes: &[u8]) -> Option<Vec<u8>> {
    if bytes.len() < 12 || bytes[2] & 0x80 != 0 {
        return None;
    }
    let mut out = vec![0u8; 12];
    out[..2].copy_from_slice(&bytes[..2]);
    // QR set, opcode and RD kept; RCODE 1 (FORMERR); all counts zero.
    out[2] = 0x80 | (bytes[2] & 0x79);
    out[3] = 0x80 | 1;
    Some(out)
}

/// The name below `zone`, lowercase, labels joined with dots; `None` at
/// the apex.
fn relative_name(name: &Name, zone: &Name) -> Option<String> {
    let below = usize::from(name.num_labels()) - usize::from(zone.num_labels());
    if below == 0 {
        return None;
    }
    let labels: Vec<String> =
        name.iter().take(below).map(|l| String::from_utf8_lossy(l).to_ascii_lowercase()).collect();
    Some(labels.join("."))
}

/// `NAME.vm.` for the PTR target; `None` if the daemon's name is not a
/// valid DNS name.
fn vm_name(vm: &str, domain: &Name) -> Option<Name> {
    Name::from_ascii(vm).ok()?.append_domain(domain).ok()
}

/// Where a name in the reverse zone falls.
#[derive(Debug, PartialEq, Eq)]
enum Reverse {
    Apex,
    /// Between the apex and a full address (`0.213.10.in-addr.arpa.` in
    /// `213.10.in-addr.arpa.`): exists, holds nothing.
    Between,
    Address(Ipv4Addr),
    Invalid,
}

fn reverse_address(name: &Name, zone: &Name) -> Reverse {
    let labels: Vec<&[u8]> = name.iter().collect();
    if labels.len() == usize::from(zone.num_labels()) {
        return Reverse::Apex;
    }
    // a.b.c.d.in-addr.arpa.
    match labels.len() {
        6 => {}
        n if n < 6 => return Reverse::Between,
        _ => return Reverse::Invalid,
    }
    let mut octets = [0u8; 4];
    for (i, label) in labels[..4].iter().enumerate() {
        let Some(octet) = std::str::from_utf8(label)
            .ok()
            .filter(|s| !(s.len() > 1 && s.starts_with('0')))
            .and_then(|s| s.parse::<u8>().ok())
        else {
            return Reverse::Invalid;
        };
        octets[3 - i] = octet;
    }
    Reverse::Address(Ipv4Addr::from(octets))
}

#[cfg(test)]
#[path = "answer_tests.rs"]
mod tests;
