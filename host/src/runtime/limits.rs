//! Per-call resource limits and the limiter that enforces memory caps.
//!
//! Each limit names the abuse it prevents. Defaults suit scorers and actions
//! on a shared server; operators override them (`cairn serve --help`).

use std::time::Duration;

/// Limits applied to every plugin call.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Wall-clock deadline for the whole call, host calls included: stops
    /// infinite loops and plugins that wait on slow upstreams.
    pub deadline: Duration,
    /// Instruction budget (wasmtime fuel): a deterministic bound on compute
    /// that is also reported to developers as "fuel used".
    pub fuel: u64,
    /// Largest linear memory a call may grow to: stops unbounded allocation.
    pub memory_bytes: usize,
    /// Largest result a call may return (bytes of strings and lists): stops a
    /// plugin from flooding the host's heap and the database with output.
    pub output_bytes: usize,
    /// Host calls (store, state, log, http) per invocation: stops a plugin from
    /// hammering the database from one call.
    pub host_calls: u32,
    /// Log lines kept per invocation (further lines are dropped and counted).
    pub log_lines: u32,
    /// Failures in a row after which the circuit breaker disables an install
    /// (0: never): stops a broken plugin from burning every event's budget
    /// and filling the record with the same error until an admin looks.
    pub breaker_failures: u32,
    /// How long a version swapped into an install by an upgrade is on
    /// probation: if its calls fail too often in that time, it is rolled
    /// back to the version it replaced.
    pub probation: Duration,
    /// The share of failed calls, in percent, that rolls a version on
    /// probation back (0: never).
    pub rollback_failure_percent: u32,
    /// Calls a version on probation makes before its failure rate counts:
    /// one unlucky first call is not a trend.
    pub rollback_min_calls: u32,
    /// Events per second a tenant may send (`POST /v1/events`) before it is
    /// answered 429 with `Retry-After` (0: unlimited). Bursts of two
    /// seconds' worth pass.
    pub tenant_events_per_sec: u32,
    /// Plugin calls of one tenant running at once; more wait for a slot
    /// (up to the call's deadline), so one tenant cannot take every worker.
    pub tenant_concurrent_calls: u32,
    /// How long a claim of work (a batch of events, a run's step, a
    /// schedule) stays reserved for the process that made it: with several
    /// nodes, how soon the work of a node that died is resumed by another.
    /// Keep it well above `deadline`, so a slow step is never claimed again
    /// while it runs.
    pub claim_lease: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline: Duration::from_millis(500),
            fuel: 50_000_000,
            memory_bytes: 64 << 20,
            output_bytes: 1 << 20,
            host_calls: 1_000,
            log_lines: 100,
            breaker_failures: 20,
            probation: Duration::from_secs(300),
            rollback_failure_percent: 50,
            rollback_min_calls: 5,
            tenant_events_per_sec: 20_000,
            tenant_concurrent_calls: 16,
            claim_lease: Duration::from_millis(crate::store::CLAIM_LEASE_MS as u64),
        }
    }
}

/// Enforces the memory cap and remembers that it did, so the failure can be
/// reported as "memory" instead of the guest's resulting `unreachable` trap.
#[derive(Debug)]
pub struct CallLimiter {
    memory_bytes: usize,
    /// Set when a memory growth was refused.
    pub memory_refused: bool,
    /// The largest linear memory the call asked for and got, bytes
    /// (`cairn plugin test` reports it against the cap).
    pub peak_memory_bytes: usize,
}

impl CallLimiter {
    /// A limiter for one call.
    pub fn new(memory_bytes: usize) -> Self {
        CallLimiter { memory_bytes, memory_refused: false, peak_memory_bytes: 0 }
    }
}

impl wasmtime::ResourceLimiter for CallLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.memory_refused = true;
            return Ok(false);
        }
        self.peak_memory_bytes = self.peak_memory_bytes.max(desired);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        // Tables hold function references; 100k entries is far beyond any real
        // plugin and stops a guest from growing them as a memory side channel.
        Ok(desired <= 100_000)
    }
}
