//! Failed-authentication throttling, shared by every replica through the
//! shared state: failures are counted per user name (whether or not the
//! user exists, so the answer reveals nothing) and per client address
//! within a window; past a few failures each further one is answered more
//! slowly, and past the lockout threshold attempts are refused with 429
//! until the window ends. Without shared state (Redis down) throttling
//! fails open: refusing everyone would turn a Redis outage into a login
//! outage.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use berth_state::SharedState;
use sha2::Digest as _;

/// Limits of the throttle.
#[derive(Debug, Clone, Copy)]
pub struct ThrottleOptions {
    /// Failures are counted over this window (from the first one).
    pub window: Duration,
    /// Failures for one user name before attempts are refused.
    pub user_lockout: i64,
    /// Failures from one address before attempts are refused.
    pub ip_lockout: i64,
    /// Failures before answers start to slow down.
    pub delay_after: i64,
    /// Longest slow-down of one answer.
    pub max_delay: Duration,
}

impl Default for ThrottleOptions {
    fn default() -> Self {
        ThrottleOptions {
            window: Duration::from_secs(900),
            user_lockout: 10,
            ip_lockout: 100,
            delay_after: 3,
            max_delay: Duration::from_secs(2),
        }
    }
}

/// The fleet-wide failure counters.
#[derive(Debug, Clone)]
pub struct Throttle {
    state: Arc<dyn SharedState>,
    options: ThrottleOptions,
}

/// User names are hashed before they reach the shared state.
fn user_key(user: &str) -> String {
    format!("authfail:user:{}", hex::encode(&sha2::Sha256::digest(user.as_bytes())[..16]))
}

fn ip_key(ip: IpAddr) -> String {
    format!("authfail:ip:{ip}")
}

impl Throttle {
    pub fn new(state: Arc<dyn SharedState>, options: ThrottleOptions) -> Throttle {
        Throttle { state, options }
    }

    async fn count(&self, key: &str) -> Option<i64> {
        match self.state.incr(key, 0, self.options.window).await {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(error = %e, "failed-login counters unavailable; not throttling");
                None
            }
        }
    }

    /// `Err(retry_after)` when `user` or `ip` is locked out.
    pub async fn check(&self, user: &str, ip: Option<IpAddr>) -> Result<(), Duration> {
        use crate::metrics::{observe_throttle, ThrottleDecision};
        let by_user = self.count(&user_key(user)).await;
        let by_ip = match ip {
            Some(ip) => self.count(&ip_key(ip)).await,
            None => Some(0),
        };
        if by_user.unwrap_or(0) >= self.options.user_lockout || by_ip.unwrap_or(0) >= self.options.ip_lockout {
            observe_throttle(ThrottleDecision::LockedOut);
            return Err(self.options.window);
        }
        observe_throttle(if by_user.is_none() || by_ip.is_none() {
            ThrottleDecision::Unchecked
        } else {
            ThrottleDecision::Allowed
        });
        Ok(())
    }

    /// Count a failure; returns how long to hold the answer back.
    pub async fn failed(&self, user: &str, ip: Option<IpAddr>) -> Duration {
        let mut worst = 0;
        for key in [Some(user_key(user)), ip.map(ip_key)].into_iter().flatten() {
            match self.state.incr(&key, 1, self.options.window).await {
                Ok(n) => worst = worst.max(n),
                Err(e) => tracing::warn!(error = %e, "cannot count a failed login"),
            }
        }
        let over = worst - self.options.delay_after;
        if over <= 0 {
            return Duration::ZERO;
        }
        crate::metrics::observe_throttle(crate::metrics::ThrottleDecision::Delayed);
        let delay = Duration::from_millis(100).saturating_mul(1u32 << over.min(16) as u32);
        delay.min(self.options.max_delay)
    }

    /// A success clears the user's count (the address keeps its own).
    pub async fn succeeded(&self, user: &str) {
        if let Err(e) = self.state.delete(&user_key(user)).await {
            tracing::debug!(error = %e, "cannot clear a failed-login count");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lockout_per_user_and_per_address_shared_by_replicas() {
        let state: Arc<dyn SharedState> = Arc::new(berth_state::MemoryState::new());
        let options = ThrottleOptions { user_lockout: 3, ip_lockout: 5, delay_after: 1, ..ThrottleOptions::default() };
        // Two replicas: two throttles over one shared state.
        let (a, b) = (Throttle::new(state.clone(), options), Throttle::new(state, options));
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        assert!(a.check("alice", Some(ip)).await.is_ok());
        assert_eq!(a.failed("alice", Some(ip)).await, Duration::ZERO);
        assert_eq!(b.failed("alice", Some(ip)).await, Duration::from_millis(200));
        assert!(b.check("alice", Some(ip)).await.is_ok());
        a.failed("alice", Some(ip)).await;
        // Locked out on every replica, for known and unknown names alike.
        assert_eq!(b.check("alice", Some(ip)).await, Err(options.window));
        assert_eq!(a.check("alice", None).await, Err(options.window));
        for _ in 0..3 {
            b.failed("no-such-user", None).await;
        }
        assert!(a.check("no-such-user", None).await.is_err());
        // Another user from another address is unaffected...
        assert!(a.check("bob", Some("192.0.2.8".parse().unwrap())).await.is_ok());
        // ...but the busy address is locked out after its own threshold.
        a.failed("carol", Some(ip)).await;
        a.failed("dave", Some(ip)).await;
        assert!(a.check("erin", Some(ip)).await.is_err());
        // A success clears the user's count.
        b.succeeded("no-such-user").await;
        assert!(a.check("no-such-user", None).await.is_ok());
        // Delays grow and are capped.
        let slow =
            ThrottleOptions { delay_after: 0, user_lockout: 100, max_delay: Duration::from_millis(500), ..options };
        let t = Throttle::new(Arc::new(berth_state::MemoryState::new()), slow);
        let delays: Vec<Duration> = futures::future::join_all((0..5).map(|_| t.failed("x", None))).await;
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(500)));
        assert!(delays.contains(&Duration::from_millis(500)));
    }
}
