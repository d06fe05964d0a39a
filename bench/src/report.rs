//! Printing results: a side-by-side table for people, JSON for machines.

use serde::Serialize;

use crate::stats::Summary;

/// One scenario's results across targets.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    pub scenario: String,
    pub concurrency: usize,
    pub size_bytes: u64,
    pub chunk_bytes: u64,
    pub rounds: u32,
    pub targets: Vec<TargetReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    pub label: String,
    pub url: String,
    pub summary: Summary,
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into())
}

/// `a / b` as a ratio string, or `-` when undefined.
fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() {
        format!("{:.2}x", a / b)
    } else {
        "-".into()
    }
}

impl ScenarioReport {
    /// The table: one column per target and, with two targets, the ratio A/B.
    pub fn to_table(&self) -> String {
        let mut out = format!(
            "scenario {}  concurrency {}  size {}  chunk {}  rounds {}\n",
            self.scenario, self.concurrency, self.size_bytes, self.chunk_bytes, self.rounds
        );
        let rows: Vec<(&str, Vec<String>, Option<String>)> = {
            let t = &self.targets;
            let s: Vec<&Summary> = t.iter().map(|t| &t.summary).collect();
            let pair = |f: &dyn Fn(&Summary) -> f64| if s.len() == 2 { Some(ratio(f(s[0]), f(s[1]))) } else { None };
            let col = |f: &dyn Fn(&Summary) -> String| s.iter().map(|x| f(x)).collect::<Vec<_>>();
            vec![
                ("requests", col(&|x| x.requests.to_string()), None),
                ("errors", col(&|x| errors_text(x)), None),
                ("req/s", col(&|x| format!("{:.1}", x.req_per_sec)), pair(&|x| x.req_per_sec)),
                ("MB/s", col(&|x| format!("{:.1}", x.mb_per_sec)), pair(&|x| x.mb_per_sec)),
                ("p50 ms", col(&|x| format!("{:.3}", x.p50_ms)), pair(&|x| x.p50_ms)),
                ("p90 ms", col(&|x| format!("{:.3}", x.p90_ms)), pair(&|x| x.p90_ms)),
                ("p99 ms", col(&|x| format!("{:.3}", x.p99_ms)), pair(&|x| x.p99_ms)),
                ("max ms", col(&|x| format!("{:.3}", x.max_ms)), pair(&|x| x.max_ms)),
                ("idle RSS MiB", col(&|x| fmt_opt(x.idle_rss_mib)), None),
                ("peak RSS MiB", col(&|x| fmt_opt(x.peak_rss_mib)), pair(&|x| x.peak_rss_mib.unwrap_or(f64::NAN))),
            ]
        };
        let mut header = format!("{:<14}", "");
        for t in &self.targets {
            header.push_str(&format!("{:>22}", truncate(&format!("{} {}", t.label, t.url), 21)));
        }
        if self.targets.len() == 2 {
            header.push_str(&format!("{:>10}", "A/B"));
        }
        out.push_str(&header);
        out.push('\n');
        for (name, cols, r) in rows {
            let mut line = format!("{name:<14}");
            for c in cols {
                line.push_str(&format!("{c:>22}"));
            }
            if let Some(r) = r {
                line.push_str(&format!("{r:>10}"));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

fn errors_text(s: &Summary) -> String {
    if s.errors == 0 {
        return "0".into();
    }
    let by: Vec<String> = s.errors_by_status.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    format!("{} ({})", s.errors, by.join(","))
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        s.chars().take(n.saturating_sub(1)).chain(std::iter::once('…')).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn summary(rps: f64, p99: f64) -> Summary {
        Summary {
            requests: 100,
            errors: 0,
            errors_by_status: BTreeMap::new(),
            req_per_sec: rps,
            mb_per_sec: 0.0,
            p50_ms: 1.0,
            p90_ms: 2.0,
            p99_ms: p99,
            max_ms: 5.0,
            elapsed_s: 1.0,
            peak_rss_mib: Some(10.0),
            idle_rss_mib: None,
        }
    }

    #[test]
    fn table_shows_ratios_side_by_side() {
        let r = ScenarioReport {
            scenario: "manifest-get-tag".into(),
            concurrency: 32,
            size_bytes: 0,
            chunk_bytes: 0,
            rounds: 4,
            targets: vec![
                TargetReport { label: "A".into(), url: "http://a".into(), summary: summary(5000.0, 2.0) },
                TargetReport { label: "B".into(), url: "http://b".into(), summary: summary(1000.0, 8.0) },
            ],
        };
        let t = r.to_table();
        let rps = t.lines().find(|l| l.starts_with("req/s")).unwrap();
        assert!(rps.contains("5000.0") && rps.contains("1000.0") && rps.ends_with("5.00x"), "{rps}");
        let p99 = t.lines().find(|l| l.starts_with("p99 ms")).unwrap();
        assert!(p99.ends_with("0.25x"), "{p99}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["targets"][1]["summary"]["req_per_sec"], 1000.0);
    }
}
