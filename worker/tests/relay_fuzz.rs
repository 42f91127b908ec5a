//! Abusive inputs: random bytes, and mutations of valid messages (requests with our Record-Route
//! tokens, responses with our Via) on every kind of arrival. The relay never panics, and whatever
//! it sends parses again: a forwarded request has exactly one Via more (ours, on top), a
//! forwarded response one less, and neither has more Route entries than it came with.

#[path = "common/relay_world.rs"]
mod world;

use proptest::prelude::*;
use shm::Proto;
use worker::relay::{Action, Direction};
use worker::sip;
use world::*;

/// Valid messages of the world to mutate: an INVITE, the same with our Record-Route as Route (in
/// dialog), a response carrying our Via, a REGISTER, an INVITE through a Path.
fn corpus() -> Vec<Vec<u8>> {
    let w = world();
    let invite = "INVITE sip:bob@203.0.113.77 SIP/2.0\r\n\
        Via: SIP/2.0/UDP 10.1.1.5:5062;branch=z9hG4bKa1;rport, SIP/2.0/TCP [2001:db8::7];branch=z9hG4bKa0\r\n\
        Max-Forwards: 3\r\nTo: <sip:bob@b.example>\r\nFrom: \"A, b\" <sip:a@a.example>;tag=f1\r\n\
        Call-ID: fz-1\r\nCSeq: 5 INVITE\r\nRoute: <sip:a.sbc.example;lr>\r\nContact: <sip:a@203.0.113.5>\r\n\
        Supported: path\r\nContent-Length: 2\r\n\r\nhi";
    let (_, fwd) = w.handle(invite, udp(A_UDP, PHONE_A));
    let rr = read(&fwd).record_routes.join(", ");
    let in_dialog = format!(
        "BYE sip:bob@192.0.2.50 SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.1.5:5062;branch=z9hG4bKb1\r\n\
         Route: {rr}, <sip:192.0.2.99;lr>\r\nMax-Forwards: 70\r\nTo: <sip:bob@b.example>;tag=t\r\n\
         From: <sip:a@a.example>;tag=f1\r\nCall-ID: fz-1\r\nCSeq: 6 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    let ok = response_to(&fwd, "200 OK", Some("t"), "sip:bob@192.0.2.50");
    let register = "REGISTER sip:a.sbc.example SIP/2.0\r\nv: SIP/2.0/TCP h;branch=z9hG4bKr\r\n\
        f: <sip:c@a>;tag=1\r\nt: <sip:c@a>\r\ni: r-1\r\nCSeq: 1 REGISTER\r\nl: 0\r\n\r\n";
    let (_, reg) = w.handle(register, over(A_TCP, Proto::Tcp, CLIENT, FLOW));
    let path = read(&reg).paths.join(", ");
    let via_path = format!(
        "INVITE sip:c@10.0.0.2;transport=tcp SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.50;branch=z9hG4bKp\r\n\
         Route: {path}\r\nf: <sip:d@x>;tag=2\r\nt: <sip:c@a>\r\ni: p-1\r\nCSeq: 1 INVITE\r\nl: 0\r\n\r\n"
    );
    vec![
        invite.as_bytes().to_vec(),
        fwd.into_bytes(),
        in_dialog.into_bytes(),
        ok.into_bytes(),
        register.as_bytes().to_vec(),
        via_path.into_bytes(),
    ]
}

fn arrivals() -> Vec<In> {
    vec![
        udp(A_UDP, PHONE_A),
        udp(A_UDP, CORE),
        udp(B_UDP, CORE),
        udp(TRUNK_UDP, PHONE_A),
        over(A_TCP, Proto::Tcp, CLIENT, FLOW),
        outbound(TRUNK_TCP, TCP_CORE, REC_TRUNK),
        udp(PLAIN, PHONE_A),
        udp(V6, "[2001:db8::99]:5062"),
    ]
}

/// Check what the relay did with `msg`.
fn check(w: &World, msg: &[u8], arrival: In, alive: bool) -> Result<(), TestCaseError> {
    let (action, out) = w.handle_bytes(msg, arrival, &move |_| alive);
    let text = || String::from_utf8_lossy(&out).into_owned();
    match action {
        Action::Drop(_) => prop_assert!(out.is_empty()),
        Action::Reply(_) => {
            let reply = sip::parse(&out);
            prop_assert!(reply.is_ok(), "reply does not parse: {}", text());
            prop_assert!(out.starts_with(b"SIP/2.0 "));
        }
        Action::Forward(f) => {
            let sent = sip::parse(&out);
            prop_assert!(sent.is_ok(), "forwarded message does not parse: {}", text());
            let sent = sent.unwrap();
            let sent = sent.message();
            let got = sip::parse(msg).unwrap();
            let got = got.message();
            match f.direction {
                Direction::Request => {
                    prop_assert_eq!(sent.vias().len(), got.vias().len() + 1, "{}", text());
                    let top = sent.text(sent.vias()[0].branch.unwrap().value.unwrap());
                    prop_assert!(top.starts_with("z9hG4bKsS"));
                    prop_assert!(sent.routes().len() <= got.routes().len());
                    prop_assert_eq!(sent.body(), got.body());
                }
                Direction::Response => {
                    prop_assert_eq!(sent.vias().len() + 1, got.vias().len(), "{}", text());
                    prop_assert_eq!(sent.body(), got.body());
                }
            }
        }
    }
    Ok(())
}

proptest! {
    // About a second each; `scripts/fuzz.sh`-style long runs: raise the count here.
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..700), which in 0usize..8) {
        let w = world();
        check(&w, &bytes, arrivals()[which], true)?;
    }

    #[test]
    fn mutations_of_valid_messages(
        pick in 0usize..6,
        which in 0usize..8,
        alive: bool,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..4), 0..6),
    ) {
        let w = world();
        let mut msg = corpus()[pick].clone();
        // Byte changes, deletions and insertions, biased toward SIP's punctuation.
        const PUNCT: &[u8] = b";,:<>=@\r\n \"[]0123456789abz";
        for (at, byte, kind) in edits {
            if msg.is_empty() { break; }
            let at = at % msg.len();
            let b = if byte % 2 == 0 { PUNCT[usize::from(byte) % PUNCT.len()] } else { byte };
            match kind {
                0 => msg[at] = b,
                1 => { msg.remove(at); }
                2 => msg.insert(at, b),
                _ => { let cut = msg[at..].to_vec(); msg.extend_from_slice(&cut[..cut.len().min(40)]); }
            }
        }
        check(&w, &msg, arrivals()[which], alive)?;
    }
}

#[test]
fn the_corpus_is_relayed_unmutated() {
    // Each corpus message is forwarded somewhere from some arrival: the mutations start from
    // messages that reach deep into the relay.
    let w = world();
    for msg in corpus() {
        let forwarded = arrivals()
            .into_iter()
            .any(|a| matches!(w.handle_bytes(&msg, a, &|_| true).0, Action::Forward(_)));
        assert!(forwarded, "{}", String::from_utf8_lossy(&msg));
        for a in arrivals() {
            check(&w, &msg, a, true).unwrap();
            check(&w, &msg, a, false).unwrap();
        }
    }
}
