//! The relay's decisions on whole calls, with literal SIP messages (the shapes of RFC 3261 §24,
//! written for this world): each test sends messages through [`Relay::handle`] the way the peers
//! would, feeding what one step forwards into the next, and reads every output back with the
//! parser.

#[path = "common/relay_world.rs"]
mod world;

use shm::{Proto, SlotCounter};
use worker::relay::{
    Action, Direction, DropReason, Forward, Next, ReplyKind, RouteTable, Unavailable,
};
use world::*;

const CALL_ID: &str = "a84b4c76e66710@pc33.atlanta.example";

/// Alice's INVITE, as her phone behind a NAT sends it.
fn invite() -> String {
    format!(
        "INVITE sip:bob@biloxi.example SIP/2.0\r\n\
         Via: SIP/2.0/UDP 10.1.1.5:5062;branch=z9hG4bK776asdhds;rport\r\n\
         Max-Forwards: 70\r\n\
         To: Bob <sip:bob@biloxi.example>\r\n\
         From: Alice <sip:alice@atlanta.example>;tag=1928301774\r\n\
         Call-ID: {CALL_ID}\r\n\
         CSeq: 314159 INVITE\r\n\
         Contact: <sip:alice@203.0.113.5:5062>\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: 4\r\n\r\nv=0\n"
    )
}

fn forward(action: Action) -> Forward {
    match action {
        Action::Forward(f) => f,
        other => panic!("not forwarded: {other:?}"),
    }
}

/// `f` without its Call-ID hash (checked apart).
fn route_of(f: Forward) -> (u32, Next, Direction, Option<u32>) {
    (f.out_slot, f.next, f.direction, f.record)
}

fn ours_on(via: &str, hostport: &str, transport: &str) {
    let prefix = format!("SIP/2.0/{transport} {hostport};branch=z9hG4bKsS");
    assert!(via.starts_with(&prefix), "{via} (want {prefix}...)");
    assert_eq!(branch(via).len(), 9 + 26, "{via}");
    assert!(param(via, "sk").is_some_and(|t| !t.is_empty()), "{via}");
    assert_eq!(
        via.ends_with(";rport"),
        transport == "UDP",
        "rport on UDP only: {via}"
    );
}

/// The INVITE relayed from customer A to the core.
fn relayed_invite(w: &World) -> (Forward, Read) {
    let (action, out) = w.handle(&invite(), udp(A_UDP, PHONE_A));
    (forward(action), read(&out))
}

#[test]
fn invite_from_a_customer_goes_to_its_tags_core() {
    let w = world();
    let (f, r) = relayed_invite(&w);
    assert_eq!(
        route_of(f),
        (
            A_UDP,
            Next::Udp(addr(CORE)),
            Direction::Request,
            Some(REC_A)
        )
    );
    assert_eq!(f.call_hash, worker::relay::token::hash(CALL_ID.as_bytes()));
    assert_eq!(
        Action::Forward(f).slot_counter(),
        SlotCounter::RelayedRequests
    );
    assert_eq!(r.start, "INVITE sip:bob@biloxi.example SIP/2.0");
    assert_eq!(r.vias.len(), 2);
    ours_on(&r.vias[0], "a.sbc.example:5060", "UDP");
    assert_eq!(
        r.vias[1],
        "SIP/2.0/UDP 10.1.1.5:5062;branch=z9hG4bK776asdhds;rport=5062;received=203.0.113.5"
    );
    assert_eq!(r.record_routes.len(), 1, "{}", r.text);
    assert!(
        r.record_routes[0].starts_with("<sip:a.sbc.example:5060;transport=udp;lr;sk="),
        "{}",
        r.record_routes[0]
    );
    assert_eq!(r.max_forwards.as_deref(), Some("69"));
    assert!(r.routes.is_empty());
    assert_eq!(r.body, b"v=0\n");
    assert_eq!(header(&r.text, "Content-Length").as_deref(), Some("4"));
    // Nothing else moved: the other lines are copied as they were.
    for h in ["To", "From", "Call-ID", "CSeq", "Contact", "Content-Type"] {
        assert_eq!(header(&r.text, h), header(&invite(), h), "{h}");
    }
}

#[test]
fn responses_come_back_by_our_via() {
    let w = world();
    let (_, fwd) = relayed_invite(&w);
    for status in ["100 Trying", "180 Ringing", "200 OK"] {
        let tag = (status != "100 Trying").then_some("a6c85cf");
        let resp = response_to(&fwd.text, status, tag, "sip:bob@192.0.2.50:5060");
        let (action, out) = w.handle(&resp, udp(A_UDP, CORE));
        let f = forward(action);
        assert_eq!(
            route_of(f),
            (
                A_UDP,
                Next::Udp(addr(PHONE_A)),
                Direction::Response,
                Some(REC_A)
            ),
            "{status}"
        );
        assert_eq!(
            Action::Forward(f).slot_counter(),
            SlotCounter::RelayedResponses
        );
        let r = read(&out);
        assert_eq!(r.start, format!("SIP/2.0 {status}"));
        assert_eq!(
            r.vias,
            ["SIP/2.0/UDP 10.1.1.5:5062;branch=z9hG4bK776asdhds;rport=5062;received=203.0.113.5"]
        );
        assert_eq!(r.record_routes, fwd.record_routes);
    }
}

/// The dialog set up by a relayed INVITE and its 200: Alice's route set and Bob's.
struct Dialog {
    rr: Vec<String>,
}

fn dialog(w: &World) -> Dialog {
    let (_, fwd) = relayed_invite(w);
    Dialog {
        rr: fwd.record_routes.clone(),
    }
}

#[test]
fn in_dialog_requests_follow_our_route_both_ways() {
    let w = world();
    let d = dialog(&w);
    // Alice's route set is the Record-Route list reversed (one entry here).
    let route = d.rr.iter().rev().cloned().collect::<Vec<_>>().join(", ");
    for (method, cseq) in [("ACK", 314159), ("BYE", 314160)] {
        let msg = format!(
            "{method} sip:bob@192.0.2.50:5060 SIP/2.0\r\n\
             Via: SIP/2.0/UDP 10.1.1.5:5062;branch=z9hG4bKnashds{cseq};rport\r\n\
             Route: {route}\r\n\
             Max-Forwards: 70\r\n\
             To: Bob <sip:bob@biloxi.example>;tag=a6c85cf\r\n\
             From: Alice <sip:alice@atlanta.example>;tag=1928301774\r\n\
             Call-ID: {CALL_ID}\r\n\
             CSeq: {cseq} {method}\r\n\
             Content-Length: 0\r\n\r\n"
        );
        let (action, out) = w.handle(&msg, udp(A_UDP, PHONE_A));
        assert_eq!(
            route_of(forward(action)),
            (
                A_UDP,
                Next::Udp(addr(CORE)),
                Direction::Request,
                Some(REC_A)
            ),
            "{method}"
        );
        let r = read(&out);
        assert!(r.routes.is_empty(), "our Route removed: {}", r.text);
        assert!(r.record_routes.is_empty(), "no Record-Route in a dialog");
        assert_eq!(r.vias.len(), 2);
        ours_on(&r.vias[0], "a.sbc.example:5060", "UDP");
    }
    // Bob's BYE, from the core: its route set is the Record-Route list in order.
    let bye = format!(
        "BYE sip:alice@203.0.113.5:5062 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 192.0.2.50:5060;branch=z9hG4bKcore1\r\n\
         Route: {}\r\n\
         Max-Forwards: 69\r\n\
         From: Bob <sip:bob@biloxi.example>;tag=a6c85cf\r\n\
         To: Alice <sip:alice@atlanta.example>;tag=1928301774\r\n\
         Call-ID: {CALL_ID}\r\n\
         CSeq: 231 BYE\r\n\
         Content-Length: 0\r\n\r\n",
        d.rr.join(", ")
    );
    let (action, out) = w.handle(&bye, udp(A_UDP, CORE));
    assert_eq!(
        route_of(forward(action)),
        (A_UDP, Next::Udp(addr(PHONE_A)), Direction::Request, None)
    );
    let r = read(&out);
    assert_eq!(r.start, "BYE sip:alice@203.0.113.5:5062 SIP/2.0");
    assert!(r.routes.is_empty());
    assert_eq!(r.max_forwards.as_deref(), Some("68"));
    assert_eq!(
        r.vias[1], "SIP/2.0/UDP 192.0.2.50:5060;branch=z9hG4bKcore1;rport=5060;received=192.0.2.50",
        "force_rport: rport and received even when the host is the source"
    );
    // Its 200 goes back to the core.
    let ok = response_to(&out, "200 OK", None, "sip:alice@203.0.113.5:5062");
    let (action, _) = w.handle(&ok, udp(A_UDP, PHONE_A));
    assert_eq!(
        route_of(forward(action)),
        (A_UDP, Next::Udp(addr(CORE)), Direction::Response, None)
    );
}

#[test]
fn cancel_and_non_2xx_ack_get_the_invites_branch() {
    let w = world();
    let (f, fwd) = relayed_invite(&w);
    let invite_branch = branch(&fwd.vias[0]);
    let cancel = invite()
        .replace("INVITE sip:", "CANCEL sip:")
        .replace("CSeq: 314159 INVITE", "CSeq: 314159 CANCEL")
        .replace("Content-Type: application/sdp\r\n", "")
        .replace(
            "Content-Length: 4\r\n\r\nv=0\n",
            "Content-Length: 0\r\n\r\n",
        );
    let (action, out) = w.handle(&cancel, udp(A_UDP, PHONE_A));
    assert_eq!(route_of(forward(action)), route_of(f), "same destination");
    let c = read(&out);
    assert_eq!(branch(&c.vias[0]), invite_branch);
    assert!(c.record_routes.is_empty(), "CANCEL is not record-routed");
    // 486 from the core, then the ACK of the non-2xx (same branch, To tag of the response).
    let busy = response_to(
        &fwd.text,
        "486 Busy Here",
        Some("b1"),
        "sip:bob@192.0.2.50:5060",
    );
    let (action, out) = w.handle(&busy, udp(A_UDP, CORE));
    assert_eq!(forward(action).next, Next::Udp(addr(PHONE_A)));
    assert_eq!(read(&out).vias.len(), 1);
    let ack = invite()
        .replace("INVITE sip:", "ACK sip:")
        .replace("CSeq: 314159 INVITE", "CSeq: 314159 ACK")
        .replace(
            "To: Bob <sip:bob@biloxi.example>",
            "To: Bob <sip:bob@biloxi.example>;tag=b1",
        )
        .replace("Content-Type: application/sdp\r\n", "")
        .replace(
            "Content-Length: 4\r\n\r\nv=0\n",
            "Content-Length: 0\r\n\r\n",
        );
    let (action, out) = w.handle(&ack, udp(A_UDP, PHONE_A));
    assert_eq!(route_of(forward(action)), route_of(f));
    assert_eq!(branch(&read(&out).vias[0]), invite_branch);
    // Another transaction of the same dialog gets another branch.
    let other = invite().replace("z9hG4bK776asdhds", "z9hG4bK776asdhdt");
    let (_, out) = w.handle(&other, udp(A_UDP, PHONE_A));
    assert_ne!(branch(&read(&out).vias[0]), invite_branch);
}

#[test]
fn max_forwards_zero_gets_483_and_a_missing_one_70() {
    let w = world();
    let (action, out) = w.handle(
        &invite().replace("Max-Forwards: 70", "Max-Forwards: 0"),
        udp(A_UDP, PHONE_A),
    );
    assert_eq!(action, Action::Reply(ReplyKind::TooManyHops));
    assert_eq!(action.slot_counter(), SlotCounter::Sent483);
    let r = read(&out);
    assert_eq!(r.start, "SIP/2.0 483 Too Many Hops");
    assert_eq!(
        r.vias,
        ["SIP/2.0/UDP 10.1.1.5:5062;branch=z9hG4bK776asdhds;rport=5062;received=203.0.113.5"]
    );
    assert!(header(&out, "To").unwrap().contains(";tag="));
    assert_eq!(header(&out, "CSeq").as_deref(), Some("314159 INVITE"));
    // An ACK is never answered.
    let ack = invite()
        .replace("Max-Forwards: 70", "Max-Forwards: 0")
        .replace("INVITE", "ACK");
    let (action, out) = w.handle(&ack, udp(A_UDP, PHONE_A));
    assert_eq!(action, Action::Drop(DropReason::Ack));
    assert!(out.is_empty());
    // Absent: 70 added (RFC 3261 §16.6 step 3); not a number: rewritten as 70.
    let (_, out) = w.handle(
        &invite().replace("Max-Forwards: 70\r\n", ""),
        udp(A_UDP, PHONE_A),
    );
    assert_eq!(read(&out).max_forwards.as_deref(), Some("70"));
    let (_, out) = w.handle(
        &invite().replace("Max-Forwards: 70", "Max-Forwards: many"),
        udp(A_UDP, PHONE_A),
    );
    assert_eq!(read(&out).max_forwards.as_deref(), Some("70"));
    assert_eq!(out.matches("Max-Forwards").count(), 1);
}

#[test]
fn a_request_coming_back_unchanged_is_a_loop_and_a_spiral_goes_on() {
    let w = world();
    let (_, fwd) = relayed_invite(&w);
    // The core sends it back to the same socket as it got it: 482.
    let (action, out) = w.handle(&fwd.text, udp(A_UDP, CORE));
    assert_eq!(action, Action::Reply(ReplyKind::Loop));
    assert_eq!(action.slot_counter(), SlotCounter::Sent482);
    assert!(out.starts_with("SIP/2.0 482 Loop Detected\r\n"));
    // The core found Bob behind customer B's socket: a new Request-URI, its own Via, to socket B.
    let spiral = fwd
        .text
        .replace(
            "INVITE sip:bob@biloxi.example SIP/2.0\r\n",
            "INVITE sip:bob@203.0.113.77:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.50:5060;branch=z9hG4bKcore9\r\n",
        )
        .replace("Max-Forwards: 69", "Max-Forwards: 68");
    let (action, out) = w.handle(&spiral, udp(B_UDP, CORE));
    assert_eq!(
        route_of(forward(action)),
        (
            B_UDP,
            Next::Udp(addr("203.0.113.77:5060")),
            Direction::Request,
            None
        )
    );
    let r = read(&out);
    assert_eq!(r.vias.len(), 4);
    ours_on(&r.vias[0], "198.51.100.2:5060", "UDP");
    ours_on(&r.vias[2], "a.sbc.example:5060", "UDP");
    assert_eq!(r.record_routes.len(), 2, "B's entry on top of A's");
    assert!(r.record_routes[0].starts_with("<sip:198.51.100.2:5060;"));
    // The same request arriving on another socket unchanged is a spiral too (not a 482): here the
    // Request-URI is a name, so it ends in a 503.
    let (action, _) = w.handle(&fwd.text, udp(B_UDP, CORE));
    assert_eq!(
        action,
        Action::Reply(ReplyKind::Unavailable(Unavailable::Hostname))
    );
    // A Via that merely looks like ours (our branch prefix, another host) is not ours.
    let fake = fwd
        .text
        .replace("a.sbc.example:5060;branch", "elsewhere.example:5060;branch");
    let (action, _) = w.handle(&fake, udp(A_UDP, CORE));
    assert!(matches!(
        action,
        Action::Forward(_) | Action::Reply(ReplyKind::Unavailable(_))
    ));
}

fn bye_from_alice(route: &str, call_id: &str) -> String {
    format!(
        "BYE sip:bob@192.0.2.50:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 10.1.1.5:5062;branch=z9hG4bKbye1;rport\r\n\
         Route: {route}\r\n\
         Max-Forwards: 70\r\n\
         To: Bob <sip:bob@biloxi.example>;tag=a6c85cf\r\n\
         From: Alice <sip:alice@atlanta.example>;tag=1928301774\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 314160 BYE\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

#[test]
fn forged_or_copied_routes_and_initial_requests_elsewhere_get_403() {
    let w = world();
    let d = dialog(&w);
    let rr = &d.rr[0];
    // The genuine one passes.
    let (action, _) = w.handle(&bye_from_alice(rr, CALL_ID), udp(A_UDP, PHONE_A));
    assert!(matches!(action, Action::Forward(_)));
    // One character of the token changed.
    let token = param(rr, "sk").unwrap();
    let mut forged = token.clone().into_bytes();
    forged[5] = if forged[5] == b'a' { b'b' } else { b'a' };
    let forged_rr = rr.replace(&token, std::str::from_utf8(&forged).unwrap());
    for (route, call_id) in [
        (forged_rr.as_str(), CALL_ID),
        // Copied into another dialog.
        (rr.as_str(), "another-call@pc33.atlanta.example"),
        // Moved to another of our addresses.
        (
            &*rr.replace("a.sbc.example:5060", "198.51.100.1:5060"),
            CALL_ID,
        ),
    ] {
        let (action, out) = w.handle(&bye_from_alice(route, call_id), udp(A_UDP, PHONE_A));
        assert_eq!(action, Action::Reply(ReplyKind::Forbidden), "{route}");
        assert_eq!(action.slot_counter(), SlotCounter::Sent403);
        assert!(out.starts_with("SIP/2.0 403 Forbidden\r\n"));
    }
    // An initial request routed to someone other than the tag's destinations: no open relay.
    let elsewhere = invite().replace(
        "Max-Forwards: 70\r\n",
        "Max-Forwards: 70\r\nRoute: <sip:198.18.0.1;lr>\r\n",
    );
    let (action, _) = w.handle(&elsewhere, udp(A_UDP, PHONE_A));
    assert_eq!(action, Action::Reply(ReplyKind::Forbidden));
    // Routed to the tag's destination itself: fine, and its Route stays for it.
    let to_core = invite().replace(
        "Max-Forwards: 70\r\n",
        "Max-Forwards: 70\r\nRoute: <sip:192.0.2.50;lr>\r\n",
    );
    let (action, out) = w.handle(&to_core, udp(A_UDP, PHONE_A));
    assert_eq!(forward(action).next, Next::Udp(addr(CORE)));
    assert_eq!(read(&out).routes, ["<sip:192.0.2.50;lr>"]);
}

#[test]
fn a_preloaded_route_to_us_is_removed_and_the_request_is_initial() {
    let w = world();
    for preloaded in [
        "<sip:a.sbc.example;lr>",
        "<sip:198.51.100.1:5060;lr>",
        "<SIP:A.SBC.EXAMPLE:5060;lr>",
    ] {
        let msg = invite().replace(
            "Max-Forwards: 70\r\n",
            &format!("Max-Forwards: 70\r\nRoute: {preloaded}\r\n"),
        );
        let (action, out) = w.handle(&msg, udp(A_UDP, PHONE_A));
        assert_eq!(forward(action).next, Next::Udp(addr(CORE)), "{preloaded}");
        let r = read(&out);
        assert!(r.routes.is_empty(), "{}", r.text);
        assert_eq!(r.record_routes.len(), 1);
    }
}

#[test]
fn a_strict_router_puts_our_route_in_the_request_uri() {
    let w = world();
    let d = dialog(&w);
    let uri = d.rr[0].trim_start_matches('<').trim_end_matches('>');
    let reinvite = format!(
        "INVITE {uri} SIP/2.0\r\n\
         Via: SIP/2.0/UDP 192.0.2.50:5060;branch=z9hG4bKstrict\r\n\
         Route: <sip:alice@203.0.113.5:5062>\r\n\
         Max-Forwards: 70\r\n\
         From: Bob <sip:bob@biloxi.example>;tag=a6c85cf\r\n\
         To: Alice <sip:alice@atlanta.example>;tag=1928301774\r\n\
         Call-ID: {CALL_ID}\r\n\
         CSeq: 232 INVITE\r\n\
         Content-Length: 0\r\n\r\n"
    );
    let (action, out) = w.handle(&reinvite, udp(A_UDP, CORE));
    assert_eq!(
        route_of(forward(action)),
        (A_UDP, Next::Udp(addr(PHONE_A)), Direction::Request, None)
    );
    let r = read(&out);
    assert_eq!(r.start, "INVITE sip:alice@203.0.113.5:5062 SIP/2.0");
    assert!(r.routes.is_empty(), "{}", r.text);
    // A forged one in the Request-URI is refused like a forged Route.
    let forged = reinvite.replace("sk=", "sk=a");
    let (action, _) = w.handle(&forged, udp(A_UDP, CORE));
    assert_eq!(action, Action::Reply(ReplyKind::Forbidden));
}

/// Carol's REGISTER over TCP.
fn register() -> String {
    "REGISTER sip:a.sbc.example SIP/2.0\r\n\
     Via: SIP/2.0/TCP 10.2.2.2:50000;branch=z9hG4bKreg1;rport\r\n\
     Max-Forwards: 70\r\n\
     To: <sip:carol@a.sbc.example>\r\n\
     From: <sip:carol@a.sbc.example>;tag=reg1\r\n\
     Call-ID: reg-1@10.2.2.2\r\n\
     CSeq: 1 REGISTER\r\n\
     Contact: <sip:carol@10.2.2.2:50000;transport=tcp>\r\n\
     Expires: 3600\r\n\
     Content-Length: 0\r\n\r\n"
        .to_string()
}

/// The core's INVITE to Carol through her Path.
fn invite_to_carol(path: &str) -> String {
    "INVITE sip:carol@10.2.2.2:50000;transport=tcp SIP/2.0\r\n\
     Via: SIP/2.0/UDP 192.0.2.50:5060;branch=z9hG4bKtocarol\r\n\
     Route: PATH\r\n\
     Max-Forwards: 69\r\n\
     From: <sip:dave@atlanta.example>;tag=d1\r\n\
     To: <sip:carol@a.sbc.example>\r\n\
     Call-ID: to-carol-1@core\r\n\
     CSeq: 1 INVITE\r\n\
     Contact: <sip:dave@192.0.2.50:5060>\r\n\
     Content-Length: 0\r\n\r\n"
        .replace("PATH", path)
}

#[test]
fn register_over_tcp_gets_a_path_and_the_core_reaches_the_client_through_it() {
    let w = world();
    let carol = over(A_TCP, Proto::Tcp, CLIENT, FLOW);
    let (action, out) = w.handle(&register(), carol);
    // The core is over UDP: the UDP socket on the arrival socket's IP.
    assert_eq!(
        route_of(forward(action)),
        (
            A_UDP,
            Next::Udp(addr(CORE)),
            Direction::Request,
            Some(REC_A)
        )
    );
    let reg = read(&out);
    assert_eq!(
        reg.start, "REGISTER sip:a.sbc.example SIP/2.0",
        "a REGISTER to our address is relayed"
    );
    assert_eq!(reg.paths.len(), 1);
    let path = reg.paths[0].clone();
    assert!(
        path.starts_with("<sip:a.sbc.example:5060;transport=udp;lr;ob;sk="),
        "{path}"
    );
    assert!(reg.record_routes.is_empty());
    ours_on(&reg.vias[0], "a.sbc.example:5060", "UDP");
    assert_eq!(
        reg.vias[1],
        "SIP/2.0/TCP 10.2.2.2:50000;branch=z9hG4bKreg1;rport=40000;received=203.0.113.9"
    );
    // The registrar's 200 goes back over Carol's connection.
    let ok = response_to(
        &reg.text,
        "200 OK",
        Some("r1"),
        "sip:carol@10.2.2.2:50000;transport=tcp",
    );
    let (action, out) = w.handle(&ok, udp(A_UDP, CORE));
    assert_eq!(
        route_of(forward(action)),
        (A_TCP, Next::Flow(FLOW), Direction::Response, Some(REC_A))
    );
    assert!(header(&out, "Content-Length").is_some());

    // A later INVITE from the core (another dialog) with the Path as Route reaches the connection.
    let (action, out) = w.handle(&invite_to_carol(&path), udp(A_UDP, CORE));
    assert_eq!(
        route_of(forward(action)),
        (A_TCP, Next::Flow(FLOW), Direction::Request, None)
    );
    let inv = read(&out);
    assert!(inv.routes.is_empty(), "{}", inv.text);
    ours_on(&inv.vias[0], "a.sbc.example:5060", "TCP");
    // Two Record-Routes: the connection's side first (with the flow), then the core's side.
    assert_eq!(inv.record_routes.len(), 2, "{}", inv.text);
    assert!(inv.record_routes[0].starts_with("<sip:a.sbc.example:5060;transport=tcp;lr;sk="));
    assert!(inv.record_routes[1].starts_with("<sip:a.sbc.example:5060;transport=udp;lr;sk="));
    assert_ne!(
        param(&inv.record_routes[0], "sk"),
        param(&inv.record_routes[1], "sk")
    );

    // Carol's 200 over her connection goes back to the core over UDP.
    let ok = response_to(
        &inv.text,
        "200 OK",
        Some("c1"),
        "sip:carol@10.2.2.2:50000;transport=tcp",
    );
    let (action, _) = w.handle(&ok, carol);
    assert_eq!(
        route_of(forward(action)),
        (A_UDP, Next::Udp(addr(CORE)), Direction::Response, None)
    );

    // BYE from Carol (UAS: route set in Record-Route order) reaches the core...
    let bye = |route: String, via: &str, from: &str, to: &str, uri: &str| {
        format!(
            "BYE {uri} SIP/2.0\r\nVia: {via}\r\nRoute: {route}\r\nMax-Forwards: 70\r\n\
             From: {from}\r\nTo: {to}\r\nCall-ID: to-carol-1@core\r\nCSeq: 9 BYE\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let rr = &inv.record_routes;
    let from_carol = bye(
        rr.join(", "),
        "SIP/2.0/TCP 10.2.2.2:50000;branch=z9hG4bKcb1",
        "<sip:carol@a.sbc.example>;tag=c1",
        "<sip:dave@atlanta.example>;tag=d1",
        "sip:dave@192.0.2.50:5060",
    );
    let (action, out) = w.handle(&from_carol, carol);
    assert_eq!(
        route_of(forward(action)),
        (
            A_UDP,
            Next::Udp(addr(CORE)),
            Direction::Request,
            Some(REC_A)
        )
    );
    assert!(read(&out).routes.is_empty());
    // ...and BYE from the core (UAC: the list reversed) reaches her connection.
    let reversed: Vec<String> = rr.iter().rev().cloned().collect();
    let from_core = bye(
        reversed.join(", "),
        "SIP/2.0/UDP 192.0.2.50:5060;branch=z9hG4bKdb1",
        "<sip:dave@atlanta.example>;tag=d1",
        "<sip:carol@a.sbc.example>;tag=c1",
        "sip:carol@10.2.2.2:50000;transport=tcp",
    );
    let (action, _) = w.handle(&from_core, udp(A_UDP, CORE));
    assert_eq!(
        route_of(forward(action)),
        (A_TCP, Next::Flow(FLOW), Direction::Request, None)
    );

    // The connection is gone: 430 to the core.
    let (action, out) = w.handle_with(&invite_to_carol(&path), udp(A_UDP, CORE), &|_| false);
    assert_eq!(action, Action::Reply(ReplyKind::FlowFailed));
    assert_eq!(action.slot_counter(), SlotCounter::Sent430);
    assert!(out.starts_with("SIP/2.0 430 Flow Failed\r\n"), "{out}");
    // Its responses are dropped.
    let ok = response_to(&reg.text, "200 OK", Some("r1"), "sip:carol@10.2.2.2");
    let (action, _) = w.handle_with(&ok, udp(A_UDP, CORE), &|_| false);
    assert_eq!(action, Action::Drop(DropReason::FlowGone));
    // A Path token moved to another of our addresses is refused.
    let moved = path.replace("a.sbc.example:5060", "198.51.100.1:5060");
    let (action, _) = w.handle(&invite_to_carol(&moved), udp(A_UDP, CORE));
    assert_eq!(action, Action::Reply(ReplyKind::Forbidden));
}

#[test]
fn path_only_with_supported_path_when_so_configured() {
    let mut t = table();
    t.settings.path = worker::relay::PathMode::Supported;
    let w = world_of(&t);
    let carol = over(A_TCP, Proto::Tcp, CLIENT, FLOW);
    let (_, out) = w.handle(&register(), carol);
    assert!(read(&out).paths.is_empty());
    let supported = register().replace("Expires:", "Supported: path\r\nExpires:");
    let (_, out) = w.handle(&supported, carol);
    assert_eq!(read(&out).paths.len(), 1);
    // Never over UDP (no connection to name).
    let (_, out) = world().handle(
        &register().replace("SIP/2.0/TCP", "SIP/2.0/UDP"),
        udp(A_UDP, PHONE_A),
    );
    assert!(read(&out).paths.is_empty());
}

#[test]
fn udp_in_tcp_out_gets_two_record_routes_and_the_way_back() {
    let w = world();
    let (action, out) = w.handle(&invite(), udp(TRUNK_UDP, PHONE_A));
    assert_eq!(
        route_of(forward(action)),
        (
            TRUNK_TCP,
            Next::Outbound { record: REC_TRUNK },
            Direction::Request,
            Some(REC_TRUNK)
        )
    );
    let dest = w.relay.destination(REC_TRUNK).unwrap();
    assert_eq!((dest.addr, dest.transport), (addr(TCP_CORE), Proto::Tcp));
    let r = read(&out);
    ours_on(&r.vias[0], "198.51.100.4:5060", "TCP");
    assert_eq!(r.record_routes.len(), 2);
    assert!(r.record_routes[0].starts_with("<sip:198.51.100.4:5060;transport=tcp;lr;sk="));
    assert!(r.record_routes[1].starts_with("<sip:198.51.100.4:5060;transport=udp;lr;sk="));
    // The core answers over the outbound connection: back to the phone over UDP.
    let ok = response_to(
        &r.text,
        "200 OK",
        Some("t1"),
        "sip:bob@192.0.2.60:5060;transport=tcp",
    );
    let (action, _) = w.handle(&ok, outbound(TRUNK_TCP, TCP_CORE, REC_TRUNK));
    assert_eq!(
        route_of(forward(action)),
        (
            TRUNK_UDP,
            Next::Udp(addr(PHONE_A)),
            Direction::Response,
            Some(REC_TRUNK)
        )
    );
    // Alice's BYE (route set reversed) goes to the core's Contact over the outbound connection.
    let reversed: Vec<String> = r.record_routes.iter().rev().cloned().collect();
    let bye = bye_from_alice(&reversed.join(", "), CALL_ID).replace(
        "sip:bob@192.0.2.50:5060",
        "sip:bob@192.0.2.60:5060;transport=tcp",
    );
    let (action, out) = w.handle(&bye, udp(TRUNK_UDP, PHONE_A));
    assert_eq!(
        route_of(forward(action)),
        (
            TRUNK_TCP,
            Next::Outbound { record: REC_TRUNK },
            Direction::Request,
            Some(REC_TRUNK)
        )
    );
    assert!(read(&out).routes.is_empty());
    // A request from the core over the outbound connection goes to its Request-URI over UDP, and
    // its response back over the connection.
    let from_core = "OPTIONS sip:dave@203.0.113.20:5060 SIP/2.0\r\n\
        Via: SIP/2.0/TCP 192.0.2.60:5060;branch=z9hG4bKtc1\r\n\
        From: <sip:core@192.0.2.60>;tag=x\r\nTo: <sip:dave@203.0.113.20>\r\n\
        Call-ID: tc-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    let (action, out) = w.handle(from_core, outbound(TRUNK_TCP, TCP_CORE, REC_TRUNK));
    assert_eq!(
        route_of(forward(action)),
        (
            TRUNK_UDP,
            Next::Udp(addr("203.0.113.20:5060")),
            Direction::Request,
            None
        )
    );
    let ok = response_to(&out, "200 OK", Some("dv"), "sip:dave@203.0.113.20:5060");
    let (action, out) = w.handle(&ok, udp(TRUNK_UDP, "203.0.113.20:5060"));
    assert_eq!(
        route_of(forward(action)),
        (
            TRUNK_TCP,
            Next::Outbound { record: REC_TRUNK },
            Direction::Response,
            None
        )
    );
    assert_eq!(
        read(&out).vias,
        ["SIP/2.0/TCP 192.0.2.60:5060;branch=z9hG4bKtc1;rport=5060;received=192.0.2.60"]
    );
}

#[test]
fn a_udp_request_without_content_length_gets_one_over_a_stream() {
    let w = world();
    let msg = invite().replace("Content-Length: 4\r\n", "");
    let (action, out) = w.handle(&msg, udp(TRUNK_UDP, PHONE_A));
    assert!(matches!(forward(action).next, Next::Outbound { .. }));
    assert_eq!(header(&out, "Content-Length").as_deref(), Some("4"));
    assert!(out.ends_with("\r\n\r\nv=0\n"));
    // Over UDP it is left out, as it came.
    let (_, out) = w.handle(&msg, udp(A_UDP, PHONE_A));
    assert_eq!(header(&out, "Content-Length"), None);
}

#[test]
fn the_row_socket_is_used_and_the_request_changes_sockets() {
    let w = world();
    let (action, out) = w.handle(&invite(), udp(ROW_UDP, PHONE_A));
    assert_eq!(
        route_of(forward(action)),
        (
            ROW_OUT,
            Next::Udp(addr("192.0.2.80:5060")),
            Direction::Request,
            Some(REC_ROW)
        )
    );
    let r = read(&out);
    ours_on(&r.vias[0], "198.51.100.7:5090", "UDP");
    assert_eq!(r.record_routes.len(), 2);
    assert!(r.record_routes[0].starts_with("<sip:198.51.100.7:5090;"));
    assert!(r.record_routes[1].starts_with("<sip:198.51.100.6:5060;"));
}

#[test]
fn no_socket_of_the_needed_transport_gives_503() {
    let mut t = table();
    // The trunk's TCP socket is gone.
    t.sockets.retain(|s| s.slot != TRUNK_TCP);
    let w = world_of(&t);
    let (action, out) = w.handle(&invite(), udp(TRUNK_UDP, PHONE_A));
    assert_eq!(
        action,
        Action::Reply(ReplyKind::Unavailable(Unavailable::NoSocket))
    );
    assert_eq!(action.slot_counter(), SlotCounter::Sent503);
    assert!(out.starts_with("SIP/2.0 503 Service Unavailable\r\n"));
    assert!(header(&out, "Warning")
        .unwrap()
        .starts_with("399 sipsockd \""));
}

#[test]
fn targets_must_be_addresses_or_destination_names() {
    let w = world();
    let from_core = |uri: &str| {
        format!(
            "MESSAGE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.50:5060;branch=z9hG4bKm1\r\n\
             From: <sip:core@192.0.2.50>;tag=m\r\nTo: <sip:x@y>\r\nCall-ID: m-1\r\nCSeq: 1 MESSAGE\r\n\
             Content-Length: 2\r\n\r\nhi"
        )
    };
    let cases: &[(&str, Result<Next, ReplyKind>)] = &[
        (
            "sip:x@203.0.113.30",
            Ok(Next::Udp(addr("203.0.113.30:5060"))),
        ),
        (
            "sip:x@[2001:db8::30]:5070",
            Ok(Next::Udp(addr("[2001:db8::30]:5070"))),
        ),
        (
            "sip:x@pbx.customer.example",
            Err(ReplyKind::Unavailable(Unavailable::Hostname)),
        ),
        // A destination's host name: its address.
        (
            "sip:x@core.example.net:5080",
            Ok(Next::Udp(addr(NAMED_CORE))),
        ),
        (
            "sip:x@CORE.example.net.:5080",
            Ok(Next::Udp(addr(NAMED_CORE))),
        ),
        (
            "sip:x@core.example.net",
            Err(ReplyKind::Unavailable(Unavailable::Hostname)),
        ),
        (
            "sip:x@203.0.113.30;transport=tcp",
            Err(ReplyKind::Unavailable(Unavailable::NoConnection)),
        ),
        (
            "sip:x@203.0.113.30;transport=sctp",
            Err(ReplyKind::Unavailable(Unavailable::Unroutable)),
        ),
        (
            "tel:+15551234",
            Err(ReplyKind::Unavailable(Unavailable::Unroutable)),
        ),
        // A relay destination over TCP: its outbound connection.
        (
            "sip:x@192.0.2.60:5060;transport=tcp",
            Ok(Next::Outbound { record: REC_TRUNK }),
        ),
        // Addressed to sipsockd: answered as the responder does.
        ("sip:a.sbc.example", Err(ReplyKind::Local)),
        ("sip:someone@198.51.100.1", Err(ReplyKind::Local)),
    ];
    for (uri, want) in cases {
        let (action, out) = w.handle(&from_core(uri), udp(A_UDP, CORE));
        match want {
            Ok(next) => {
                let f = forward(action);
                assert_eq!(f.next, *next, "{uri}");
                assert_eq!(read(&out).body, b"hi");
            }
            Err(kind) => {
                assert_eq!(action, Action::Reply(*kind), "{uri}");
                read(&out);
            }
        }
    }
    // The relay record is counted when the target is a destination.
    let (action, _) = w.handle(&from_core("sip:x@core.example.net:5080"), udp(A_UDP, CORE));
    assert_eq!(forward(action).record, Some(REC_NAMED));
}

#[test]
fn options_to_us_is_a_keepalive_and_to_anyone_else_is_relayed() {
    let w = world();
    let options = |uri: &str, mf: u32| {
        format!(
            "OPTIONS {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.1.5:5062;branch=z9hG4bKo1;rport\r\n\
             Max-Forwards: {mf}\r\nFrom: <sip:alice@atlanta.example>;tag=o\r\nTo: <{uri}>\r\n\
             Call-ID: o-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
    };
    for uri in [
        "sip:a.sbc.example",
        "sip:198.51.100.1:5060",
        "sip:A.SBC.EXAMPLE:5060;transport=udp",
    ] {
        for mf in [70, 0] {
            let (action, out) = w.handle(&options(uri, mf), udp(A_UDP, PHONE_A));
            assert_eq!(action, Action::Reply(ReplyKind::Local), "{uri}");
            assert_eq!(action.slot_counter(), SlotCounter::Replied);
            assert!(out.starts_with("SIP/2.0 200 OK\r\n"));
            assert_eq!(
                header(&out, "Contact").as_deref(),
                Some("<sip:a.sbc.example:5060;transport=udp>")
            );
        }
    }
    let (action, out) = w.handle(&options("sip:ping@a.sbc.example", 70), udp(A_UDP, PHONE_A));
    assert_eq!(forward(action).next, Next::Udp(addr(CORE)));
    let r = read(&out);
    assert!(r.record_routes.is_empty(), "OPTIONS is not record-routed");
    assert_eq!(r.vias.len(), 2);
}

#[test]
fn a_socket_without_relay_answers_as_the_responder() {
    let w = world();
    let (action, out) = w.handle(&invite(), udp(PLAIN, PHONE_A));
    assert_eq!(action, Action::Reply(ReplyKind::Local));
    assert!(out.starts_with("SIP/2.0 404 Not Here\r\n"), "{out}");
    let (_, fwd) = relayed_invite(&w);
    let stray = response_to(&invite(), "200 OK", Some("x"), "sip:b@h");
    assert_eq!(
        w.handle(&stray, udp(PLAIN, CORE)).0,
        Action::Drop(DropReason::NotOurs)
    );
    // An unknown slot too (a socket the table does not list yet).
    let (action, _) = w.handle(&invite(), udp(999, PHONE_A));
    assert_eq!(action, Action::Reply(ReplyKind::Local));
    // But a response with our Via is routed wherever it arrives.
    let ok = response_to(&fwd.text, "200 OK", Some("x"), "sip:b@h");
    assert!(matches!(
        w.handle(&ok, udp(PLAIN, CORE)).0,
        Action::Forward(_)
    ));
}

#[test]
fn responses_without_our_valid_via_are_dropped() {
    let w = world();
    let (_, fwd) = relayed_invite(&w);
    let ok = response_to(&fwd.text, "200 OK", Some("x"), "sip:bob@192.0.2.50");
    let token = param(&fwd.vias[0], "sk").unwrap();
    let cases = [
        response_to(&invite(), "200 OK", Some("x"), "sip:b@h"),
        ok.replace(&token, &token[1..]),
        ok.replace(CALL_ID, "other-call"),
        ok.replace("z9hG4bKsS", "z9hG4bKsT"),
        ok.replace("a.sbc.example:5060;branch", "b.sbc.example:5060;branch"),
        ok.replace(&format!(";sk={token}"), ""),
    ];
    for resp in &cases {
        let (action, out) = w.handle(resp, udp(A_UDP, CORE));
        assert_eq!(action, Action::Drop(DropReason::NotOurs), "{resp}");
        assert_eq!(action.slot_counter(), SlotCounter::Dropped);
        assert!(out.is_empty());
    }
    // Ours, but the next Via names a host without `received`: no DNS, dropped.
    let named = ok.replace(
        "SIP/2.0/UDP 10.1.1.5:5062;branch=z9hG4bK776asdhds;rport=5062;received=203.0.113.5",
        "SIP/2.0/UDP phone.atlanta.example:5062;branch=z9hG4bK776asdhds",
    );
    assert_eq!(
        w.handle(&named, udp(A_UDP, CORE)).0,
        Action::Drop(DropReason::NoRoute)
    );
    // Ours, and nothing after it.
    let alone = ok.replace(
        "Via: SIP/2.0/UDP 10.1.1.5:5062;branch=z9hG4bK776asdhds;rport=5062;received=203.0.113.5\r\n",
        "",
    );
    assert_eq!(
        w.handle(&alone, udp(A_UDP, CORE)).0,
        Action::Drop(DropReason::NoRoute)
    );
}

#[test]
fn the_senders_via_is_edited_in_every_form() {
    let w = world();
    let with_via = |via: &str| {
        invite().replace(
            "Via: SIP/2.0/UDP 10.1.1.5:5062;branch=z9hG4bK776asdhds;rport\r\n",
            via,
        )
    };
    let cases = [
        // Several values on one line; an old received replaced.
        (
            "Via: SIP/2.0/UDP 10.1.1.5:5062;received=1.1.1.1;branch=z9hG4bKa, SIP/2.0/UDP p.example;branch=z9hG4bKp\r\n",
            vec![
                "SIP/2.0/UDP 10.1.1.5:5062;branch=z9hG4bKa;rport=5062;received=203.0.113.5",
                "SIP/2.0/UDP p.example;branch=z9hG4bKp",
            ],
        ),
        // Compact name, folded, blanks around parameters.
        (
            "v: SIP/2.0/UDP 10.1.1.5:5062\r\n ;branch=z9hG4bKf ; rport\r\n",
            vec!["SIP/2.0/UDP 10.1.1.5:5062;branch=z9hG4bKf;rport=5062;received=203.0.113.5"],
        ),
        // An rport with a value is left as it is; received still added.
        (
            "Via: SIP/2.0/UDP 203.0.113.5:5062;rport=9;branch=z9hG4bKr\r\n",
            vec!["SIP/2.0/UDP 203.0.113.5:5062;rport=9;branch=z9hG4bKr;received=203.0.113.5"],
        ),
    ];
    for (via, want) in cases {
        let (action, out) = w.handle(&with_via(via), udp(A_UDP, PHONE_A));
        assert!(matches!(action, Action::Forward(_)), "{via}");
        let r = read(&out);
        assert_eq!(&r.vias[1..], want.as_slice(), "{via}");
    }
    // Without force_rport: nothing when the host is the source and rport is not asked...
    let mut t = table();
    t.settings.force_rport = false;
    let w = world_of(&t);
    let plain = "Via: SIP/2.0/UDP 203.0.113.5:5062;branch=z9hG4bKn\r\n";
    let (_, out) = w.handle(&with_via(plain), udp(A_UDP, PHONE_A));
    assert_eq!(
        read(&out).vias[1],
        "SIP/2.0/UDP 203.0.113.5:5062;branch=z9hG4bKn"
    );
    // ...received when it is not...
    let natted = "Via: SIP/2.0/UDP 10.1.1.5:5062;branch=z9hG4bKn\r\n";
    let (_, out) = w.handle(&with_via(natted), udp(A_UDP, PHONE_A));
    assert_eq!(
        read(&out).vias[1],
        "SIP/2.0/UDP 10.1.1.5:5062;branch=z9hG4bKn;received=203.0.113.5"
    );
    // ...and rport filled when asked.
    let (_, out) = w.handle(&invite(), udp(A_UDP, PHONE_A));
    assert_eq!(
        read(&out).vias[1],
        "SIP/2.0/UDP 10.1.1.5:5062;branch=z9hG4bK776asdhds;rport=5062;received=203.0.113.5"
    );
}

#[test]
fn ipv6_addresses_are_bracketed_in_headers_and_bare_in_received() {
    let w = world();
    let msg = invite().replace(
        "Via: SIP/2.0/UDP 10.1.1.5:5062;branch=z9hG4bK776asdhds;rport",
        "Via: SIP/2.0/UDP [2001:db8::99]:5062;branch=z9hG4bK6;rport",
    );
    let (action, out) = w.handle(&msg, udp(V6, "[2001:db8::99]:5062"));
    assert_eq!(forward(action).next, Next::Udp(addr("[2001:db8::50]:5060")));
    let r = read(&out);
    ours_on(&r.vias[0], "[2001:db8::1]:5060", "UDP");
    assert_eq!(
        r.vias[1],
        "SIP/2.0/UDP [2001:db8::99]:5062;branch=z9hG4bK6;rport=5062;received=2001:db8::99"
    );
    assert!(r.record_routes[0].starts_with("<sip:[2001:db8::1]:5060;transport=udp;lr;sk="));
    let ok = response_to(&out, "200 OK", Some("6"), "sip:b@[2001:db8::50]");
    let (action, _) = w.handle(&ok, udp(V6, "[2001:db8::50]:5060"));
    assert_eq!(forward(action).next, Next::Udp(addr("[2001:db8::99]:5062")));
}

#[test]
fn a_webrtc_client_over_wss_reaches_the_core_and_is_reached_back() {
    let w = world();
    let ws = over(A_WSS, Proto::Wss, CLIENT, FLOW);
    let msg = invite().replace(
        "Via: SIP/2.0/UDP 10.1.1.5:5062;branch=z9hG4bK776asdhds;rport",
        "Via: SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bKws1",
    );
    let (action, out) = w.handle(&msg, ws);
    assert_eq!(
        route_of(forward(action)),
        (
            A_UDP,
            Next::Udp(addr(CORE)),
            Direction::Request,
            Some(REC_A)
        )
    );
    let r = read(&out);
    assert_eq!(
        r.vias[1],
        "SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bKws1;rport=40000;received=203.0.113.9"
    );
    assert_eq!(r.record_routes.len(), 2);
    assert!(r.record_routes[1].starts_with("<sip:ws.sbc.example:443;transport=wss;lr;sk="));
    // The 200 goes back over the WebSocket; Bob's BYE too.
    let ok = response_to(&r.text, "200 OK", Some("w"), "sip:bob@192.0.2.50:5060");
    assert_eq!(
        forward(w.handle(&ok, udp(A_UDP, CORE)).0).next,
        Next::Flow(FLOW)
    );
    let bye = format!(
        "BYE sip:alice@df7jal23ls0d.invalid;transport=ws SIP/2.0\r\n\
         Via: SIP/2.0/UDP 192.0.2.50:5060;branch=z9hG4bKwb\r\nRoute: {}\r\nMax-Forwards: 70\r\n\
         From: Bob <sip:bob@biloxi.example>;tag=w\r\nTo: Alice <sip:alice@atlanta.example>;tag=1928301774\r\n\
         Call-ID: {CALL_ID}\r\nCSeq: 5 BYE\r\nContent-Length: 0\r\n\r\n",
        r.record_routes.join(", ")
    );
    let (action, out) = w.handle(&bye, udp(A_UDP, CORE));
    assert_eq!(
        route_of(forward(action)),
        (A_WSS, Next::Flow(FLOW), Direction::Request, None)
    );
    ours_on(&read(&out).vias[0], "ws.sbc.example:443", "WSS");
}

#[test]
fn weighted_choice_is_stable_per_call_id_and_moves_only_the_removed_destinations_dialogs() {
    let invite_for = |call: &str| invite().replace(CALL_ID, call);
    let calls: Vec<String> = (0..600).map(|i| format!("{i:05}-hrw@example")).collect();
    let targets = |t: &RouteTable| -> Vec<Next> {
        let w = world_of(t);
        calls
            .iter()
            .map(|c| forward(w.handle(&invite_for(c), udp(B_UDP, PHONE_A)).0).next)
            .collect()
    };
    let full = table();
    let before = targets(&full);
    assert_eq!(
        before,
        targets(&full),
        "the same Call-ID, the same destination"
    );
    // Weights 1 and 2: about a third and two thirds.
    let to_core2 = before
        .iter()
        .filter(|n| **n == Next::Udp(addr(CORE2)))
        .count();
    assert!(
        (340..460).contains(&to_core2),
        "{to_core2} of 600 to the weight-2 destination"
    );
    // Reordering the rows moves nothing (the key is the URI, not the position).
    let mut reordered = full.clone();
    reordered.tags[1].destinations.reverse();
    assert_eq!(targets(&reordered), before);
    // Removing CORE2: only its dialogs move.
    let mut fewer = full.clone();
    fewer.tags[1].destinations.retain(|d| d.record != REC_B2);
    for (a, b) in before.iter().zip(targets(&fewer)) {
        if *a == Next::Udp(addr(CORE)) {
            assert_eq!(b, *a);
        }
    }
    // Adding a third one: dialogs move only to it.
    let mut more = full.clone();
    more.tags[1].destinations.push(dest(
        13,
        "sip:192.0.2.52:5060",
        "192.0.2.52:5060",
        Proto::Udp,
        1,
    ));
    let after = targets(&more);
    let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    assert!(after
        .iter()
        .zip(&before)
        .all(|(a, b)| a == b || *a == Next::Udp(addr("192.0.2.52:5060"))));
    assert!(
        (80..220).contains(&moved),
        "{moved} of 600 moved to a new quarter share"
    );
}

#[test]
fn malformed_requests_are_dropped_and_keepalives_ignored() {
    let w = world();
    for msg in [
        "\r\n\r\n",
        "hello",
        "INVITE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n\r\n",
        &invite().replace("CSeq: 314159 INVITE", "CSeq: 314159 BYE"),
        &invite().replace(&format!("Call-ID: {CALL_ID}\r\n"), ""),
    ] {
        let (action, out) = w.handle(msg, udp(A_UDP, PHONE_A));
        assert!(
            matches!(
                action,
                Action::Drop(DropReason::Malformed | DropReason::KeepAlive)
            ),
            "{msg:?}: {action:?}"
        );
        assert!(out.is_empty());
    }
}

#[test]
fn our_route_is_taken_out_of_a_shared_line_and_the_next_route_is_the_target() {
    let w = world();
    let d = dialog(&w);
    let msg = bye_from_alice(&format!("{}, <sip:192.0.2.99;lr>", d.rr[0]), CALL_ID).replace(
        "Max-Forwards: 70\r\n",
        "Max-Forwards: 70\r\nRoute: <sip:192.0.2.98;lr>\r\n",
    );
    let (action, out) = w.handle(&msg, udp(A_UDP, PHONE_A));
    assert_eq!(forward(action).next, Next::Udp(addr("192.0.2.99:5060")));
    let r = read(&out);
    assert_eq!(r.routes, ["<sip:192.0.2.99;lr>", "<sip:192.0.2.98;lr>"]);
    assert!(out.contains("\r\nRoute: <sip:192.0.2.99;lr>\r\n"), "{out}");
    assert_eq!(r.start, "BYE sip:bob@192.0.2.50:5060 SIP/2.0");
}

#[test]
fn a_destination_connecting_over_tcp_is_recognised_by_its_address() {
    let w = world();
    // The trunk's core opened its own connection to the TCP socket (any source port).
    let core_conn = over(TRUNK_TCP, Proto::Tcp, "192.0.2.60:41234", FLOW);
    let msg = "MESSAGE sip:dave@203.0.113.20 SIP/2.0\r\nVia: SIP/2.0/TCP 192.0.2.60:5060;branch=z9hG4bKtm\r\n\
        From: <sip:core@192.0.2.60>;tag=x\r\nTo: <sip:dave@203.0.113.20>\r\nCall-ID: tm-1\r\n\
        CSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n";
    let (action, out) = w.handle(msg, core_conn);
    assert_eq!(
        route_of(forward(action)),
        (
            TRUNK_UDP,
            Next::Udp(addr("203.0.113.20:5060")),
            Direction::Request,
            None
        )
    );
    // Its response goes back over that connection.
    let ok = response_to(&out, "200 OK", Some("d"), "sip:dave@203.0.113.20");
    let (action, _) = w.handle(&ok, udp(TRUNK_UDP, "203.0.113.20:5060"));
    assert_eq!(
        route_of(forward(action)),
        (TRUNK_TCP, Next::Flow(FLOW), Direction::Response, None)
    );
    // A client connecting from the host of a UDP destination is a client: its REGISTER goes to
    // the core.
    let (action, _) = w.handle(
        &register(),
        over(A_TCP, Proto::Tcp, "192.0.2.50:40000", FLOW),
    );
    assert_eq!(forward(action).next, Next::Udp(addr(CORE)));
    // Over UDP the port must match too: the same address from another port is a customer.
    let msg = msg.replace("SIP/2.0/TCP", "SIP/2.0/UDP");
    let (action, _) = w.handle(&msg, udp(TRUNK_UDP, "192.0.2.60:41234"));
    assert_eq!(
        forward(action).next,
        Next::Outbound { record: REC_TRUNK },
        "not from the destination: sent to it"
    );
}
