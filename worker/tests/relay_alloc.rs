//! The relay allocates nothing per message: once the output buffer has grown to the largest
//! message, relaying a request, a response, a local reply and a refusal makes no call to the
//! allocator (counted by a global allocator that counts on the test's thread only).

#[path = "common/relay_world.rs"]
mod world;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use worker::handler::SocketParts;
use worker::relay::{Action, Arrival};
use worker::sip::Parsed;
use world::*;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: every call is passed to the system allocator unchanged; the counter is a side effect.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above, i.e. from the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: as for `alloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn relaying_allocates_nothing_per_message() {
    let w = world();
    let invite = "INVITE sip:bob@biloxi.example SIP/2.0\r\n\
        Via: SIP/2.0/UDP 10.1.1.5:5062;branch=z9hG4bK776asdhds;rport\r\nMax-Forwards: 70\r\n\
        To: Bob <sip:bob@biloxi.example>\r\nFrom: Alice <sip:alice@atlanta.example>;tag=1928301774\r\n\
        Call-ID: alloc-1@pc33\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@203.0.113.5:5062>\r\n\
        Content-Length: 0\r\n\r\n";
    let (_, fwd) = w.handle(invite, udp(A_UDP, PHONE_A));
    let ok = response_to(&fwd, "200 OK", Some("t"), "sip:bob@192.0.2.50");
    let rr = read(&fwd).record_routes.join(", ");
    let bye = format!(
        "BYE sip:bob@192.0.2.50 SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.1.5:5062;branch=z9hG4bKb\r\n\
         Route: {rr}\r\nTo: <sip:bob@biloxi.example>;tag=t\r\nFrom: <sip:alice@a>;tag=1928301774\r\n\
         Call-ID: alloc-1@pc33\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    let forged = bye.replace("sk=", "sk=b");
    let keepalive =
        "OPTIONS sip:a.sbc.example SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.1.5;branch=z9hG4bKo\r\n\
        From: <sip:a@a>;tag=1\r\nTo: <sip:a.sbc.example>\r\nCall-ID: o\r\nCSeq: 1 OPTIONS\r\n\r\n";
    let cases: [(&str, In); 6] = [
        (invite, udp(A_UDP, PHONE_A)),
        (&ok, udp(A_UDP, CORE)),
        (&bye, udp(A_UDP, PHONE_A)),
        (&forged, udp(A_UDP, PHONE_A)),
        (keepalive, udp(A_UDP, PHONE_A)),
        (invite, udp(TRUNK_UDP, PHONE_A)),
    ];
    let parts = SocketParts::new("a.sbc.example:5060", shm::Proto::Udp);
    let mut parsed = Parsed::new();
    let mut out = Vec::with_capacity(4096);
    let alive = |_| true;
    let mut actions = Vec::new();
    for (msg, a) in cases {
        let arrival = Arrival {
            slot: a.slot,
            transport: a.transport,
            source: a.source,
            flow: a.flow,
            outbound: a.outbound,
            parts: &parts,
        };
        ALLOCATIONS.store(0, Ordering::Relaxed);
        COUNTING.with(|c| c.set(true));
        let action = w
            .relay
            .handle_bytes(&mut parsed, msg.as_bytes(), &arrival, &alive, &mut out);
        COUNTING.with(|c| c.set(false));
        assert_eq!(
            ALLOCATIONS.load(Ordering::Relaxed),
            0,
            "{action:?} for {msg}"
        );
        actions.push(action);
    }
    // The cases cover each kind of outcome.
    assert!(matches!(actions[0], Action::Forward(_)));
    assert!(matches!(actions[1], Action::Forward(_)));
    assert!(matches!(actions[2], Action::Forward(_)));
    assert!(matches!(actions[3], Action::Reply(_)));
    assert!(matches!(actions[4], Action::Reply(_)));
    assert!(matches!(actions[5], Action::Forward(_)));
}
