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
//!
//! A request that finds the bucket short by at most [`MAX_PACING`] of the
//! rate is not refused: it takes its tokens (the bucket goes below empty)
//! and is held until they would have refilled, then goes on. A client
//! sending at about its limit is so paced to the rate instead of being told
//! to come back in a second: `Retry-After` counts whole seconds, and
//! clients that obey it (the noisy-neighbour bench's senders do) then paused
//! for a second and came back all at once with a refilled bucket, a burst
//! of the tenant's whole second at the intake every 1.2 s or so (seen in a
//! trace of `cairn bench --noisy-only`: every other tenant's writes waited
//! 130–350 ms in each). Only a request that would wait longer is refused.

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

/// The longest a request over the rate is held to pace it (see the module
/// docs); past that it is refused.
pub const MAX_PACING: Duration = Duration::from_millis(250);

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

    /// Take `n` events' worth for `tenant`: `Ok` with how long the request
    /// is to be held first (zero when the bucket had them; at most
    /// [`MAX_PACING`]), or `Err` with how long until it would be taken.
    pub fn check(&self, tenant: &str, n: usize) -> Result<Duration, Duration> {
        if self.rate <= 0.0 {
            return Ok(Duration::ZERO);
        }
        let Ok(mut buckets) = self.buckets.lock() else { return Ok(Duration::ZERO) };
        let now = Instant::now();
        let bucket = buckets.entry(tenant.to_string()).or_insert(Bucket { tokens: self.burst, at: now });
        let refill = now.duration_since(bucket.at).as_secs_f64() * self.rate;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.at = now;
        let wanted = n as f64;
        // How far below empty the bucket may go: what refills in MAX_PACING.
        let pacing = self.rate * MAX_PACING.as_secs_f64();
        if bucket.tokens - wanted >= -pacing {
            bucket.tokens -= wanted;
            Ok(Duration::from_secs_f64((-bucket.tokens).max(0.0) / self.rate))
        } else {
            Err(Duration::from_secs_f64((wanted - pacing - bucket.tokens) / self.rate))
        }
    }

    /// [`check`](Self::check) as the API answers it: held while the rate
    /// paces it, or `429` with `Retry-After` when `n` more events do not
    /// fit within [`MAX_PACING`].
    pub async fn admit(&self, tenant: &str, n: usize) -> Result<(), ApiError> {
        let hold = self.check(tenant, n).map_err(|wait| {
            let retry_after_secs = wait.as_secs() + 1;
            ApiError::TooManyRequests {
                message: format!(
                    "this tenant sends more than {} events per second; retry in {retry_after_secs} s",
                    self.rate()
                ),
                retry_after_secs,
            }
        })?;
        if !hold.is_zero() {
            tokio::time::sleep(hold).await;
        }
        Ok(())
    }

    /// The configured rate, events per second (0: unlimited).
    pub fn rate(&self) -> u32 {
        self.rate as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(d: Duration) -> u128 {
        d.as_millis()
    }

    #[test]
    fn a_burst_passes_a_flood_waits_and_tenants_do_not_share_a_bucket() {
        let limiter = TenantRateLimiter::new(100, 10);
        assert_eq!(limiter.check("a", 200), Ok(Duration::ZERO), "two seconds' worth at once");
        // 50 more: 25 fit in the pacing allowance (250 ms of 100/s), so
        // it could be taken in ~250 ms.
        let wait = limiter.check("a", 50).expect_err("the bucket is empty");
        assert!((240..=250).contains(&ms(wait)), "{wait:?}");
        assert_eq!(limiter.check("b", 200), Ok(Duration::ZERO), "b has its own bucket");
        assert_eq!(TenantRateLimiter::new(0, 10).check("a", 1_000_000), Ok(Duration::ZERO), "0 is unlimited");
        assert_eq!(TenantRateLimiter::new(1, 1000).check("a", 1000), Ok(Duration::ZERO), "a full batch always fits");
    }

    #[test]
    fn a_request_just_over_the_rate_is_held_until_its_tokens_refill() {
        let limiter = TenantRateLimiter::new(100, 10);
        assert_eq!(limiter.check("a", 200), Ok(Duration::ZERO));
        // 10 over: held ~100 ms; 10 more: ~200 ms (each waits for the ones
        // before it); 10 more would be 300 ms, past MAX_PACING: refused.
        let first = limiter.check("a", 10).expect("paced");
        assert!((90..=100).contains(&ms(first)), "{first:?}");
        let second = limiter.check("a", 10).expect("paced");
        assert!((190..=200).contains(&ms(second)), "{second:?}");
        let refused = limiter.check("a", 10).expect_err("past the pacing allowance");
        assert!((40..=50).contains(&ms(refused)), "taken once back within the allowance: {refused:?}");
        // A refusal takes nothing: a smaller request still fits.
        let third = limiter.check("a", 5).expect("paced");
        assert!((240..=250).contains(&ms(third)), "{third:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn admit_holds_a_paced_request_and_refuses_one_past_the_allowance() {
        let limiter = TenantRateLimiter::new(100, 10);
        limiter.admit("a", 200).await.expect("the burst");
        let started = tokio::time::Instant::now();
        limiter.admit("a", 20).await.expect("paced, not refused");
        let held = started.elapsed();
        assert!((190..=200).contains(&ms(held)), "{held:?}");
        let refused = limiter.admit("a", 100).await.expect_err("far over");
        assert!(matches!(refused, ApiError::TooManyRequests { retry_after_secs: 1, .. }), "{refused:?}");
    }
}
