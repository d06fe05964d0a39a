//! Durations written the way operators write them: `500ms`, `30s`, `5m`,
//! `1h`, `7d`, or a combination such as `1h30m`.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A [`Duration`] that reads and prints as `1h30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

/// Parse `1h30m`, `250ms`, `10s`. Each number needs a unit.
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 12 {
            return Err(format!("invalid duration {s:?}: expected e.g. 30s, 5m, 1h30m"));
        }
        let n: u64 = rest[..digits].parse().map_err(|_| format!("invalid number in {s:?}"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            "d" => Duration::from_secs(n * 86_400),
            _ => return Err(format!("invalid duration {s:?}: units are ms, s, m, h, d")),
        };
        total = total.checked_add(part).ok_or_else(|| format!("duration {s:?} is too long"))?;
    }
    Ok(total)
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.is_zero() {
            return f.write_str("0s");
        }
        if d.subsec_millis() != 0 && d.as_secs() == 0 {
            return write!(f, "{}ms", d.as_millis());
        }
        let mut secs = d.as_secs();
        for (unit, len) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
            if secs >= len {
                write!(f, "{}{unit}", secs / len)?;
                secs %= len;
            }
        }
        if d.subsec_millis() != 0 {
            write!(f, "{}ms", d.subsec_millis())?;
        }
        Ok(())
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<HumanDuration, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map(HumanDuration).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn table() {
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("2d"), Ok(Duration::from_secs(172_800)));
        for bad in ["", "30", "s", "1x", "1h 30m", "-1s", "1.5h", "99999999999999h"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(HumanDuration(Duration::from_secs(5400)).to_string(), "1h30m");
        assert_eq!(HumanDuration(Duration::from_millis(1500)).to_string(), "1s500ms");
    }

    proptest! {
        #[test]
        fn display_roundtrips(ms in 0u64..10_000_000_000) {
            let d = Duration::from_millis(ms);
            prop_assert_eq!(parse(&HumanDuration(d).to_string()), Ok(d));
        }

        #[test]
        fn never_panics(s in "\\PC{0,30}") {
            let _ = parse(&s);
        }
    }
}
