//! Events per second per tenant: a token bucket per tenant, so one tenant's
//! flood is answered `429 Too Many Requests` with `Retry-After` instead of
//! filling the queue every tenant's events wait in.
//!
//! Channel callbacks (`POST /v1/installs/{id}/inbound`) draw on the same
//! bucket: one token before the plugin parses the callback (the parse is the
//! cost a flood would impose), and one per further event it yields.
//!
//! The bucket holds two seconds of the rate (at least one full batch), so
//! bursts pass and a steady rate above the limit does not. In memory, per
//! process: with several nodes each enforces its own share.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::api::error::ApiError;

/// One tenant's bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The per-tenant limiter (`rate` 0: unlimited).
#[derive(Debug)]
pub struct TenantRateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl TenantRateLimiter {
    /// At most `per_sec` events a second per tenant, bursts of two seconds'
    /// worth (never less than `min_burst`, so the largest batch can pass).
    pub fn new(per_sec: u32, min_burst: usize) -> TenantRateLimiter {
        let rate = f64::from(per_sec);
        TenantRateLimiter { rate, burst: (rate * 2.0).max(min_burst as f64), buckets: Mutex::new(HashMap::new()) }
    }

    /// Take `n` events' worth for `tenant`, or say how long until they fit.
    pub fn check(&self, tenant: &str, n: usize) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let Ok(mut buckets) = self.buckets.lock() else { return Ok(()) };
        let now = Instant::now();
        let bucket = buckets.entry(tenant.to_string()).or_insert(Bucket { tokens: self.burst, at: now });
        let refill = now.duration_since(bucket.at).as_secs_f64() * self.rate;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.at = now;
        let wanted = n as f64;
        if bucket.tokens >= wanted {
            bucket.tokens -= wanted;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((wanted - bucket.tokens) / self.rate))
        }
    }

    /// [`check`](Self::check) as the API answers it: `429` with
    /// `Retry-After` when `n` more events do not fit.
    pub fn admit(&self, tenant: &str, n: usize) -> Result<(), ApiError> {
        self.check(tenant, n).map_err(|wait| {
            let retry_after_secs = wait.as_secs() + 1;
            ApiError::TooManyRequests {
                message: format!(
                    "this tenant sends more than {} events per second; retry in {retry_after_secs} s",
                    self.rate()
                ),
                retry_after_secs,
            }
        })
    }

    /// The configured rate, events per second (0: unlimited).
    pub fn rate(&self) -> u32 {
        self.rate as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_a_flood_waits_and_tenants_do_not_share_a_bucket() {
        let limiter = TenantRateLimiter::new(100, 10);
        assert!(limiter.check("a", 200).is_ok(), "two seconds' worth at once");
        let wait = limiter.check("a", 50).expect_err("the bucket is empty");
        assert!(wait > Duration::from_millis(400) && wait <= Duration::from_millis(500), "{wait:?}");
        assert!(limiter.check("b", 200).is_ok(), "b has its own bucket");
        assert!(TenantRateLimiter::new(0, 10).check("a", 1_000_000).is_ok(), "0 is unlimited");
        assert!(TenantRateLimiter::new(1, 1000).check("a", 1000).is_ok(), "a full batch always fits");
    }
}
