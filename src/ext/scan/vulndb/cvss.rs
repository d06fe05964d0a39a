//! CVSS base scores from vectors (v3.0, v3.1 and v2), and the qualitative
//! rating of a score. Version 4 vectors are kept as text; their score needs
//! the specification's lookup tables and is left to the source's rating.

use serde::{Deserialize, Serialize};

/// A finding's severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    #[default]
    Unknown,
    None,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn from_score(score: f64) -> Severity {
        match score {
            s if s <= 0.0 => Severity::None,
            s if s < 4.0 => Severity::Low,
            s if s < 7.0 => Severity::Medium,
            s if s < 9.0 => Severity::High,
            _ => Severity::Critical,
        }
    }

    /// A source's own word for it (GHSA's `MODERATE`, Debian's urgency,
    /// Ubuntu's priority, ...).
    pub fn from_word(word: &str) -> Option<Severity> {
        Some(match word.trim().to_ascii_lowercase().as_str() {
            "critical" => Severity::Critical,
            "high" | "important" => Severity::High,
            "medium" | "moderate" => Severity::Medium,
            "low" | "negligible" | "unimportant" => Severity::Low,
            "none" => Severity::None,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Unknown => "unknown",
            Severity::None => "none",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

impl std::str::FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "unknown" => Ok(Severity::Unknown),
            other => Severity::from_word(other)
                .ok_or_else(|| format!("unknown severity {s:?} (low, medium, high, critical)")),
        }
    }
}

fn metrics(vector: &str) -> std::collections::HashMap<&str, &str> {
    vector.split('/').filter_map(|m| m.split_once(':')).collect()
}

/// The base score of a CVSS v3.x vector; `None` when it is malformed.
pub fn v3_score(vector: &str) -> Option<f64> {
    let version = vector.strip_prefix("CVSS:")?.split('/').next()?;
    let m = metrics(vector);
    let scope_changed = match *m.get("S")? {
        "U" => false,
        "C" => true,
        _ => return None,
    };
    let av = match *m.get("AV")? {
        "N" => 0.85,
        "A" => 0.62,
        "L" => 0.55,
        "P" => 0.2,
        _ => return None,
    };
    let ac = match *m.get("AC")? {
        "L" => 0.77,
        "H" => 0.44,
        _ => return None,
    };
    let pr = match (*m.get("PR")?, scope_changed) {
        ("N", _) => 0.85,
        ("L", false) => 0.62,
        ("L", true) => 0.68,
        ("H", false) => 0.27,
        ("H", true) => 0.5,
        _ => return None,
    };
    let ui = match *m.get("UI")? {
        "N" => 0.85,
        "R" => 0.62,
        _ => return None,
    };
    let cia = |k: &str| -> Option<f64> {
        Some(match *m.get(k)? {
            "H" => 0.56,
            "L" => 0.22,
            "N" => 0.0,
            _ => return None,
        })
    };
    let iss = 1.0 - (1.0 - cia("C")?) * (1.0 - cia("I")?) * (1.0 - cia("A")?);
    let impact = if scope_changed { 7.52 * (iss - 0.029) - 3.25 * (iss - 0.02).powi(15) } else { 6.42 * iss };
    let exploitability = 8.22 * av * ac * pr * ui;
    if impact <= 0.0 {
        return Some(0.0);
    }
    let raw =
        if scope_changed { (1.08 * (impact + exploitability)).min(10.0) } else { (impact + exploitability).min(10.0) };
    Some(if version == "3.0" { (raw * 10.0).ceil() / 10.0 } else { roundup(raw) })
}

/// CVSS 3.1's Roundup: the smallest one-decimal number not below the
/// input, computed on integers so floating point noise cannot push it up.
fn roundup(x: f64) -> f64 {
    let int = (x * 100_000.0).round() as i64;
    if int % 10_000 == 0 {
        int as f64 / 100_000.0
    } else {
        ((int / 10_000) + 1) as f64 / 10.0
    }
}

/// The base score of a CVSS v2 vector (`AV:N/AC:L/Au:N/C:P/I:P/A:P`).
pub fn v2_score(vector: &str) -> Option<f64> {
    let m = metrics(vector.trim_start_matches('(').trim_end_matches(')'));
    let av = match *m.get("AV")? {
        "L" => 0.395,
        "A" => 0.646,
        "N" => 1.0,
        _ => return None,
    };
    let ac = match *m.get("AC")? {
        "H" => 0.35,
        "M" => 0.61,
        "L" => 0.71,
        _ => return None,
    };
    let au = match *m.get("Au")? {
        "M" => 0.45,
        "S" => 0.56,
        "N" => 0.704,
        _ => return None,
    };
    let cia = |k: &str| -> Option<f64> {
        Some(match *m.get(k)? {
            "N" => 0.0,
            "P" => 0.275,
            "C" => 0.660,
            _ => return None,
        })
    };
    let impact = 10.41 * (1.0 - (1.0 - cia("C")?) * (1.0 - cia("I")?) * (1.0 - cia("A")?));
    let exploitability = 20.0 * av * ac * au;
    let f = if impact == 0.0 { 0.0 } else { 1.176 };
    Some((((0.6 * impact) + (0.4 * exploitability) - 1.5) * f * 10.0).round() / 10.0)
}

/// The score of a vector of any supported version.
pub fn score(vector: &str) -> Option<f64> {
    if vector.starts_with("CVSS:3.") {
        v3_score(vector)
    } else if vector.starts_with("CVSS:") {
        None
    } else {
        v2_score(vector)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_scores() {
        // Scores as NVD lists them for these vectors.
        for (v, want) in [
            ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", 9.8),
            ("CVSS:3.1/AV:L/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:H", 6.2),
            ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H", 10.0),
            ("CVSS:3.1/AV:N/AC:H/PR:N/UI:N/S:U/C:H/I:N/A:N", 5.9),
            ("CVSS:3.1/AV:N/AC:L/PR:L/UI:R/S:C/C:L/I:L/A:N", 5.4),
            ("CVSS:3.0/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:H", 7.5),
            ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:N", 0.0),
            ("AV:N/AC:L/Au:N/C:P/I:P/A:P", 7.5),
            ("AV:N/AC:M/Au:N/C:N/I:P/A:N", 4.3),
            ("AV:L/AC:L/Au:N/C:C/I:C/A:C", 7.2),
        ] {
            assert_eq!(score(v), Some(want), "{v}");
        }
        assert_eq!(score("CVSS:3.1/AV:X/AC:L"), None);
        assert_eq!(score("CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N"), None);
        assert_eq!(Severity::from_score(9.8), Severity::Critical);
        assert_eq!(Severity::from_score(6.2), Severity::Medium);
        assert_eq!(Severity::from_word("MODERATE"), Some(Severity::Medium));
        assert!(Severity::High > Severity::Medium && Severity::Low > Severity::Unknown);
    }
}
