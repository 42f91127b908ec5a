//! Weighted rendezvous (highest-random-weight) hashing: which of a tag's destinations a dialog
//! goes to, from its Call-ID alone.
//!
//! Each destination has a stable key (the hash of its URI as written in the relays table). For a
//! Call-ID hash `c`, destination `i` scores `w_i / -ln(u_i)`, where `u_i` in (0, 1) comes from a
//! hash of `c` and the key; the highest score wins (Schindelhauer and Schomaker's weighted form:
//! destination `i` wins with probability `w_i / Σw`). Every request of a dialog, its CANCEL and
//! its ACK carry the same Call-ID and reach the same destination with no state; when a
//! destination is removed only the dialogs it won move, and a new one takes only the dialogs it
//! now wins. Ties (equal scores) go to the first in table order.

use super::token::mix;

/// One candidate: its stable key and its weight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Candidate {
    /// Hash of the destination's URI.
    pub key: u64,
    /// Its weight, at least 1 (0 is read as 1).
    pub weight: u32,
}

/// The index in `candidates` of the winner for a dialog whose Call-ID hashes to `call`; `None`
/// only for an empty list.
pub(crate) fn choose(call: u64, candidates: &[Candidate]) -> Option<usize> {
    if candidates.len() == 1 {
        return Some(0);
    }
    let mut best: Option<(usize, f64)> = None;
    for (i, c) in candidates.iter().enumerate() {
        let s = score(call, c);
        if best.is_none_or(|(_, b)| s > b) {
            best = Some((i, s));
        }
    }
    best.map(|(i, _)| i)
}

/// `weight / -ln(u)` with `u` uniform in (0, 1) from the pair's hash.
fn score(call: u64, c: &Candidate) -> f64 {
    let h = mix(call ^ c.key.rotate_left(17) ^ 0x5851_f42d_4c95_7f2d);
    // 53 bits into (0, 1): never 0 (ln would be -inf) nor 1 (ln 0: a division by zero).
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    f64::from(c.weight.max(1)) / -u.ln()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::token::hash;
    use proptest::prelude::*;

    fn cands(list: &[(&str, u32)]) -> Vec<Candidate> {
        list.iter()
            .map(|(uri, weight)| Candidate {
                key: hash(uri.as_bytes()),
                weight: *weight,
            })
            .collect()
    }

    fn calls(n: usize) -> impl Iterator<Item = u64> {
        (0..n).map(|i| hash(format!("{i:08x}-call@example").as_bytes()))
    }

    #[test]
    fn empty_and_single() {
        assert_eq!(choose(1, &[]), None);
        assert_eq!(choose(1, &cands(&[("sip:a", 0)])), Some(0));
    }

    #[test]
    fn shares_follow_weights() {
        let c = cands(&[("sip:a", 1), ("sip:b", 2), ("sip:c", 1)]);
        let mut won = [0u32; 3];
        let n = 40_000;
        for call in calls(n) {
            won[choose(call, &c).unwrap()] += 1;
        }
        // Expected 10,000 / 20,000 / 10,000; a fixed input set, so the counts are fixed too: the
        // bounds only say how close a 64-bit hash gets.
        for (w, want) in won.iter().zip([10_000.0, 20_000.0, 10_000.0]) {
            let off = (f64::from(*w) - want).abs() / want;
            assert!(off < 0.03, "{won:?}");
        }
    }

    proptest! {
        /// Removing a destination moves exactly the dialogs it had; adding one moves only the
        /// dialogs it now wins; the same Call-ID always gets the same destination.
        #[test]
        fn minimal_movement(
            weights in proptest::collection::vec(1u32..5, 2..6),
            removed in 0usize..6,
            seeds in proptest::collection::vec(any::<u64>(), 200),
        ) {
            let names: Vec<String> = (0..weights.len()).map(|i| format!("sip:10.0.0.{i}:5060")).collect();
            let all: Vec<Candidate> = names.iter().zip(&weights)
                .map(|(n, w)| Candidate { key: hash(n.as_bytes()), weight: *w }).collect();
            let removed = removed % all.len();
            let mut fewer = all.clone();
            fewer.remove(removed);
            for call in seeds {
                let before = choose(call, &all).unwrap();
                prop_assert_eq!(choose(call, &all), Some(before));
                let after = choose(call, &fewer).unwrap();
                // Indices of `fewer` past `removed` are shifted by one.
                let after_in_all = if after >= removed { after + 1 } else { after };
                if before != removed {
                    prop_assert_eq!(after_in_all, before, "a dialog of a kept destination moved");
                }
                // Adding it back: only its own dialogs go to it.
                let again = choose(call, &all).unwrap();
                prop_assert!(again == after_in_all || again == removed);
            }
        }
    }
}
