//! Names the scanner recognises in O(1): header names (full and compact forms, any case), methods,
//! and the option tags of `Supported` / `Require` / `Proxy-Require`.
//!
//! A header name is recognised by its length and first letter (one `match`, compiled to a jump
//! table), then one case-insensitive compare with the only candidate; a compact form by a
//! 26-entry table. Nothing here allocates or loops over a list of names.

/// The header fields this crate tells apart; every other one is [`HeaderKind::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum HeaderKind {
    /// `Via` / `v`.
    Via,
    /// `From` / `f`.
    From,
    /// `To` / `t`.
    To,
    /// `Call-ID` / `i`.
    CallId,
    /// `CSeq` (no compact form).
    CSeq,
    /// `Content-Length` / `l`.
    ContentLength,
    /// `Contact` / `m`.
    Contact,
    /// `Content-Type` / `c`.
    ContentType,
    /// `Content-Encoding` / `e`.
    ContentEncoding,
    /// `Subject` / `s`.
    Subject,
    /// `Supported` / `k`.
    Supported,
    /// `Event` / `o` (RFC 6665).
    Event,
    /// `Allow-Events` / `u` (RFC 6665).
    AllowEvents,
    /// `Refer-To` / `r` (RFC 3515).
    ReferTo,
    /// `Referred-By` / `b` (RFC 3892).
    ReferredBy,
    /// `Session-Expires` / `x` (RFC 4028).
    SessionExpires,
    /// `Accept-Contact` / `a` (RFC 3841).
    AcceptContact,
    /// `Reject-Contact` / `j` (RFC 3841).
    RejectContact,
    /// `Request-Disposition` / `d` (RFC 3841).
    RequestDisposition,
    /// `Identity` / `y` (RFC 8224).
    Identity,
    /// `Max-Forwards` (no compact form).
    MaxForwards,
    /// `Route`.
    Route,
    /// `Record-Route`.
    RecordRoute,
    /// `Path` (RFC 3327).
    Path,
    /// `Require`.
    Require,
    /// `Proxy-Require`.
    ProxyRequire,
    /// Any other header.
    Other,
}

/// Number of [`HeaderKind`] values ([`HeaderKind::Other`] included).
pub const KINDS: usize = HeaderKind::Other as usize + 1;

/// Full names, indexed by `HeaderKind as usize` (`Other` has none).
const FULL: [&str; KINDS] = [
    "Via",
    "From",
    "To",
    "Call-ID",
    "CSeq",
    "Content-Length",
    "Contact",
    "Content-Type",
    "Content-Encoding",
    "Subject",
    "Supported",
    "Event",
    "Allow-Events",
    "Refer-To",
    "Referred-By",
    "Session-Expires",
    "Accept-Contact",
    "Reject-Contact",
    "Request-Disposition",
    "Identity",
    "Max-Forwards",
    "Route",
    "Record-Route",
    "Path",
    "Require",
    "Proxy-Require",
    "",
];

/// Compact forms `a` to `z` (RFC 3261 §7.3.3 and the ones registered since).
const COMPACT: [HeaderKind; 26] = {
    use HeaderKind::*;
    [
        AcceptContact,      // a
        ReferredBy,         // b
        ContentType,        // c
        RequestDisposition, // d
        ContentEncoding,    // e
        From,               // f
        Other,              // g
        Other,              // h
        CallId,             // i
        RejectContact,      // j
        Supported,          // k
        ContentLength,      // l
        Contact,            // m
        Other,              // n
        Event,              // o
        Other,              // p
        Other,              // q
        ReferTo,            // r
        Subject,            // s
        To,                 // t
        AllowEvents,        // u
        Via,                // v
        Other,              // w
        SessionExpires,     // x
        Identity,           // y
        Other,              // z
    ]
};

/// Full names folded to lower case (`| 0x20` on each byte, which is exact on token characters),
/// as two little-endian words; names longer than 16 bytes are compared byte by byte.
// Indexing in a const block is checked at compile time.
#[allow(clippy::indexing_slicing)]
const FOLDED: [[u64; 2]; KINDS] = {
    let mut t = [[0u64; 2]; KINDS];
    let mut k = 0;
    while k < KINDS {
        let name = FULL[k].as_bytes();
        let mut i = 0;
        while i < name.len() && i < 16 {
            t[k][i / 8] |= ((name[i] | 0x20) as u64) << (8 * (i % 8));
            i += 1;
        }
        k += 1;
    }
    t
};

/// The low `n` bytes (at most 8) of a word.
const fn low_bytes(n: usize) -> u64 {
    if n >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * n)) - 1
    }
}

impl HeaderKind {
    /// The kind of the header name `b[start..start + len]`, a token (the scanner checked): the
    /// name is read as words folded to lower case and compared with the one candidate its length
    /// and first letter give. The same result as [`HeaderKind::of_bytes`].
    pub(crate) fn lookup(b: &[u8], start: usize, len: usize) -> HeaderKind {
        let word = |at: usize| -> Option<u64> {
            let chunk = b.get(at..at.checked_add(8)?)?;
            <[u8; 8]>::try_from(chunk).ok().map(u64::from_le_bytes)
        };
        let (Some(first), true) = (word(start), (2..=16).contains(&len)) else {
            return HeaderKind::of_bytes(b.get(start..start + len).unwrap_or_default());
        };
        let second = if len > 8 { word(start + 8) } else { Some(0) };
        let Some(second) = second else {
            return HeaderKind::of_bytes(b.get(start..start + len).unwrap_or_default());
        };
        let fold = 0x2020_2020_2020_2020u64;
        let lo = (first | fold) & low_bytes(len);
        let hi = (second | fold) & low_bytes(len.saturating_sub(8));
        let candidate = HeaderKind::candidate(len, lo as u8, (lo >> 16) as u8);
        match FOLDED.get(candidate as usize) {
            Some([a, b]) if *a == lo && *b == hi && candidate != HeaderKind::Other => candidate,
            _ => HeaderKind::Other,
        }
    }

    /// The only kind whose full name has this length, first and third letter (lower case).
    fn candidate(len: usize, first: u8, third: u8) -> HeaderKind {
        use HeaderKind::*;
        match (len, first) {
            (2, b't') => To,
            (3, b'v') => Via,
            (4, b'f') => From,
            (4, b'c') => CSeq,
            (4, b'p') => Path,
            (5, b'e') => Event,
            (5, b'r') => Route,
            (7, b'c') if third == b'l' => CallId,
            (7, b'c') => Contact,
            (7, b's') => Subject,
            (7, b'r') => Require,
            (8, b'r') => ReferTo,
            (8, b'i') => Identity,
            (9, b's') => Supported,
            (11, b'r') => ReferredBy,
            (12, b'c') => ContentType,
            (12, b'm') => MaxForwards,
            (12, b'a') => AllowEvents,
            (12, b'r') => RecordRoute,
            (13, b'p') => ProxyRequire,
            (14, b'c') => ContentLength,
            (14, b'a') => AcceptContact,
            (14, b'r') => RejectContact,
            (15, b's') => SessionExpires,
            (16, b'c') => ContentEncoding,
            (19, b'r') => RequestDisposition,
            _ => Other,
        }
    }

    /// The kind of a header name, full or compact, in any case.
    pub fn of(name: &str) -> HeaderKind {
        HeaderKind::of_bytes(name.as_bytes())
    }

    /// [`HeaderKind::of`] on bytes.
    pub fn of_bytes(name: &[u8]) -> HeaderKind {
        use HeaderKind::*;
        let Some(&first) = name.first() else {
            return Other;
        };
        if !first.is_ascii_alphabetic() {
            return Other;
        }
        let first = first.to_ascii_lowercase();
        if name.len() == 1 {
            return COMPACT
                .get(usize::from(first - b'a'))
                .copied()
                .unwrap_or(Other);
        }
        let third = name.get(2).map_or(0, u8::to_ascii_lowercase);
        let candidate = HeaderKind::candidate(name.len(), first, third);
        if candidate != Other && name.eq_ignore_ascii_case(candidate.name().as_bytes()) {
            candidate
        } else {
            Other
        }
    }

    /// The full name, as replies write it (`None` for [`HeaderKind::Other`]).
    pub fn full_name(self) -> Option<&'static str> {
        Some(self.name()).filter(|n| !n.is_empty())
    }

    fn name(self) -> &'static str {
        FULL.get(self as usize).copied().unwrap_or("")
    }
}

/// A request method, for the ones a SIP element meets every day; the text is in the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// `INVITE`.
    Invite,
    /// `ACK`.
    Ack,
    /// `BYE`.
    Bye,
    /// `CANCEL`.
    Cancel,
    /// `OPTIONS`.
    Options,
    /// `REGISTER`.
    Register,
    /// `INFO` (RFC 6086).
    Info,
    /// `PRACK` (RFC 3262).
    Prack,
    /// `UPDATE` (RFC 3311).
    Update,
    /// `SUBSCRIBE` (RFC 6665).
    Subscribe,
    /// `NOTIFY` (RFC 6665).
    Notify,
    /// `PUBLISH` (RFC 3903).
    Publish,
    /// `MESSAGE` (RFC 3428).
    Message,
    /// `REFER` (RFC 3515).
    Refer,
    /// Any other token (methods are case-sensitive: `options` is one of these).
    Other,
}

impl Method {
    /// The method named by `token` (case-sensitive, RFC 3261 §7.1).
    pub fn of(token: &[u8]) -> Method {
        use Method::*;
        let candidate = match (token.len(), token.first()) {
            (3, Some(b'A')) => Ack,
            (3, Some(b'B')) => Bye,
            (4, Some(b'I')) => Info,
            (5, Some(b'P')) => Prack,
            (5, Some(b'R')) => Refer,
            (6, Some(b'I')) => Invite,
            (6, Some(b'C')) => Cancel,
            (6, Some(b'U')) => Update,
            (6, Some(b'N')) => Notify,
            (7, Some(b'O')) => Options,
            (7, Some(b'P')) => Publish,
            (7, Some(b'M')) => Message,
            (8, Some(b'R')) => Register,
            (9, Some(b'S')) => Subscribe,
            _ => return Other,
        };
        if token == candidate.as_str().as_bytes() {
            candidate
        } else {
            Other
        }
    }

    /// The method's name (`""` for [`Method::Other`]: read it from the message).
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Options => "OPTIONS",
            Method::Register => "REGISTER",
            Method::Info => "INFO",
            Method::Prack => "PRACK",
            Method::Update => "UPDATE",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Publish => "PUBLISH",
            Method::Message => "MESSAGE",
            Method::Refer => "REFER",
            Method::Other => "",
        }
    }
}

/// The option tags named in `Supported`, `Require` or `Proxy-Require` headers (all lines of the
/// kind together), as a set: the ones a proxy or registrar acts on, and [`OptionTags::OTHER`] for
/// any other tag (RFC 3261 §8.2.2.3: a UAS that sees an unknown tag in `Require` answers 420).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct OptionTags(u16);

impl OptionTags {
    /// No tag.
    pub const NONE: OptionTags = OptionTags(0);
    /// `path` (RFC 3327).
    pub const PATH: OptionTags = OptionTags(1);
    /// `outbound` (RFC 5626).
    pub const OUTBOUND: OptionTags = OptionTags(1 << 1);
    /// `gruu` (RFC 5627).
    pub const GRUU: OptionTags = OptionTags(1 << 2);
    /// `timer` (RFC 4028).
    pub const TIMER: OptionTags = OptionTags(1 << 3);
    /// `100rel` (RFC 3262).
    pub const REL100: OptionTags = OptionTags(1 << 4);
    /// `replaces` (RFC 3891).
    pub const REPLACES: OptionTags = OptionTags(1 << 5);
    /// Any tag not listed above.
    pub const OTHER: OptionTags = OptionTags(1 << 15);

    /// True when every tag of `other` is in `self`.
    pub fn contains(self, other: OptionTags) -> bool {
        self.0 & other.0 == other.0
    }

    /// True for the empty set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The tag named `token` (case-insensitive, RFC 3261 §19.2 compares them so).
    pub fn of(token: &[u8]) -> OptionTags {
        let candidate = match token.len() {
            4 => OptionTags::PATH,
            8 => match token.first().map(u8::to_ascii_lowercase) {
                Some(b'o') => OptionTags::OUTBOUND,
                _ => OptionTags::REPLACES,
            },
            5 => OptionTags::TIMER,
            6 => OptionTags::REL100,
            _ if token.eq_ignore_ascii_case(b"gruu") => return OptionTags::GRUU,
            _ => return OptionTags::OTHER,
        };
        let name: &[u8] = match candidate {
            OptionTags::PATH => b"path",
            OptionTags::OUTBOUND => b"outbound",
            OptionTags::REPLACES => b"replaces",
            OptionTags::TIMER => b"timer",
            _ => b"100rel",
        };
        if token.eq_ignore_ascii_case(name) {
            candidate
        } else if token.eq_ignore_ascii_case(b"gruu") {
            OptionTags::GRUU
        } else {
            OptionTags::OTHER
        }
    }
}

impl std::ops::BitOr for OptionTags {
    type Output = OptionTags;
    fn bitor(self, rhs: OptionTags) -> OptionTags {
        OptionTags(self.0 | rhs.0)
    }
}

impl std::ops::BitOrAssign for OptionTags {
    fn bitor_assign(&mut self, rhs: OptionTags) {
        self.0 |= rhs.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind is found by its full name in any case, and by its compact form.
    #[test]
    fn every_name_is_found() {
        for (i, full) in FULL.iter().enumerate().filter(|(_, f)| !f.is_empty()) {
            let kind = HeaderKind::of(full);
            assert_eq!(kind as usize, i, "{full}");
            assert_eq!(HeaderKind::of(&full.to_ascii_lowercase()), kind);
            assert_eq!(HeaderKind::of(&full.to_ascii_uppercase()), kind);
            assert_eq!(kind.full_name(), Some(*full));
        }
        for (i, kind) in COMPACT.iter().enumerate() {
            let c = char::from(b'a' + i as u8);
            assert_eq!(HeaderKind::of(&c.to_string()), *kind);
            assert_eq!(HeaderKind::of(&c.to_ascii_uppercase().to_string()), *kind);
        }
        for other in [
            "",
            "-",
            "1",
            "Vi",
            "Vias",
            "Contac",
            "Contacts",
            "Call-IDs",
            "Call_ID",
            "Xall-ID",
            "Cseq-",
            "Max-Forward",
            "Record_Route",
            "Proxy-Requirf",
            "X-Via",
            "ab",
        ] {
            assert_eq!(HeaderKind::of(other), HeaderKind::Other, "{other}");
        }
        assert_eq!(HeaderKind::Other.full_name(), None);
    }

    proptest::proptest! {
        /// The word-wise lookup agrees with the byte-wise one on any token, wherever it sits.
        #[test]
        fn lookup_agrees_with_of_bytes(
            name in proptest::sample::select(FULL.to_vec()),
            flips in proptest::collection::vec(proptest::bool::ANY, 20),
            edit in proptest::option::of((0usize..20, proptest::sample::select(b"-.!%*_+`'~aZ09".to_vec()))),
            pad in 0usize..10,
            tail in proptest::sample::select(vec![&b":"[..], b": x\r\n\r\n", b"::::::::::::::::"]),
        ) {
            let mut token: Vec<u8> = name
                .bytes()
                .zip(&flips)
                .map(|(c, f)| if *f { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() })
                .collect();
            if let Some((at, c)) = edit {
                if at < token.len() {
                    token[at] = c;
                } else {
                    token.push(c);
                }
            }
            let mut buf = vec![b'x'; pad];
            buf.extend_from_slice(&token);
            buf.extend_from_slice(tail);
            proptest::prop_assert_eq!(
                HeaderKind::lookup(&buf, pad, token.len()),
                HeaderKind::of_bytes(&token),
                "{:?}",
                String::from_utf8_lossy(&token)
            );
        }
    }

    #[test]
    fn methods() {
        for m in [
            Method::Invite,
            Method::Ack,
            Method::Bye,
            Method::Cancel,
            Method::Options,
            Method::Register,
            Method::Info,
            Method::Prack,
            Method::Update,
            Method::Subscribe,
            Method::Notify,
            Method::Publish,
            Method::Message,
            Method::Refer,
        ] {
            assert_eq!(Method::of(m.as_str().as_bytes()), m);
        }
        for other in ["options", "OPTION", "INVITES", "", "PUBLISX", "X"] {
            assert_eq!(Method::of(other.as_bytes()), Method::Other, "{other}");
        }
    }

    #[test]
    fn option_tags() {
        assert_eq!(OptionTags::of(b"path"), OptionTags::PATH);
        assert_eq!(OptionTags::of(b"Path"), OptionTags::PATH);
        assert_eq!(OptionTags::of(b"outbound"), OptionTags::OUTBOUND);
        assert_eq!(OptionTags::of(b"REPLACES"), OptionTags::REPLACES);
        assert_eq!(OptionTags::of(b"timer"), OptionTags::TIMER);
        assert_eq!(OptionTags::of(b"100rel"), OptionTags::REL100);
        assert_eq!(OptionTags::of(b"gruu"), OptionTags::GRUU);
        for other in [
            "paths", "pat", "outbounx", "timex", "100re1", "gru", "", "x",
        ] {
            assert_eq!(
                OptionTags::of(other.as_bytes()),
                OptionTags::OTHER,
                "{other}"
            );
        }
        let set = OptionTags::PATH | OptionTags::OTHER;
        assert!(set.contains(OptionTags::PATH) && !set.contains(OptionTags::GRUU));
        assert!(OptionTags::NONE.is_empty());
    }
}
