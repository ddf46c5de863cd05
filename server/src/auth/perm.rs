//! Key permissions as intervals: does the union of a user's permissions of
//! one type cover a requested key or range? (etcd's range_perm_cache.)

use kvd_api::authpb::Permission;
use kvd_api::authpb::permission::Type;

/// `[start, end)`; `end` None means no upper bound.
type Interval = (Vec<u8>, Option<Vec<u8>>);

/// The interval a (key, range_end) pair denotes, as etcd reads it: an empty
/// end is the key alone, `\0` is every key from `key`.
fn interval(key: &[u8], range_end: &[u8]) -> Interval {
    match range_end {
        [] => {
            let mut next = key.to_vec();
            next.push(0);
            (key.to_vec(), Some(next))
        }
        [0] => (key.to_vec(), None),
        end => (key.to_vec(), Some(end.to_vec())),
    }
}

/// Whether permission type `have` grants `want` (READWRITE grants both).
fn grants(have: i32, want: Type) -> bool {
    have == Type::Readwrite as i32 || have == want as i32
}

/// True when `perms` of type `want` together cover `[key, range_end)`.
pub fn covers<'a>(perms: impl IntoIterator<Item = &'a Permission>, want: Type, key: &[u8], range_end: &[u8]) -> bool {
    let mut ivs: Vec<Interval> =
        perms.into_iter().filter(|p| grants(p.perm_type, want)).map(|p| interval(&p.key, &p.range_end)).collect();
    ivs.sort();
    let (start, end) = interval(key, range_end);
    // Everything in [start, covered_to) is covered so far.
    let mut covered_to = start;
    for (s, e) in ivs {
        if s > covered_to {
            // A gap: the intervals are sorted, so every later one starts later still.
            break;
        }
        match e {
            None => return true,
            Some(e) if e > covered_to => covered_to = e,
            Some(_) => {}
        }
        if end.as_ref().is_some_and(|end| covered_to >= *end) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(t: Type, key: &str, end: &str) -> Permission {
        Permission { perm_type: t as i32, key: key.into(), range_end: end.into() }
    }

    #[test]
    fn single_keys_ranges_and_prefixes() {
        let perms = [p(Type::Read, "a", ""), p(Type::Readwrite, "b/", "b0"), p(Type::Write, "z", "\0")];
        assert!(covers(&perms, Type::Read, b"a", b""));
        assert!(!covers(&perms, Type::Write, b"a", b""));
        assert!(!covers(&perms, Type::Read, b"a", b"b"), "only the key a, not the range");
        assert!(covers(&perms, Type::Write, b"b/x", b""));
        assert!(covers(&perms, Type::Read, b"b/", b"b0"));
        assert!(!covers(&perms, Type::Read, b"b/", b"c"));
        assert!(covers(&perms, Type::Write, b"zz", b"\0"));
        assert!(!covers(&perms, Type::Read, b"zz", b""));
        assert!(!covers(&perms, Type::Write, b"y", b"\0"));
    }

    #[test]
    fn adjacent_and_overlapping_permissions_join() {
        let perms = [p(Type::Read, "a", "c"), p(Type::Read, "c", "e"), p(Type::Readwrite, "d", "g")];
        assert!(covers(&perms, Type::Read, b"a", b"g"));
        assert!(!covers(&perms, Type::Read, b"a", b"h"));
        assert!(!covers(&perms, Type::Write, b"a", b"e"));
        let gap = [p(Type::Read, "a", "c"), p(Type::Read, "d", "e")];
        assert!(!covers(&gap, Type::Read, b"a", b"e"));
        assert!(covers(&gap, Type::Read, b"d", b"d1"));
    }
}
