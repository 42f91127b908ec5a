//! Recognising addresses: sipsockd's own (a Via sent-by, a Route, a Request-URI naming one of its
//! sockets by bound or advertised host and port) and the relay destinations named by host name.
//!
//! Built once per route table; each check is one hash-map lookup with a key written on the stack:
//! an IP literal (IPv4, or IPv6 with or without brackets, an IPv4-mapped IPv6 as IPv4) keys by its
//! address, so `::1`, `[0:0::1]` and `[::0001]` are one; a name keys by its lower-case bytes (a
//! trailing dot dropped). Both with the port.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The longest host name a key holds (RFC 1035: 255 bytes).
const MAX_NAME: usize = 255;

/// A key on the stack: a kind byte, the address or name, the port.
pub(crate) struct HostKey {
    bytes: [u8; MAX_NAME + 3],
    len: usize,
}

impl HostKey {
    /// The key of `host` (as written in a URI or Via: brackets allowed) and `port`; `None` for an
    /// empty or over-long host.
    pub(crate) fn new(host: &[u8], port: u16) -> Option<HostKey> {
        let mut key = HostKey {
            bytes: [0u8; MAX_NAME + 3],
            len: 0,
        };
        match ip_of(host) {
            Some(IpAddr::V4(v4)) => {
                key.push(b'4');
                key.extend(&v4.octets());
            }
            Some(IpAddr::V6(v6)) => {
                key.push(b'6');
                key.extend(&v6.octets());
            }
            None => {
                let name = host.strip_suffix(b".").unwrap_or(host);
                if name.is_empty() || name.len() > MAX_NAME {
                    return None;
                }
                key.push(b'n');
                for b in name {
                    key.push(b.to_ascii_lowercase());
                }
            }
        }
        key.extend(&port.to_be_bytes());
        Some(key)
    }

    /// The key of an address.
    pub(crate) fn ip(ip: IpAddr, port: u16) -> HostKey {
        let mut key = HostKey {
            bytes: [0u8; MAX_NAME + 3],
            len: 0,
        };
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                key.push(b'4');
                key.extend(&v4.octets());
            }
            IpAddr::V6(v6) => {
                key.push(b'6');
                key.extend(&v6.octets());
            }
        }
        key.extend(&port.to_be_bytes());
        key
    }

    fn push(&mut self, b: u8) {
        if let Some(slot) = self.bytes.get_mut(self.len) {
            *slot = b;
            self.len += 1;
        }
    }

    fn extend(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.push(*b);
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }
}

/// The IP address a host names, when it is an IP literal (IPv6 with or without brackets); an
/// IPv4-mapped IPv6 address as its IPv4 address.
pub(crate) fn ip_of(host: &[u8]) -> Option<IpAddr> {
    let first = *host.first()?;
    if first.is_ascii_digit() {
        if let Some(v4) = ipv4(host) {
            return Some(IpAddr::V4(v4));
        }
    }
    let inner = match host.strip_prefix(b"[") {
        Some(rest) => rest.strip_suffix(b"]")?,
        None => host,
    };
    if !inner.contains(&b':') {
        return None;
    }
    let v6 = std::str::from_utf8(inner).ok()?.parse::<Ipv6Addr>().ok()?;
    Some(IpAddr::V6(v6).to_canonical())
}

/// A dotted-quad IPv4 address, as `Ipv4Addr::from_str` reads it (four decimal octets, no leading
/// zero), without going through `str` (this is on every relayed message's path).
fn ipv4(b: &[u8]) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut part = 0;
    let mut n: u32 = 0;
    let mut digits = 0;
    for c in b {
        match c {
            b'0'..=b'9' => {
                if digits == 1 && n == 0 {
                    return None;
                }
                n = n * 10 + u32::from(c - b'0');
                digits += 1;
                if n > 255 {
                    return None;
                }
            }
            b'.' if digits > 0 => {
                *octets.get_mut(part)? = n as u8;
                part += 1;
                n = 0;
                digits = 0;
            }
            _ => return None,
        }
    }
    if part != 3 || digits == 0 {
        return None;
    }
    *octets.get_mut(3)? = n as u8;
    Some(Ipv4Addr::from(octets))
}

/// A hash map keyed by [`HostKey`] bytes.
#[derive(Debug, Clone, Default)]
pub(crate) struct HostMap<V> {
    map: HashMap<Box<[u8]>, V, BuildHasherDefault<FastHasher>>,
}

impl<V> HostMap<V> {
    /// Insert, keeping the first value given for a key.
    pub(crate) fn insert_first(&mut self, key: &HostKey, value: V) {
        self.map
            .entry(key.as_bytes().to_vec().into_boxed_slice())
            .or_insert(value);
    }

    pub(crate) fn get(&self, key: &HostKey) -> Option<&V> {
        self.map.get(key.as_bytes())
    }

    pub(crate) fn get_mut(&mut self, key: &HostKey) -> Option<&mut V> {
        self.map.get_mut(key.as_bytes())
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

/// A small, fast, deterministic hasher for maps the relay builds once and reads per message (keys
/// come from the route table, which the supervisor builds: no flooding concern).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FastHasher {
    h: u64,
}

impl std::hash::Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut h = super::token::Hasher64::new(self.h);
        h.bytes(bytes);
        self.h = h.finish();
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.h = super::token::mix(self.h ^ n.wrapping_add(0x9e37_79b9_7f4a_7c15));
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        self.h
    }
}

/// A `HashMap` with [`FastHasher`].
pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn key(host: &str, port: u16) -> Vec<u8> {
        HostKey::new(host.as_bytes(), port)
            .map(|k| k.as_bytes().to_vec())
            .unwrap_or_default()
    }

    #[test]
    fn keys_normalise() {
        assert_eq!(key("[::1]", 5060), key("0:0::1", 5060));
        assert_eq!(key("[::ffff:10.0.0.1]", 1), key("10.0.0.1", 1));
        assert_eq!(
            key("[::1]", 5060),
            HostKey::ip("::1".parse().unwrap(), 5060).as_bytes()
        );
        assert_eq!(key("SBC.Example.COM.", 5060), key("sbc.example.com", 5060));
        assert_ne!(key("10.0.0.1", 5060), key("10.0.0.1", 5061));
        assert_ne!(key("10.0.0.1", 5060), key("10.0.0.01x", 5060));
        assert!(HostKey::new(b"", 1).is_none());
        assert!(HostKey::new(&[b'a'; 256], 1).is_none());
        assert!(HostKey::new(&[b'a'; 255], 1).is_some());
        assert_eq!(ip_of(b"[::1"), None);
        assert_eq!(ip_of(b"1.2.3"), None);
        assert_eq!(ip_of(b"[1.2.3.4]"), None);
        // The fast IPv4 reader agrees with std's.
        for text in [
            "0.0.0.0",
            "255.255.255.255",
            "1.2.3.4",
            "01.2.3.4",
            "1.2.3.256",
            "1.2.3",
            "1.2.3.4.",
            "1..2.3",
            ".1.2.3",
            "1.2.3.4.5",
            "1.2.3.a",
            "1234.1.1.1",
            "10.0.0.00",
            "10.0.0.0",
        ] {
            assert_eq!(
                ipv4(text.as_bytes()),
                text.parse::<Ipv4Addr>().ok(),
                "{text}"
            );
        }
    }

    #[test]
    fn host_map() {
        let mut m = HostMap::default();
        m.insert_first(&HostKey::new(b"a.example", 5060).unwrap(), 1);
        m.insert_first(&HostKey::new(b"A.EXAMPLE", 5060).unwrap(), 2);
        assert_eq!(m.len(), 1);
        assert_eq!(m.get(&HostKey::new(b"a.Example", 5060).unwrap()), Some(&1));
        assert_eq!(m.get(&HostKey::new(b"a.example", 5061).unwrap()), None);
    }
}
