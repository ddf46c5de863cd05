//! Kubernetes resource quantities (`8Gi`, `500M`, `1.5Gi`, `1e9`) as bytes,
//! for comparing a spec's storage size with what claims request and have.
//! Follows apimachinery's `resource.Quantity` grammar for the non-negative
//! values a size takes; a fraction of a byte rounds up, as the API server
//! rounds a quantity to an integer value.

/// The value of quantity `q` in bytes (rounded up), or None if `q` is no
/// quantity or is negative or beyond u64.
pub fn bytes(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+')).unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let number = number.strip_prefix('+').unwrap_or(number);
    let (int, frac) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if (int.is_empty() && frac.is_empty()) || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    // value = digits / 10^frac.len() * base^exp
    let digits: u128 = format!("{int}{frac}").parse().ok()?;
    let (num, den): (u128, u128) = match suffix {
        "" => (1, 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        "Ei" => (1 << 60, 1),
        "m" => (1, 1000),
        "k" => (1_000, 1),
        "M" => (1_000_000, 1),
        "G" => (1_000_000_000, 1),
        "T" => (1_000_000_000_000, 1),
        "P" => (1_000_000_000_000_000, 1),
        "E" => (1_000_000_000_000_000_000, 1),
        s => {
            let e = s.strip_prefix(['e', 'E'])?;
            let exp: i32 = e.parse().ok()?;
            if !(-18..=18).contains(&exp) {
                return None;
            }
            if exp >= 0 { (10u128.pow(exp as u32), 1) } else { (1, 10u128.pow((-exp) as u32)) }
        }
    };
    let den = den.checked_mul(10u128.checked_pow(u32::try_from(frac.len()).ok()?)?)?;
    let value = digits.checked_mul(num)?.div_ceil(den);
    u64::try_from(value).ok()
}

#[cfg(test)]
mod tests {
    use super::bytes;
    use proptest::prelude::*;

    #[test]
    fn sizes_as_kubernetes_reads_them() {
        assert_eq!(bytes("8Gi"), Some(8 << 30));
        assert_eq!(bytes("1Gi"), Some(1 << 30));
        assert_eq!(bytes("1.5Gi"), Some(3 << 29));
        assert_eq!(bytes("500M"), Some(500_000_000));
        assert_eq!(bytes("1k"), Some(1000));
        assert_eq!(bytes("1e9"), Some(1_000_000_000));
        assert_eq!(bytes("1E3"), Some(1000));
        assert_eq!(bytes("1024"), Some(1024));
        assert_eq!(bytes("0"), Some(0));
        assert_eq!(bytes("1500m"), Some(2)); // 1.5 rounds up
        assert_eq!(bytes(".5Ki"), Some(512));
        assert_eq!(bytes("+2Mi"), Some(2 << 20));
    }

    #[test]
    fn what_is_no_size_is_none() {
        for q in ["", "Gi", "-1Gi", "1GB", "1 Gi", "1.2.3", "abc", "1gi", "1e99", "99999999999Ei", "."] {
            assert_eq!(bytes(q), None, "{q:?}");
        }
    }

    proptest! {
        /// A binary suffix multiplies by its power of 1024, and a larger
        /// count is never a smaller size.
        #[test]
        fn binary_suffixes_scale(n in 0u64..1 << 20, m in 0u64..1 << 20, i in 0usize..4) {
            let (suffix, shift) = [("Ki", 10), ("Mi", 20), ("Gi", 30), ("Ti", 40)][i];
            prop_assert_eq!(bytes(&format!("{n}{suffix}")), Some(n << shift));
            let (a, b) = (bytes(&format!("{n}{suffix}")).unwrap(), bytes(&format!("{m}{suffix}")).unwrap());
            prop_assert_eq!(a.cmp(&b), n.cmp(&m));
        }

        /// Never panics, whatever the text.
        #[test]
        fn any_text_is_a_size_or_none(s in ".{0,24}") {
            let _ = bytes(&s);
        }
    }
}
