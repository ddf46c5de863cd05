//! Five-field cron schedules (minute hour day-of-month month day-of-week, UTC;
//! numbers, `*`, ranges, lists and steps) for scheduled compaction and
//! defragmentation, which the operator runs itself through the etcd API.

use jiff::Timestamp;
use jiff::tz::TimeZone;

/// How far back a missed run is still made up for.
const LOOKBACK_SECS: i64 = 31 * 24 * 3600;

/// A parsed schedule: one bit per allowed value of each field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    minute: u64,
    hour: u64,
    dom: u64,
    month: u64,
    dow: u64,
    dom_any: bool,
    dow_any: bool,
}

fn field(s: &str, lo: u32, hi: u32) -> Result<u64, String> {
    let mut bits = 0u64;
    for item in s.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, st)) => (r, st.parse::<u32>().map_err(|_| format!("bad step in {item:?}"))?),
            None => (item, 1),
        };
        if step == 0 {
            return Err(format!("zero step in {item:?}"));
        }
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (a.parse().map_err(|_| format!("bad {item:?}"))?, b.parse().map_err(|_| format!("bad {item:?}"))?)
        } else {
            let a: u32 = range.parse().map_err(|_| format!("bad {item:?}"))?;
            (a, if item.contains('/') { hi } else { a })
        };
        if a < lo || b > hi || a > b {
            return Err(format!("{item:?} outside {lo}-{hi}"));
        }
        for v in (a..=b).step_by(step as usize) {
            bits |= 1 << v;
        }
    }
    Ok(bits)
}

impl Schedule {
    /// Parses `"m h dom mon dow"`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let f: Vec<&str> = s.split_whitespace().collect();
        let [m, h, dom, mon, dow] = f.as_slice() else {
            return Err(format!("{s:?}: want 5 fields"));
        };
        let mut dow_bits = field(dow, 0, 7)?;
        if dow_bits & (1 << 7) != 0 {
            dow_bits |= 1; // 7 is Sunday too
        }
        Ok(Schedule {
            minute: field(m, 0, 59)?,
            hour: field(h, 0, 23)?,
            dom: field(dom, 1, 31)?,
            month: field(mon, 1, 12)?,
            dow: dow_bits,
            dom_any: *dom == "*",
            dow_any: *dow == "*",
        })
    }

    /// Does the minute starting at `t` match?
    pub fn matches(&self, t: Timestamp) -> bool {
        let z = t.to_zoned(TimeZone::UTC);
        let bit = |bits: u64, v: i8| bits & (1 << v) != 0;
        let dom = bit(self.dom, z.day());
        let dow = bit(self.dow, z.weekday().to_sunday_zero_offset());
        // cron: when both day fields are restricted, either may match.
        let day = match (self.dom_any, self.dow_any) {
            (false, false) => dom || dow,
            _ => dom && dow,
        };
        bit(self.minute, z.minute()) && bit(self.hour, z.hour()) && bit(self.month, z.month()) && day
    }

    /// Was a run due in `(since, now]` (looking back at most 31 days)?
    pub fn due(&self, since: Timestamp, now: Timestamp) -> bool {
        let start = (since.as_second().div_euclid(60) + 1) * 60;
        let start = start.max(now.as_second() - LOOKBACK_SECS);
        (start..=now.as_second()).step_by(60).filter_map(|s| Timestamp::from_second(s).ok()).any(|t| self.matches(t))
    }
}

/// Parses Go-style durations made of `<digits><unit>` pairs (`ms`, `s`, `m`, `h`), e.g. `"1h30m"`.
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    let mut total = std::time::Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit_ms, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('s') {
            (1000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else {
            return None;
        };
        total += std::time::Duration::from_millis(n.checked_mul(unit_ms)?);
        rest = &rest[len..];
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h30m"), Some(std::time::Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Some(std::time::Duration::from_millis(250)));
        for bad in ["", "h", "1", "1d", "1h-"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn parses_and_rejects() {
        assert!(Schedule::parse("0 * * * *").is_ok());
        assert!(Schedule::parse("*/15 1-5 1,15 * 1-5").is_ok());
        assert!(Schedule::parse("").is_err());
        assert!(Schedule::parse("60 * * * *").is_err());
        assert!(Schedule::parse("* * * *").is_err());
        assert!(Schedule::parse("*/0 * * * *").is_err());
    }

    #[test]
    fn due_windows() {
        let hourly = Schedule::parse("0 * * * *").expect("parse");
        assert!(hourly.due(ts("2026-01-01T10:30:00Z"), ts("2026-01-01T11:00:00Z")));
        assert!(!hourly.due(ts("2026-01-01T11:00:00Z"), ts("2026-01-01T11:59:00Z")));
        assert!(hourly.due(ts("2025-01-01T00:00:00Z"), ts("2026-01-01T11:59:00Z")));
        // Sundays at 03:30 (7 means Sunday as well); 2026-01-04 is a Sunday.
        let weekly = Schedule::parse("30 3 * * 7").expect("parse");
        assert!(weekly.matches(ts("2026-01-04T03:30:00Z")));
        assert!(!weekly.matches(ts("2026-01-05T03:30:00Z")));
        // Both day fields restricted: either matches.
        let either = Schedule::parse("0 0 1 * 1").expect("parse");
        assert!(either.matches(ts("2026-01-05T00:00:00Z")));
        assert!(either.matches(ts("2026-02-01T00:00:00Z")));
        assert!(!either.matches(ts("2026-02-03T00:00:00Z")));
    }
}
