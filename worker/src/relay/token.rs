//! What sipsockd writes into the messages it relays so that it can act on them later without
//! keeping state: the `sk` parameter of its Via, Record-Route and Path entries (a MAC-protected
//! token), the stateless branch, and the fast hashes behind them.
//!
//! # Tokens
//! A token is `base32(payload ‖ mac)`: the payload is a type byte and LEB128 numbers, the MAC the
//! first [`MAC_LEN`] bytes of HMAC-SHA256 keyed with the `[relay] secret` ([`RelayKey`]) over the
//! payload and what binds it to its place:
//!
//! | type | where | payload | MAC over |
//! |------|-------|---------|----------|
//! | `0x01` | Via | arrival slot (responses leave through it to the next Via) | payload, Call-ID |
//! | `0x02` | Via | arrival slot, flow (responses go back over the connection) | payload, Call-ID |
//! | `0x03` | Via | arrival slot, relay record (the outbound connection it came over) | payload, Call-ID |
//! | `0x11` | Record-Route | slot the entry names | payload, host:port of the URI, Call-ID |
//! | `0x12` | Record-Route | slot, the flow of the side it faces | payload, host:port, Call-ID |
//! | `0x22` | Path | slot of the connection, flow | payload, host:port (no Call-ID: a Path serves every later dialog) |
//!
//! The Call-ID makes a Via or Record-Route copied into another dialog fail; the host:port makes a
//! Route moved to another of sipsockd's addresses fail. The type byte keeps a token of one place
//! from being accepted in another. Base32 (RFC 4648 alphabet in lower case, no padding) is a
//! `token` in Via parameters and a `paramchar` run in URIs; decoding accepts either case.
//!
//! # Branch
//! `z9hG4bK` + [`MAGIC`] + `h1` + `h2` (13 base32 characters each): `h1` hashes the received top
//! Via's branch (so a CANCEL and the ACK of a non-2xx response, which repeat it, get the INVITE's
//! branch, RFC 3261 §16.11), `h2` is the loop hash of RFC 3261 §16.6 step 8 (see
//! `LoopHash`). Neither is secret: they are compared, never trusted to route.
//!
//! Nothing here allocates; encodings go to the caller's buffer or a stack array.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Bytes of the truncated MAC (96 bits).
pub const MAC_LEN: usize = 12;

/// The prefix of every branch sipsockd writes: RFC 3261's magic cookie and sipsockd's mark.
pub const BRANCH_PREFIX: &[u8] = b"z9hG4bKsS";

/// sipsockd's mark after the magic cookie.
pub const MAGIC: &[u8] = b"sS";

/// Base32 characters of an encoded `u64`.
pub const HASH_CHARS: usize = 13;

/// Length of a branch sipsockd writes.
pub const BRANCH_LEN: usize = BRANCH_PREFIX.len() + 2 * HASH_CHARS;

/// The largest payload (type byte and the LEB128 fields of a flow: slot, rank, connection,
/// generation).
const MAX_PAYLOAD: usize = 1 + 5 + 5 + 10 + 5;

/// The largest decoded token.
const MAX_TOKEN: usize = MAX_PAYLOAD + MAC_LEN;

/// The longest token text (base32 of the largest payload and the MAC).
pub const MAX_TOKEN_CHARS: usize = (MAX_TOKEN * 8).div_ceil(5);

/// A connection of a stream worker: where a message came from, or where one must go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    /// The stream worker's rank.
    pub rank: u32,
    /// The connection's id in that worker.
    pub conn: u64,
    /// The generation of the process of that rank that owns the connection (a restarted worker
    /// has none of its predecessor's connections).
    pub generation: u32,
}

/// Where the responses to a relayed request go, as the Via token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Back {
    /// Out of the arrival socket to the `received` / `rport` of the next Via (UDP).
    Socket,
    /// Over the connection the request came on.
    Flow(Flow),
    /// Over the outbound connection to the destination of this relay record.
    Outbound(u32),
}

/// A decoded token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    /// In sipsockd's Via: the arrival socket and how the request came.
    Via {
        /// The arrival socket.
        slot: u32,
        /// How responses go back.
        back: Back,
    },
    /// In a Record-Route (then Route) entry: the socket it names, and the flow on that side.
    Route {
        /// The socket.
        slot: u32,
        /// The connection of the peer on that side, when it is one.
        flow: Option<Flow>,
    },
    /// In a Path entry: a client's connection.
    Path {
        /// The socket the connection was accepted on.
        slot: u32,
        /// The connection.
        flow: Flow,
    },
}

const VIA_SOCKET: u8 = 0x01;
const VIA_FLOW: u8 = 0x02;
const VIA_OUTBOUND: u8 = 0x03;
const ROUTE: u8 = 0x11;
const ROUTE_FLOW: u8 = 0x12;
const PATH: u8 = 0x22;

/// Separates the MAC's inputs (never in UTF-8 text).
const SEPARATOR: &[u8] = &[0xff];

/// The relay's secret: 32 bytes from `[relay] secret_file`, shared by the nodes that share a
/// database. Holds the HMAC state after the key (the inner and outer pads are hashed once).
#[derive(Clone)]
pub struct RelayKey {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for RelayKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RelayKey(..)")
    }
}

impl RelayKey {
    /// Bytes of a secret.
    pub const LEN: usize = 32;

    /// The key of `secret`.
    pub fn new(secret: &[u8; RelayKey::LEN]) -> RelayKey {
        // HMAC takes a key of any length; a 32-byte one never fails.
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
            .unwrap_or_else(|_| <Hmac<Sha256> as KeyInit>::new(&Default::default()));
        RelayKey { mac }
    }

    /// The truncated MAC of the concatenation of `parts`.
    pub(crate) fn mac(&self, parts: &[&[u8]]) -> [u8; MAC_LEN] {
        let mut mac = self.mac.clone();
        for part in parts {
            mac.update(part);
        }
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; MAC_LEN];
        for (o, b) in out.iter_mut().zip(full.iter()) {
            *o = *b;
        }
        out
    }
}

/// A token's payload, built on the stack.
struct Payload {
    bytes: [u8; MAX_TOKEN],
    len: usize,
}

impl Payload {
    fn new(kind: u8) -> Payload {
        let mut bytes = [0u8; MAX_TOKEN];
        if let Some(first) = bytes.first_mut() {
            *first = kind;
        }
        Payload { bytes, len: 1 }
    }

    fn push(&mut self, mut n: u64) {
        loop {
            let low = (n & 0x7f) as u8;
            n >>= 7;
            let byte = if n == 0 { low } else { low | 0x80 };
            if let Some(b) = self.bytes.get_mut(self.len) {
                *b = byte;
                self.len += 1;
            }
            if n == 0 {
                break;
            }
        }
    }

    fn push_flow(&mut self, flow: Flow) {
        self.push(u64::from(flow.rank));
        self.push(flow.conn);
        self.push(u64::from(flow.generation));
    }

    fn bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }
}

/// What a token's MAC covers besides its payload.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Binding<'a> {
    /// The host:port of the URI it sits in (Record-Route, Path); empty for a Via.
    pub hostport: &'a [u8],
    /// The Call-ID (Via, Record-Route); empty for a Path.
    pub call_id: &'a [u8],
}

impl Token {
    fn payload(&self) -> Payload {
        match *self {
            Token::Via { slot, back } => {
                let kind = match back {
                    Back::Socket => VIA_SOCKET,
                    Back::Flow(_) => VIA_FLOW,
                    Back::Outbound(_) => VIA_OUTBOUND,
                };
                let mut p = Payload::new(kind);
                p.push(u64::from(slot));
                match back {
                    Back::Socket => {}
                    Back::Flow(flow) => p.push_flow(flow),
                    Back::Outbound(record) => p.push(u64::from(record)),
                }
                p
            }
            Token::Route { slot, flow } => {
                let mut p = Payload::new(if flow.is_some() { ROUTE_FLOW } else { ROUTE });
                p.push(u64::from(slot));
                if let Some(flow) = flow {
                    p.push_flow(flow);
                }
                p
            }
            Token::Path { slot, flow } => {
                let mut p = Payload::new(PATH);
                p.push(u64::from(slot));
                p.push_flow(flow);
                p
            }
        }
    }

    /// Write the token (base32 text) for the place `binding` describes.
    pub(crate) fn write(&self, key: &RelayKey, binding: Binding<'_>, out: &mut Vec<u8>) {
        let mut p = self.payload();
        let mac = mac_of(key, p.bytes(), self.bound(binding));
        for b in mac {
            if let Some(slot) = p.bytes.get_mut(p.len) {
                *slot = b;
                p.len += 1;
            }
        }
        put_base32(out, p.bytes());
    }

    /// Decode and check a token's text found at a place `binding` describes: `None` when it is
    /// not base32, not a known payload, or its MAC does not match.
    pub(crate) fn read(text: &[u8], key: &RelayKey, binding: Binding<'_>) -> Option<Token> {
        let mut raw = [0u8; MAX_TOKEN];
        let len = decode_base32(text, &mut raw)?;
        let body_len = len.checked_sub(MAC_LEN)?;
        let (body, mac) = raw.get(..len)?.split_at(body_len);
        let (token, used) = parse_payload(body)?;
        if used != body.len() {
            return None;
        }
        let want = mac_of(key, body, token.bound(binding));
        // Not early-exiting on the first difference: the comparison takes the same time whatever
        // the forged MAC shares with the right one.
        let diff = want.iter().zip(mac).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        (diff == 0).then_some(token)
    }

    /// The binding this kind of token is checked against (a Via binds no host:port, a Path no
    /// Call-ID).
    fn bound<'a>(&self, binding: Binding<'a>) -> Binding<'a> {
        match self {
            Token::Via { .. } => Binding {
                hostport: b"",
                call_id: binding.call_id,
            },
            Token::Route { .. } => binding,
            Token::Path { .. } => Binding {
                hostport: binding.hostport,
                call_id: b"",
            },
        }
    }
}

fn mac_of(key: &RelayKey, payload: &[u8], binding: Binding<'_>) -> [u8; MAC_LEN] {
    key.mac(&[payload, binding.hostport, SEPARATOR, binding.call_id])
}

/// A payload's token and the bytes it used.
fn parse_payload(body: &[u8]) -> Option<(Token, usize)> {
    let mut r = Reader { body, at: 1 };
    let kind = *body.first()?;
    let slot = r.u32()?;
    let token = match kind {
        VIA_SOCKET => Token::Via {
            slot,
            back: Back::Socket,
        },
        VIA_FLOW => Token::Via {
            slot,
            back: Back::Flow(r.flow()?),
        },
        VIA_OUTBOUND => Token::Via {
            slot,
            back: Back::Outbound(r.u32()?),
        },
        ROUTE => Token::Route { slot, flow: None },
        ROUTE_FLOW => Token::Route {
            slot,
            flow: Some(r.flow()?),
        },
        PATH => Token::Path {
            slot,
            flow: r.flow()?,
        },
        _ => return None,
    };
    Some((token, r.at))
}

struct Reader<'a> {
    body: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn u64(&mut self) -> Option<u64> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.body.get(self.at)?;
            self.at += 1;
            n |= u64::from(b & 0x7f).checked_shl(shift)?;
            if b & 0x80 == 0 {
                return Some(n);
            }
        }
        None
    }

    fn u32(&mut self) -> Option<u32> {
        u32::try_from(self.u64()?).ok()
    }

    fn flow(&mut self) -> Option<Flow> {
        Some(Flow {
            rank: self.u32()?,
            conn: self.u64()?,
            generation: self.u32()?,
        })
    }
}

const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

fn base32_char(n: u64) -> u8 {
    BASE32.get((n & 31) as usize).copied().unwrap_or(b'a')
}

/// Write `bytes` in base32 (lower case, no padding): five bytes give eight characters, written
/// to the stack and appended at once.
pub(crate) fn put_base32(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut text = [0u8; 8];
    let mut chunks = bytes.chunks(5);
    for chunk in &mut chunks {
        let mut group = [0u8; 8];
        for (g, b) in group.iter_mut().skip(3).zip(chunk) {
            *g = *b;
        }
        let bits = u64::from_be_bytes(group);
        for (i, c) in text.iter_mut().enumerate() {
            *c = base32_char(bits >> (35 - 5 * i));
        }
        let used = (chunk.len() * 8).div_ceil(5);
        out.extend_from_slice(text.get(..used).unwrap_or_default());
    }
}

/// Write a `u64` as [`HASH_CHARS`] base32 characters: [`put_base32`] of its big-endian bytes.
pub(crate) fn put_hash(out: &mut Vec<u8>, h: u64) {
    out.extend_from_slice(&hash_text(h));
}

/// [`put_hash`] on the stack.
pub(crate) fn hash_text(h: u64) -> [u8; HASH_CHARS] {
    // 64 bits and one zero padding bit: 13 groups of 5, from the top.
    let bits = u128::from(h) << 1;
    let mut text = [0u8; HASH_CHARS];
    for (i, c) in text.iter_mut().enumerate() {
        *c = base32_char((bits >> (5 * (HASH_CHARS - 1 - i))) as u64);
    }
    text
}

/// Base32 values of the bytes (`0xff`: not base32), either case.
// Indexing in a const block is checked at compile time.
#[allow(clippy::indexing_slicing)]
const DECODE: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 26 {
        t[b'a' as usize + i] = i as u8;
        t[b'A' as usize + i] = i as u8;
        i += 1;
    }
    let mut d = 0;
    while d < 6 {
        t[b'2' as usize + d] = 26 + d as u8;
        d += 1;
    }
    t
};

/// Decode base32 text (either case) into `out`; its number of bytes, `None` when a character is
/// not base32, the text does not fit, or the unused low bits are not zero.
fn decode_base32(text: &[u8], out: &mut [u8]) -> Option<usize> {
    let mut acc: u64 = 0;
    let mut bits = 0u32;
    let mut len = 0;
    for c in text {
        let v = DECODE.get(usize::from(*c)).copied().unwrap_or(0xff);
        if v == 0xff {
            return None;
        }
        acc = (acc << 5) | u64::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            *out.get_mut(len)? = (acc >> bits) as u8;
            len += 1;
        }
        acc &= (1 << bits) - 1;
    }
    // Padding bits must be zero, so that each token has one text.
    (bits < 5 && acc == 0).then_some(len)
}

/// 64-bit hashes: fast, deterministic across processes and runs, not cryptographic (the branch
/// parts, the rendezvous hashing, the choice of a stream worker). Eight bytes at a time, each word
/// multiplied in, then the MurmurHash3 finaliser.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hasher64 {
    h: u64,
}

const K1: u64 = 0x9e37_79b9_7f4a_7c15;
const K2: u64 = 0xff51_afd7_ed55_8ccd;
const K3: u64 = 0xc4ce_b9fe_1a85_ec53;

impl Hasher64 {
    pub(crate) fn new(seed: u64) -> Hasher64 {
        Hasher64 {
            h: seed ^ 0x2545_f491_4f6c_dd1d,
        }
    }

    fn word(&mut self, w: u64) {
        self.h = (self.h ^ w).wrapping_mul(K1).rotate_left(31);
    }

    /// Add `bytes`, then their length (so that `("ab", "c")` and `("a", "bc")` differ).
    pub(crate) fn bytes(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.word(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            for (d, s) in w.iter_mut().zip(rest) {
                *d = *s;
            }
            self.word(u64::from_le_bytes(w));
        }
        self.word(bytes.len() as u64 ^ 0xa5a5_0000_0000_0000);
    }

    pub(crate) fn u64(&mut self, n: u64) {
        self.word(n);
    }

    pub(crate) fn finish(&self) -> u64 {
        mix(self.h)
    }
}

/// The MurmurHash3 64-bit finaliser (full avalanche).
pub(crate) fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(K2);
    h ^= h >> 33;
    h = h.wrapping_mul(K3);
    h ^= h >> 33;
    h
}

/// One-shot hash of `bytes`.
pub fn hash(bytes: &[u8]) -> u64 {
    let mut h = Hasher64::new(0);
    h.bytes(bytes);
    h.finish()
}

/// The loop hash of RFC 3261 §16.6 step 8 as sipsockd computes it: over the Request-URI, the
/// From tag, the Call-ID, the CSeq number and the Route values as received (not the To tag, not
/// the method: a CANCEL and an ACK share the INVITE's), and the slot the request arrived on (the
/// same request spiralling in on another socket, customer A to the core to customer B's socket,
/// is a spiral, not a loop).
pub(crate) struct LoopHash {
    h: Hasher64,
}

impl LoopHash {
    pub(crate) fn new(slot: u32, uri: &[u8], from_tag: &[u8], call_id: &[u8], cseq: u32) -> Self {
        let mut h = Hasher64::new(0x6c6f_6f70);
        h.u64(u64::from(slot) << 32 | u64::from(cseq));
        h.bytes(uri);
        h.bytes(from_tag);
        h.bytes(call_id);
        LoopHash { h }
    }

    /// Add one Route value.
    pub(crate) fn route(&mut self, value: &[u8]) {
        self.h.bytes(value);
    }

    pub(crate) fn finish(&self) -> u64 {
        self.h.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> RelayKey {
        RelayKey::new(&[7u8; 32])
    }

    const B: Binding<'static> = Binding {
        hostport: b"192.0.2.1:5060",
        call_id: b"call-1@example",
    };

    fn text(token: Token, binding: Binding<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        token.write(&key(), binding, &mut out);
        out
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        // RFC 4231 test case 2 (key "Jefe") through the same HMAC type, to show the primitive is
        // HMAC-SHA256 and the truncation keeps its first bytes.
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(b"Jefe").unwrap();
        let k = RelayKey { mac };
        assert_eq!(
            k.mac(&[b"what do ya want ", b"for nothing?"]),
            [0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e, 0x6a, 0x04, 0x24, 0x26]
        );
    }

    #[test]
    fn tokens_round_trip() {
        let flow = Flow {
            rank: 3,
            conn: u64::MAX,
            generation: u32::MAX,
        };
        for token in [
            Token::Via {
                slot: 0,
                back: Back::Socket,
            },
            Token::Via {
                slot: u32::MAX,
                back: Back::Flow(flow),
            },
            Token::Via {
                slot: 7,
                back: Back::Outbound(12),
            },
            Token::Route {
                slot: 300,
                flow: None,
            },
            Token::Route {
                slot: 1,
                flow: Some(flow),
            },
            Token::Path { slot: 2, flow },
        ] {
            let t = text(token, B);
            assert!(t.len() <= MAX_TOKEN_CHARS, "{}", t.len());
            assert!(t.iter().all(|c| BASE32.contains(c)));
            assert_eq!(Token::read(&t, &key(), B), Some(token), "{token:?}");
            assert_eq!(Token::read(&t.to_ascii_uppercase(), &key(), B), Some(token));
            // Another key, a changed character, a cut: refused.
            assert_eq!(Token::read(&t, &RelayKey::new(&[8u8; 32]), B), None);
            let mut bad = t.clone();
            bad[3] = if bad[3] == b'a' { b'b' } else { b'a' };
            assert_eq!(Token::read(&bad, &key(), B), None);
            assert_eq!(Token::read(&t[..t.len() - 1], &key(), B), None);
            assert_eq!(Token::read(&[t.as_slice(), b"a"].concat(), &key(), B), None);
        }
    }

    #[test]
    fn bindings() {
        let other_call = Binding {
            call_id: b"call-2@example",
            ..B
        };
        let other_host = Binding {
            hostport: b"192.0.2.2:5060",
            ..B
        };
        let via = text(
            Token::Via {
                slot: 1,
                back: Back::Socket,
            },
            B,
        );
        assert!(Token::read(&via, &key(), other_call).is_none());
        assert!(
            Token::read(&via, &key(), other_host).is_some(),
            "a Via binds no host"
        );
        let route = text(
            Token::Route {
                slot: 1,
                flow: None,
            },
            B,
        );
        assert!(Token::read(&route, &key(), other_call).is_none());
        assert!(Token::read(&route, &key(), other_host).is_none());
        let flow = Flow {
            rank: 0,
            conn: 1,
            generation: 1,
        };
        let path = text(Token::Path { slot: 1, flow }, B);
        assert!(
            Token::read(&path, &key(), other_call).is_some(),
            "a Path serves every dialog"
        );
        assert!(Token::read(&path, &key(), other_host).is_none());
    }

    #[test]
    fn base32() {
        let mut out = Vec::new();
        put_base32(&mut out, b"");
        assert_eq!(out, b"");
        // RFC 4648 §10 vectors, in lower case and without padding.
        for (input, want) in [
            (&b"f"[..], &b"my"[..]),
            (b"fo", b"mzxq"),
            (b"foo", b"mzxw6"),
            (b"foob", b"mzxw6yq"),
            (b"fooba", b"mzxw6ytb"),
            (b"foobar", b"mzxw6ytboi"),
        ] {
            out.clear();
            put_base32(&mut out, input);
            assert_eq!(out, want);
            let mut back = [0u8; 16];
            let n = decode_base32(want, &mut back).unwrap();
            assert_eq!(&back[..n], input);
        }
        // Non-zero padding bits and foreign characters are refused.
        assert_eq!(decode_base32(b"mz", &mut [0u8; 4]), None);
        assert_eq!(decode_base32(b"m1", &mut [0u8; 4]), None);
        assert_eq!(decode_base32(b"mzxw6ytboi", &mut [0u8; 2]), None);
        for h in [0, 1, u64::MAX, 0x0123_4567_89ab_cdef] {
            out.clear();
            put_base32(&mut out, &u64::to_be_bytes(h));
            assert_eq!(out, hash_text(h), "{h:x}");
        }
    }

    #[test]
    fn hashes_are_stable_and_length_aware() {
        // Pinned: the branch, the loop hash and the rendezvous choice must not change between
        // builds (several processes and nodes compute them).
        assert_eq!(hash(b""), hash(b""));
        assert_ne!(hash(b"a"), hash(b"a\0"));
        let mut a = Hasher64::new(0);
        a.bytes(b"ab");
        a.bytes(b"c");
        let mut b = Hasher64::new(0);
        b.bytes(b"a");
        b.bytes(b"bc");
        assert_ne!(a.finish(), b.finish());
        assert_eq!(hash(b"call-1@example"), 0xbce4_d5fb_df9e_ff6a);
    }
}
