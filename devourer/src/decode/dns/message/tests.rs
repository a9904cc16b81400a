use super::*;
use crate::decode::dns::testwire::*;

#[test]
fn queries_and_responses_decode_with_dig_style_answers() {
    let q = parse(&query(0x1234, "www.example.com", 1)).unwrap();
    assert_eq!(
        (q.id, q.response, q.rcode, q.partial),
        (0x1234, false, 0, false)
    );
    let qq = q.question.unwrap();
    assert_eq!(
        (qq.name.as_str(), qq.qtype, qq.qclass),
        ("www.example.com", 1, 1)
    );

    let r = parse(&response(
        7,
        0,
        "www.example.com",
        1,
        &[
            cname("www.example.com", 300, "web.example.net"),
            a("web.example.net", 60, [192, 0, 2, 7]),
        ],
    ))
    .unwrap();
    assert!(r.response);
    assert_eq!(r.counts, [1, 2, 0, 0]);
    let dig: Vec<String> = r.answers.iter().map(|a| a.dig().to_owned()).collect();
    assert_eq!(
        dig,
        [
            "www.example.com. 300 IN CNAME web.example.net.",
            "web.example.net. 60 IN A 192.0.2.7"
        ]
    );
    assert_eq!(r.answers[0].data_log(), "web.example.net");
    assert_eq!(r.addresses, [("192.0.2.7".parse().unwrap(), 60)]);
}

#[test]
fn hostile_bytes_are_escaped_in_names_and_txt() {
    let evil = name(&[b"a b\nc", b"x.y", b"\xff\\"]);
    let m = parse(&msg(
        1,
        QR,
        &evil,
        16,
        &[txt("t.example", 5, &[b"say \"hi\"\n", b"\x00ok"])],
    ))
    .unwrap();
    let q = m.question.unwrap();
    assert_eq!(q.name, "a\\032b\\010c.x\\.y.\\255\\\\");
    assert_eq!(m.answers[0].data(), "\"say \\\"hi\\\"\\010\" \"\\000ok\"");
    for a in &m.answers {
        assert!(!a.dig().contains('\n'));
    }
}

#[test]
fn cut_records_still_give_id_flags_and_question() {
    let full = response(
        9,
        3,
        "gone.example",
        28,
        &[aaaa("gone.example", 30, [1; 16])],
    );
    let cut = &full[..full.len() - 7];
    let m = parse(cut).unwrap();
    assert!(m.partial);
    assert_eq!((m.id, m.response, m.rcode), (9, true, 3));
    assert_eq!(m.question.unwrap().name, "gone.example");
    assert!(m.answers.is_empty());
}

#[test]
fn a_message_cut_inside_its_answers_keeps_the_ones_that_fit() {
    let full = response(
        10,
        0,
        "many.example",
        1,
        &[
            a("many.example", 60, [192, 0, 2, 1]),
            a("many.example", 60, [192, 0, 2, 2]),
            a("many.example", 60, [192, 0, 2, 3]),
        ],
    );
    // The third A record loses its last two address bytes.
    let m = parse(&full[..full.len() - 2]).unwrap();
    assert!(m.partial);
    let data: Vec<&str> = m.answers.iter().map(|a| a.data()).collect();
    assert_eq!(data, ["192.0.2.1", "192.0.2.2"]);
    assert_eq!(m.addresses.len(), 2, "the names of what fit are learnt");
}

#[test]
fn a_query_needs_only_its_question_and_a_broken_one_is_refused() {
    // A query whose records after the question are broken (a cut OPT record): its question
    // is what a transaction needs.
    let mut q = query(0x4242, "www.example.com", 28);
    q[11] = 1; // ARCOUNT 1, with no record there
    q.extend_from_slice(&[0, 0, 41]);
    let m = parse(&q).unwrap();
    assert_eq!((m.id, m.response, m.partial), (0x4242, false, false));
    let qq = m.question.unwrap();
    assert_eq!((qq.name.as_str(), qq.qtype), ("www.example.com", 28));
    // Its question cut short: refused as a bad question.
    let q = query(0x4243, "www.example.com", 1);
    assert_eq!(parse(&q[..q.len() - 3]), Err(ParseError::BadQuestion));
}

#[test]
fn garbage_is_refused_with_a_reason() {
    assert_eq!(parse(&[0; 11]), Err(ParseError::TooShort));
    let mut bad = query(1, "x.example", 1);
    bad[12] = 200; // label longer than the message
    assert_eq!(parse(&bad), Err(ParseError::BadQuestion));
}

#[test]
fn mnemonics_follow_dig() {
    assert_eq!(type_name(28), "AAAA");
    assert_eq!(type_name(65280), "TYPE65280");
    assert_eq!(class_name(1), "IN");
    assert_eq!(class_name(77), "CLASS77");
    assert_eq!(rcode_name(3), "NXDOMAIN");
    assert_eq!(rcode_name(12), "RCODE12");
}

#[test]
fn root_name_is_empty_without_dot() {
    let m = parse(&msg(1, 0, &[0], 2, &[])).unwrap();
    assert_eq!(m.question.unwrap().name, "");
}

#[test]
fn only_addresses_on_the_questions_cname_chain_name_flows() {
    let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
    let r = parse(&response(
        9,
        0,
        "WWW.Example.com",
        1,
        &[
            // Out of order, mixed case: still the chain www -> web -> edge.
            a("edge.example.org", 20, [192, 0, 2, 9]),
            cname("web.example.net", 300, "edge.example.org"),
            cname("www.example.com", 300, "web.example.net"),
            // Not on the chain: a record for a name nobody asked about.
            a("bank.example", 86400, [198, 51, 100, 1]),
            cname("other.example", 60, "bank.example"),
            aaaa(
                "www.example.COM",
                30,
                [0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            ),
        ],
    ))
    .unwrap();
    assert_eq!(r.answers.len(), 6, "every answer is still in the record");
    assert_eq!(
        r.addresses,
        [(ip("192.0.2.9"), 20), (ip("2001:db8::1"), 30)],
        "the unrelated bank.example is not learnt"
    );
    // A loop of CNAMEs ends.
    let r = parse(&response(
        10,
        0,
        "a.example",
        1,
        &[
            cname("a.example", 60, "b.example"),
            cname("b.example", 60, "a.example"),
            a("b.example", 60, [192, 0, 2, 10]),
        ],
    ))
    .unwrap();
    assert_eq!(r.addresses, [(ip("192.0.2.10"), 60)]);
}
