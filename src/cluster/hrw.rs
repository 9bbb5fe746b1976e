//! Rendezvous (highest-random-weight) hashing: every node ranks the members
//! by `hash(member, key)` and, knowing the same members, agrees on the order
//! without talking. A member that leaves takes only the keys it ranked first
//! for; one that comes takes only the keys it now ranks first for.

use sha2::Digest as _;

/// The weight of `member` for `key`.
pub fn weight(member: &str, key: &[u8]) -> u64 {
    let mut h = sha2::Sha256::new();
    h.update((member.len() as u64).to_le_bytes());
    h.update(member.as_bytes());
    h.update(key);
    let out = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&out[..8]);
    u64::from_be_bytes(first)
}

/// `members` ordered by the weight of their `name` for `key`, highest first
/// (ties, which a 64-bit hash all but rules out, by name).
pub fn rank<T>(
    members: impl IntoIterator<Item = T>,
    key: &[u8],
    name: impl Fn(&T) -> &str,
) -> Vec<T> {
    let mut weighted: Vec<(u64, T)> = members
        .into_iter()
        .map(|m| (weight(name(&m), key), m))
        .collect();
    weighted.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| name(&a.1).cmp(name(&b.1))));
    weighted.into_iter().map(|(_, m)| m).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("http://10.0.0.{i}:5051")).collect()
    }

    fn owner<'a>(ms: &'a [String], key: &[u8]) -> &'a str {
        rank(ms.iter().map(String::as_str), key, |m| *m)[0]
    }

    #[test]
    fn every_node_agrees_whatever_order_it_knows_the_members_in() {
        let ms = members(7);
        let mut reversed = ms.clone();
        reversed.reverse();
        for k in 0..200u32 {
            let key = k.to_le_bytes();
            assert_eq!(
                rank(ms.iter().map(String::as_str), &key, |m| *m),
                rank(reversed.iter().map(String::as_str), &key, |m| *m)
            );
        }
    }

    #[test]
    fn keys_spread_evenly_over_the_members() {
        let ms = members(4);
        let mut counts = std::collections::HashMap::new();
        for k in 0..40_000u32 {
            *counts.entry(owner(&ms, &k.to_le_bytes())).or_insert(0) += 1;
        }
        for (m, c) in counts {
            assert!((9_000..11_000).contains(&c), "{m}: {c} of 40000");
        }
    }

    #[test]
    fn a_member_leaving_moves_only_its_own_keys() {
        let ms = members(5);
        let gone = ms[2].clone();
        let rest: Vec<String> = ms.iter().filter(|m| **m != gone).cloned().collect();
        let mut moved = 0;
        for k in 0..10_000u32 {
            let key = k.to_le_bytes();
            let before = owner(&ms, &key);
            let after = owner(&rest, &key);
            if before != gone {
                assert_eq!(before, after, "a key of a member that stayed moved");
            } else {
                // Its keys go to the member ranked next before it left.
                assert_eq!(after, rank(ms.iter().map(String::as_str), &key, |m| *m)[1]);
                moved += 1;
            }
        }
        assert!((1_600..2_400).contains(&moved), "{moved}");
    }

    #[test]
    fn a_member_joining_takes_only_keys_it_now_ranks_first_for() {
        let ms = members(4);
        let mut more = ms.clone();
        more.push("http://10.0.0.99:5051".into());
        for k in 0..10_000u32 {
            let key = k.to_le_bytes();
            let after = owner(&more, &key);
            if after != "http://10.0.0.99:5051" {
                assert_eq!(owner(&ms, &key), after);
            }
        }
    }
}
