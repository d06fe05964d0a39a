//! Start-up measurement: run a server command, time until `GET /v2/`
//! answers 200, sample its resident memory once idle, stop it; repeat.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::Serialize;

use crate::rss::rss_bytes;

/// One start of the server.
#[derive(Debug, Clone, Serialize)]
pub struct StartupSample {
    pub ready_ms: f64,
    pub idle_rss_mib: Option<f64>,
}

/// Results over several starts.
#[derive(Debug, Clone, Serialize)]
pub struct StartupReport {
    pub command: String,
    pub samples: Vec<StartupSample>,
    pub median_ready_ms: f64,
    pub median_idle_rss_mib: Option<f64>,
}

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Start `command` (run by `sh -c exec ...`) `runs` times; each time poll
/// `url/v2/` every millisecond until it answers 200 (at most `limit`), wait
/// `settle`, read the RSS, then stop the process.
pub async fn measure(
    command: &str,
    url: &str,
    runs: usize,
    limit: Duration,
    settle: Duration,
) -> anyhow::Result<StartupReport> {
    let http = reqwest::Client::builder().timeout(Duration::from_millis(500)).build()?;
    let probe = format!("{}/v2/", url.trim_end_matches('/'));
    let mut samples = Vec::new();
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("exec {command}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {command}"))?;
        let mut guard = Guard(child);
        let ready = loop {
            if let Ok(resp) = http.get(&probe).send().await {
                if resp.status().as_u16() == 200 {
                    break started.elapsed();
                }
            }
            if let Ok(Some(status)) = guard.0.try_wait() {
                bail!("{command} exited with {status} before it was ready");
            }
            if started.elapsed() > limit {
                bail!("{probe} did not answer 200 within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        tokio::time::sleep(settle).await;
        let rss = rss_bytes(guard.0.id()).map(|b| b as f64 / (1024.0 * 1024.0));
        samples.push(StartupSample { ready_ms: ready.as_secs_f64() * 1000.0, idle_rss_mib: rss });
        let _ = Command::new("kill").arg("-TERM").arg(guard.0.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = guard.0.try_wait() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(guard);
        // The port must be free again before the next start.
        let free_by = Instant::now() + Duration::from_secs(5);
        while http.get(&probe).send().await.is_ok() && Instant::now() < free_by {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let median_ready_ms = median(samples.iter().map(|s| s.ready_ms).collect());
    let rss: Vec<f64> = samples.iter().filter_map(|s| s.idle_rss_mib).collect();
    let median_idle_rss_mib = (!rss.is_empty()).then(|| median(rss));
    Ok(StartupReport { command: command.to_owned(), samples, median_ready_ms, median_idle_rss_mib })
}

impl StartupReport {
    pub fn to_table(&self) -> String {
        let mut out = format!("startup of: {}\n", self.command);
        for (i, s) in self.samples.iter().enumerate() {
            let rss = s.idle_rss_mib.map(|r| format!("{r:.1} MiB")).unwrap_or_else(|| "-".into());
            out.push_str(&format!("run {:>2}: ready in {:>8.1} ms, idle RSS {rss}\n", i + 1, s.ready_ms));
        }
        let rss = self.median_idle_rss_mib.map(|r| format!("{r:.1} MiB")).unwrap_or_else(|| "-".into());
        out.push_str(&format!("median: ready in {:.1} ms, idle RSS {rss}\n", self.median_ready_ms));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![]), 0.0);
    }

    #[tokio::test]
    async fn a_command_that_exits_is_reported() {
        let err = measure("true", "http://127.0.0.1:9", 1, Duration::from_secs(5), Duration::ZERO).await.unwrap_err();
        assert!(err.to_string().contains("exited"), "{err}");
    }
}
