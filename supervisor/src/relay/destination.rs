//! The `destination` column of a relay row: a SIP URI naming where a tag's requests go.
//!
//! Pure but for host-name resolution, which goes through the sockets' [`Resolver`] (same rule:
//! exactly one address, the first when a name has several, with a warning).
//!
//! Accepted: `sip:host[:port][;transport=udp|tcp|tls]` and `sips:host[:port][;transport=tcp|tls]`
//! (`sips:` is TLS; RFC 3261 section 19.1.2 lets it say `;transport=tcp`, meaning TLS over TCP).
//! The scheme, the parameter name and its value are case-insensitive; the host is an IPv4
//! address, a bracketed IPv6 address or a host name. Anything else is refused with the reason: a
//! user part, URI headers, another parameter, a repeated or empty one, `sips:` with
//! `;transport=udp`, an unspecified, multicast or broadcast address.

use crate::row::Resolver;
use crate::row::{check_length, check_name, parse_port, resolve_one, split_host_port, Host};
use serde::Serialize;
use shm::Proto;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Longest `destination` accepted: the schema's CHAR(255).
pub const MAX_DESTINATION: usize = 255;

/// A parsed, resolved destination.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Upstream {
    /// The URI as stored (after stripping trailing blanks): the stable key of its share in the
    /// rendezvous hashing.
    pub uri: String,
    /// `udp`, `tcp` or `tls`.
    pub transport: Proto,
    /// The host as written (an IPv6 address without brackets): what a TLS certificate is checked
    /// against.
    pub host: String,
    /// The address resolved at reload, and the port (explicit, else 5060, or 5061 for TLS).
    pub addr: SocketAddr,
}

/// What the URI grammar says, before the host is resolved.
const FORM: &str = "expected sip:host[:port][;transport=udp|tcp|tls] or sips:host[:port]";

/// Parse and resolve a `destination`.
pub fn parse_destination(text: &str, resolver: &dyn Resolver) -> Result<Upstream, String> {
    check_length(text, MAX_DESTINATION)?;
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains blanks".into());
    }
    let (scheme, rest) = text
        .split_once(':')
        .ok_or_else(|| format!("not a SIP URI: {FORM}"))?;
    let secure = if scheme.eq_ignore_ascii_case("sip") {
        false
    } else if scheme.eq_ignore_ascii_case("sips") {
        true
    } else {
        return Err(format!("scheme {scheme:?} is not sip or sips: {FORM}"));
    };
    if rest.contains('?') {
        return Err("URI headers ('?...') are not allowed in a destination".into());
    }
    let (hostport, params) = match rest.split_once(';') {
        Some((h, p)) => (h, Some(p)),
        None => (rest, None),
    };
    if hostport.contains('@') {
        return Err("a destination names a host, not a user: remove the user@ part".into());
    }
    let transport = parse_transport(params, secure)?;
    let (host, port) = split_host_port(hostport)?;
    let port = match port {
        Some(p) => parse_port(p)?,
        None => transport.default_port(),
    };
    let (host, ip) = match host {
        Host::V6(written, ip) => (written.to_string(), IpAddr::V6(ip)),
        Host::Name(h) => match h.parse::<Ipv4Addr>() {
            Ok(ip) => (h.to_string(), IpAddr::V4(ip)),
            Err(_) => {
                check_name(h)?;
                let what = format!("relay destination {text}");
                let ip = resolve_one(&what, h, resolver, "one address per destination")?;
                (h.to_string(), ip)
            }
        },
    };
    if ip.is_unspecified() || ip.is_multicast() || ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
        return Err(format!(
            "{ip} is not the address of one host (unspecified, multicast or broadcast)"
        ));
    }
    Ok(Upstream {
        uri: text.to_string(),
        transport,
        host,
        addr: SocketAddr::new(ip, port),
    })
}

/// The transport of the URI parameters (`None`: there are none).
fn parse_transport(params: Option<&str>, secure: bool) -> Result<Proto, String> {
    let mut transport = None;
    for param in params.map(|p| p.split(';')).into_iter().flatten() {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (param, None),
        };
        if name.is_empty() {
            return Err("empty URI parameter (';;' or a trailing ';')".into());
        }
        if !name.eq_ignore_ascii_case("transport") {
            return Err(format!(
                "unknown URI parameter {name:?} (a destination takes only ;transport=)"
            ));
        }
        if transport.is_some() {
            return Err("transport is given twice".into());
        }
        let value = value.unwrap_or_default();
        let proto = match value.parse::<Proto>() {
            Ok(p @ (Proto::Udp | Proto::Tcp | Proto::Tls)) => p,
            _ => {
                return Err(format!(
                    "unsupported transport {value:?} for a destination (udp, tcp or tls)"
                ))
            }
        };
        transport = Some(proto);
    }
    match (secure, transport) {
        (false, t) => Ok(t.unwrap_or(Proto::Udp)),
        (true, Some(Proto::Udp)) => Err("sips: means TLS; ;transport=udp contradicts it".into()),
        (true, _) => Ok(Proto::Tls),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::tests::names;
    use proptest::prelude::*;

    fn ok(text: &str) -> Upstream {
        parse_destination(text, &names()).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn accepted_forms() {
        let cases: &[(&str, Proto, &str, &str)] = &[
            ("sip:192.0.2.1", Proto::Udp, "192.0.2.1", "192.0.2.1:5060"),
            (
                "sip:192.0.2.1:5080",
                Proto::Udp,
                "192.0.2.1",
                "192.0.2.1:5080",
            ),
            (
                "SIP:192.0.2.1;transport=TCP",
                Proto::Tcp,
                "192.0.2.1",
                "192.0.2.1:5060",
            ),
            (
                "sip:192.0.2.1;Transport=tls",
                Proto::Tls,
                "192.0.2.1",
                "192.0.2.1:5061",
            ),
            (
                "sip:192.0.2.1:6000;transport=udp",
                Proto::Udp,
                "192.0.2.1",
                "192.0.2.1:6000",
            ),
            ("sips:192.0.2.1", Proto::Tls, "192.0.2.1", "192.0.2.1:5061"),
            (
                "sips:192.0.2.1;transport=tcp",
                Proto::Tls,
                "192.0.2.1",
                "192.0.2.1:5061",
            ),
            (
                "sips:192.0.2.1:5071;transport=tls",
                Proto::Tls,
                "192.0.2.1",
                "192.0.2.1:5071",
            ),
            (
                "sip:[2001:db8::1]",
                Proto::Udp,
                "2001:db8::1",
                "[2001:db8::1]:5060",
            ),
            (
                "sip:[2001:db8::1]:5062;transport=tcp",
                Proto::Tcp,
                "2001:db8::1",
                "[2001:db8::1]:5062",
            ),
            (
                "sip:core.example",
                Proto::Udp,
                "core.example",
                "192.0.2.50:5060",
            ),
            (
                "sips:multi.example",
                Proto::Tls,
                "multi.example",
                "192.0.2.8:5061",
            ),
            (
                "sip:v6.example:7",
                Proto::Udp,
                "v6.example",
                "[2001:db8::7]:7",
            ),
        ];
        for (text, transport, host, addr) in cases {
            let u = ok(text);
            assert_eq!(u.uri, *text);
            assert_eq!(u.transport, *transport, "{text}");
            assert_eq!(u.host, *host, "{text}");
            assert_eq!(u.addr, addr.parse().unwrap(), "{text}");
        }
    }

    #[test]
    fn refused_forms_say_why() {
        let long = format!("sip:{}.example", "a".repeat(300));
        let cases: &[(&str, &str)] = &[
            ("192.0.2.1", "not a SIP URI"),
            ("tel:+15551234", "scheme \"tel\" is not sip or sips"),
            ("http://x", "not sip or sips"),
            ("sip:", "missing host"),
            ("sip::5060", "missing host"),
            ("sip:alice@192.0.2.1", "not a user"),
            ("sip:192.0.2.1?subject=x", "URI headers"),
            ("sip:192.0.2.1;lr", "unknown URI parameter \"lr\""),
            ("sip:192.0.2.1;transport=udp;transport=tcp", "given twice"),
            (
                "sip:192.0.2.1;transport=sctp",
                "unsupported transport \"sctp\"",
            ),
            ("sip:192.0.2.1;transport=ws", "unsupported transport \"ws\""),
            ("sip:192.0.2.1;transport", "unsupported transport \"\""),
            ("sip:192.0.2.1;", "empty URI parameter"),
            ("sip:192.0.2.1;;transport=udp", "empty URI parameter"),
            ("sips:192.0.2.1;transport=udp", "contradicts"),
            ("sip:192.0.2.1:0", "port 0"),
            ("sip:192.0.2.1:70000", "out of range"),
            ("sip:192.0.2.1:", "empty port"),
            ("sip:2001:db8::1", "brackets"),
            ("sip:[2001:db8::1", "missing ']'"),
            ("sip:300.1.1.1", "not a valid IPv4"),
            ("sip:bad!host", "invalid character"),
            ("sip:nowhere.example", "unknown host nowhere.example"),
            ("sip:void.example", "resolves to no address"),
            ("sip:0.0.0.0", "not the address of one host"),
            ("sip:[::]", "not the address of one host"),
            ("sip:224.0.0.1", "not the address of one host"),
            ("sip:255.255.255.255", "not the address of one host"),
            ("sip:192.0.2.1 ;transport=udp", "blanks"),
            (&long, "too long: 312 bytes (at most 255)"),
        ];
        for (text, want) in cases {
            let e = parse_destination(text, &names()).expect_err(text);
            assert!(e.contains(want), "{text}: {e:?} lacks {want:?}");
        }
    }

    proptest! {
        #[test]
        fn no_text_makes_the_parser_panic(text in ".{0,300}") {
            let _ = parse_destination(&text, &names());
        }

        #[test]
        fn written_forms_parse_to_what_they_say(
            secure in any::<bool>(),
            ip in any::<[u8; 4]>(),
            port in proptest::option::of(1u16..=65535),
            transport in proptest::option::of(prop::sample::select(vec!["udp", "tcp", "tls", "TCP"])),
        ) {
            let ip = Ipv4Addr::from(ip);
            prop_assume!(!ip.is_unspecified() && !ip.is_multicast() && !ip.is_broadcast());
            let scheme = if secure { "sips" } else { "sip" };
            let mut text = format!("{scheme}:{ip}");
            if let Some(p) = port {
                text.push_str(&format!(":{p}"));
            }
            if let Some(t) = transport {
                text.push_str(&format!(";transport={t}"));
            }
            let want = match (secure, transport.map(str::to_ascii_lowercase).as_deref()) {
                (true, Some("udp")) => None,
                (true, _) | (false, Some("tls")) => Some(Proto::Tls),
                (false, Some("tcp")) => Some(Proto::Tcp),
                (false, _) => Some(Proto::Udp),
            };
            match (parse_destination(&text, &names()), want) {
                (Ok(u), Some(t)) => {
                    prop_assert_eq!(u.transport, t);
                    prop_assert_eq!(u.addr.ip(), IpAddr::V4(ip));
                    prop_assert_eq!(u.addr.port(), port.unwrap_or(t.default_port()));
                }
                (Err(_), None) => {}
                (got, want) => prop_assert!(false, "{}: {:?}, wanted {:?}", text, got, want),
            }
        }
    }
}
