use std::collections::HashMap;

use hickory_proto::op::Query;

use super::*;

struct Fixed(HashMap<String, Ipv4Addr>);

impl Records for Fixed {
    fn address(&self, name: &str) -> Option<Ipv4Addr> {
        self.0.get(name).copied()
    }
    fn name_of(&self, addr: Ipv4Addr) -> Option<String> {
        self.0.iter().find(|(_, a)| **a == addr).map(|(n, _)| n.clone())
    }
}

fn records() -> Fixed {
    Fixed(HashMap::from([("web".to_owned(), Ipv4Addr::new(10, 213, 0, 5))]))
}

fn zones() -> Zones {
    Zones::new("vm", Some("0.213.10.in-addr.arpa.")).unwrap()
}

fn ask(name: &str, qtype: RecordType) -> Decision {
    let mut request = Message::query();
    request.metadata.id = 4242;
    request.metadata.recursion_desired = true;
    request.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    decide(&zones(), &records(), &request)
}

fn answer(name: &str, qtype: RecordType) -> Message {
    match ask(name, qtype) {
        Decision::Answer(msg) => msg,
        other => panic!("{name} {qtype}: expected an answer, got {other:?}"),
    }
}

#[test]
fn a_for_an_existing_name_any_case() {
    for name in ["web.vm.", "WEB.Vm.", "web.vm"] {
        let msg = answer(name, RecordType::A);
        assert_eq!(msg.metadata.id, 4242);
        assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
        assert!(msg.metadata.authoritative && msg.metadata.recursion_desired);
        assert_eq!(msg.answers.len(), 1);
        let record = &msg.answers[0];
        assert_eq!(record.ttl, TTL_SECS);
        assert_eq!(record.data, RData::A(A(Ipv4Addr::new(10, 213, 0, 5))));
        // The owner echoes the question as asked.
        assert!(record.name.eq_case(&Name::from_ascii(name).unwrap()));
    }
}

#[test]
fn other_types_for_an_existing_name_are_nodata() {
    for qtype in [RecordType::AAAA, RecordType::MX, RecordType::TXT] {
        let msg = answer("web.vm.", qtype);
        assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
        assert!(msg.answers.is_empty());
        assert_eq!(msg.authorities[0].record_type(), RecordType::SOA);
    }
}

#[test]
fn unknown_names_are_nxdomain_with_the_soa() {
    for name in ["nope.vm.", "a.web.vm."] {
        let msg = answer(name, RecordType::A);
        assert_eq!(msg.metadata.response_code, ResponseCode::NXDomain);
        assert!(msg.answers.is_empty());
        let soa = &msg.authorities[0];
        assert_eq!(soa.name, Name::from_ascii("vm.").unwrap());
        let RData::SOA(data) = &soa.data else { panic!("not a SOA: {soa:?}") };
        assert_eq!(data.minimum, TTL_SECS);
    }
}

#[test]
fn the_apex_has_only_its_soa() {
    let msg = answer("vm.", RecordType::SOA);
    assert_eq!(msg.answers.len(), 1);
    assert_eq!(msg.answers[0].record_type(), RecordType::SOA);
    let msg = answer("vm.", RecordType::A);
    assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
    assert!(msg.answers.is_empty());
}

#[test]
fn ptr_in_the_reverse_zone() {
    let msg = answer("5.0.213.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
    let target = Name::from_ascii("web.vm.").unwrap();
    assert_eq!(msg.answers[0].data, RData::PTR(PTR(target)));

    let msg = answer("6.0.213.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(msg.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(msg.authorities[0].name, Name::from_ascii("0.213.10.in-addr.arpa.").unwrap());

    for bad in ["05.0.213.10.in-addr.arpa.", "x.0.213.10.in-addr.arpa.", "1.5.0.213.10.in-addr.arpa."] {
        let msg = answer(bad, RecordType::PTR);
        assert_eq!(msg.metadata.response_code, ResponseCode::NXDomain, "{bad}");
    }
    let msg = answer("5.0.213.10.in-addr.arpa.", RecordType::A);
    assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
    assert!(msg.answers.is_empty());
}

#[test]
fn a_wider_reverse_zone_has_empty_non_terminals() {
    let zone = Name::from_ascii("213.10.in-addr.arpa.").unwrap();
    let at = |n: &str| reverse_address(&Name::from_ascii(n).unwrap(), &zone);
    assert_eq!(at("213.10.in-addr.arpa."), Reverse::Apex);
    assert_eq!(at("0.213.10.in-addr.arpa."), Reverse::Between);
    assert_eq!(at("7.0.213.10.in-addr.arpa."), Reverse::Address(Ipv4Addr::new(10, 213, 0, 7)));
}

#[test]
fn everything_else_is_forwarded() {
    for (name, qtype) in [
        ("example.org.", RecordType::A),
        ("vm.example.org.", RecordType::A),
        ("5.1.213.10.in-addr.arpa.", RecordType::PTR),
        ("1.0.0.127.in-addr.arpa.", RecordType::PTR),
    ] {
        assert!(matches!(ask(name, qtype), Decision::Forward), "{name}");
    }
}

#[test]
fn malformed_requests() {
    let mut two = Message::query();
    two.add_query(Query::query(Name::from_ascii("a.vm.").unwrap(), RecordType::A));
    two.add_query(Query::query(Name::from_ascii("b.vm.").unwrap(), RecordType::A));
    let Decision::Answer(msg) = decide(&zones(), &records(), &two) else { panic!("two questions must be answered") };
    assert_eq!(msg.metadata.response_code, ResponseCode::FormErr);

    let mut update = Message::query();
    update.metadata.op_code = OpCode::Update;
    let Decision::Answer(msg) = decide(&zones(), &records(), &update) else { panic!("an update must be answered") };
    assert_eq!(msg.metadata.response_code, ResponseCode::NotImp);

    let stray = Message::response(1, OpCode::Query);
    assert!(matches!(decide(&zones(), &records(), &stray), Decision::Ignore));
}

#[test]
fn formerr_echoes_the_id_of_garbage() {
    let garbage = [0xab, 0xcd, 0x01, 0x00, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 1, 2, 3];
    let out = formerr(&garbage).unwrap();
    assert_eq!(&out[..2], &[0xab, 0xcd]);
    let msg = Message::from_vec(&out).unwrap();
    assert_eq!(msg.metadata.response_code, ResponseCode::FormErr);
    assert!(msg.metadata.recursion_desired);
    assert!(formerr(&garbage[..5]).is_none());
    let mut response = garbage;
    response[2] |= 0x80;
    assert!(formerr(&response).is_none());
}

#[test]
fn edns_is_answered_with_edns() {
    let mut request = Message::query();
    request.add_query(Query::query(Name::from_ascii("web.vm.").unwrap(), RecordType::A));
    request.set_edns(Edns::new());
    let Decision::Answer(msg) = decide(&zones(), &records(), &request) else { panic!("expected an answer") };
    assert_eq!(msg.edns.unwrap().max_payload(), EDNS_PAYLOAD);
}
