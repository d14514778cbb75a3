//! One plugin call: a fresh `Store` instantiated from the cached
//! `InstancePre`, run under the call's limits, then thrown away.
//!
//! A fresh instance per call means no state leaks between calls, tenants or
//! contacts, and a trapped instance (which wasmtime poisons) is never reused.
//! Every failure is classified into a [`FailureCause`] that names what
//! happened (deadline, fuel, memory, stack, trap with its message, the
//! plugin's own error), so it can be recorded and shown to the developer.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use wasmtime::component::{Instance, InstancePre};
use wasmtime::{Store, Trap, UpdateDeadline};

use crate::runtime::bindings::{guest, types as wit};
use crate::runtime::cpu_turns::{self, CallTurns};
use crate::runtime::description::Description;
use crate::runtime::host::{CallScope, HostState, LogLine};
use crate::runtime::limits::Limits;
use crate::runtime::{LoadError, LoadedPlugin, Runtime, convert};
use crate::store;

/// Why a call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureCause {
    /// The wall-clock deadline passed.
    Deadline,
    /// The instruction budget ran out.
    Fuel,
    /// The memory cap was reached.
    Memory,
    /// The guest overflowed its stack.
    StackOverflow,
    /// The guest trapped (a Rust panic is a trap; the message says which).
    Trap,
    /// The plugin returned an error.
    Plugin,
    /// The result was larger than the output cap.
    OutputTooLarge,
    /// The result was not acceptable (e.g. a NaN score).
    InvalidOutput,
    /// The plugin does not implement the kind asked for.
    Unsupported,
    /// The host could not run the call (instance pool exhausted, ...).
    Unavailable,
}

impl FailureCause {
    /// The cause as recorded and shown (`deadline`, `fuel`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            FailureCause::Deadline => "deadline",
            FailureCause::Fuel => "fuel",
            FailureCause::Memory => "memory",
            FailureCause::StackOverflow => "stack-overflow",
            FailureCause::Trap => "trap",
            FailureCause::Plugin => "plugin",
            FailureCause::OutputTooLarge => "output-too-large",
            FailureCause::InvalidOutput => "invalid-output",
            FailureCause::Unsupported => "unsupported",
            FailureCause::Unavailable => "unavailable",
        }
    }
}

/// What a call used, reported to developers and recorded per invocation.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CallStats {
    /// Instructions (wasmtime fuel) consumed.
    pub fuel_used: u64,
    /// Wall-clock time, instantiation included.
    pub duration_us: u64,
    /// Host imports called.
    pub host_calls: u32,
    /// Peak linear memory, bytes.
    pub peak_memory_bytes: u64,
    /// Log lines the plugin wrote.
    pub logs: Vec<LogLine>,
}

/// A failed call.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{} failure: {message}", cause.as_str())]
pub struct CallError {
    /// Classified cause.
    pub cause: FailureCause,
    /// Human-readable detail (trap message, plugin's message...).
    pub message: String,
    /// Whether retrying may help (the plugin's flag, or true for deadlines
    /// and host unavailability).
    pub retryable: bool,
    /// What the call used before failing.
    pub stats: CallStats,
}

/// A successful call's value and usage.
#[derive(Debug, Clone)]
pub struct Called<T> {
    /// What the plugin returned.
    pub value: T,
    /// What it used.
    pub stats: CallStats,
}

/// A score as returned by a scorer (finite, clamped).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ScoreResult {
    /// The score.
    pub value: f64,
    /// Why.
    pub reasons: Vec<String>,
}

/// Scores beyond this are clamped: keeps sums and thresholds meaningful.
const MAX_ABS_SCORE: f64 = 1e9;

struct Call {
    store: Store<HostState>,
    instance: Instance,
    started: Instant,
    fuel_budget: u64,
    deadline: Duration,
    /// The tenant's concurrency slot, held until the call is dropped.
    _slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

async fn begin(
    pre: &InstancePre<HostState>,
    scope: Option<CallScope>,
    limits: &Limits,
    turns: Option<CallTurns>,
) -> Result<Call, CallError> {
    let started = Instant::now();
    let mut store = Store::new(pre.engine(), HostState::new(scope, limits.clone()));
    store.limiter(|s| &mut s.limiter);
    let fail = |message: String| CallError {
        cause: FailureCause::Unavailable,
        message,
        retryable: true,
        stats: CallStats::default(),
    };
    store.set_fuel(limits.fuel).map_err(|e| fail(format!("setting fuel: {e}")))?;
    // A long call (see `cpu_turns`) yields to tokio at the tick, so a
    // spinning plugin does not hold a worker thread, and waits for a CPU
    // turn; past the deadline the next tick interrupts any call.
    let deadline_at = started + limits.deadline;
    // Long: see `cpu_turns::is_long`.
    let resumed: Arc<Mutex<Option<Instant>>> = Arc::default();
    let mut fuel_at_last_tick = limits.fuel;
    store.epoch_deadline_callback(move |ctx| {
        let now = Instant::now();
        if now >= deadline_at {
            return Ok(UpdateDeadline::Interrupt);
        }
        let fuel_left = ctx.get_fuel().unwrap_or(0);
        let burnt = fuel_at_last_tick.saturating_sub(fuel_left);
        fuel_at_last_tick = fuel_left;
        let last = resumed.lock().unwrap_or_else(PoisonError::into_inner).replace(now);
        if !cpu_turns::is_long(last.map(|at| now.duration_since(at)), burnt) {
            return Ok(UpdateDeadline::Continue(1));
        }
        Ok(match &turns {
            Some(turns) => {
                let (turn, resumed) = (turns.next_turn(), resumed.clone());
                // Counted from when the turn came: the wait for it is not
                // running.
                UpdateDeadline::YieldCustom(
                    1,
                    Box::pin(async move {
                        turn.await;
                        *resumed.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
                    }),
                )
            }
            None => UpdateDeadline::Yield(1),
        })
    });
    store.set_epoch_deadline(1);
    let instance = match pre.instantiate_async(&mut store).await {
        Ok(i) => i,
        Err(e) => {
            let mut call_err = classify(e, &store, limits.fuel);
            if call_err.cause == FailureCause::Trap {
                call_err.cause = FailureCause::Unavailable;
                call_err.message = format!("could not instantiate the plugin: {}", call_err.message);
            }
            return Err(call_err);
        }
    };
    Ok(Call { store, instance, started, fuel_budget: limits.fuel, deadline: limits.deadline, _slot: None })
}

impl Call {
    fn stats(&mut self) -> CallStats {
        let fuel_left = self.store.get_fuel().unwrap_or(0);
        CallStats {
            fuel_used: self.fuel_budget.saturating_sub(fuel_left),
            duration_us: u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX),
            host_calls: self.store.data().host_calls(),
            peak_memory_bytes: self.store.data().limiter.peak_memory_bytes as u64,
            logs: std::mem::take(&mut self.store.data_mut().logs),
        }
    }

    /// Turn the raw outcome of the export into a value or a classified error.
    fn finish<T>(
        mut self,
        outcome: Result<wasmtime::Result<Result<T, wit::PluginError>>, tokio::time::error::Elapsed>,
    ) -> Result<Called<T>, CallError> {
        let result = match outcome {
            Err(_elapsed) => Err(CallError {
                cause: FailureCause::Deadline,
                message: format!("the call did not finish within {} ms", self.deadline.as_millis()),
                retryable: true,
                stats: CallStats::default(),
            }),
            Ok(Err(e)) => Err(classify(e, &self.store, self.fuel_budget)),
            Ok(Ok(Err(plugin_error))) => Err(CallError {
                cause: FailureCause::Plugin,
                message: plugin_error.message.chars().take(2000).collect(),
                retryable: plugin_error.retryable,
                stats: CallStats::default(),
            }),
            Ok(Ok(Ok(value))) => Ok(value),
        };
        let stats = self.stats();
        match result {
            Ok(value) => Ok(Called { value, stats }),
            Err(mut e) => {
                e.stats = stats;
                Err(e)
            }
        }
    }
}

/// A call let in ([`Runtime::admit`]): its tenant's call slot, what is
/// left of its limits, its CPU turns.
struct Admitted {
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
    limits: Limits,
    turns: CallTurns,
}

/// The part of a call that touches its instance: given the call's store and
/// instance, load the export and call it.
type GuestCall<T> = Box<
    dyn for<'a> FnOnce(
            &'a mut Store<HostState>,
            &'a Instance,
        )
            -> Pin<Box<dyn Future<Output = wasmtime::Result<Result<T, wit::PluginError>>> + Send + 'a>>
        + Send,
>;

impl Runtime {
    /// Let a call in once its tenant has a free call slot
    /// ([`Limits::tenant_concurrent_calls`]). Waiting counts against the
    /// call's deadline: a tenant whose calls pile up gets `unavailable`
    /// (retryable, not the plugin's fault) rather than other tenants' workers.
    async fn admit(&self, scope: &CallScope, limits: &Limits) -> Result<Admitted, CallError> {
        let waited_from = Instant::now();
        let unavailable = || CallError {
            cause: FailureCause::Unavailable,
            message: format!(
                "this tenant already runs {} plugin calls at once; none finished within {} ms",
                limits.tenant_concurrent_calls,
                limits.deadline.as_millis()
            ),
            retryable: true,
            stats: CallStats::default(),
        };
        let slot = match self.tenant_slots(&scope.tenant_id) {
            None => None,
            Some(slots) => match tokio::time::timeout(limits.deadline, slots.acquire_owned()).await {
                Ok(Ok(permit)) => Some(permit),
                _ => return Err(unavailable()),
            },
        };
        // The wait is part of the call's time: what is left of the deadline
        // is what the plugin gets.
        let left = limits.deadline.saturating_sub(waited_from.elapsed());
        if left < Duration::from_millis(1) {
            return Err(unavailable());
        }
        Ok(Admitted {
            slot,
            limits: Limits { deadline: left, ..limits.clone() },
            turns: self.cpu_turns.for_call(&scope.tenant_id),
        })
    }

    /// Make a tenant's call: let it in ([`Runtime::admit`]), then
    /// instantiate `pre` and run `guest` against the instance, under the
    /// call's limits.
    ///
    /// Where the instance runs depends on the tenant: when its plugins burnt
    /// CPU lately ([`CpuTurns::burnt_lately`](cpu_turns::CpuTurns::burnt_lately)),
    /// on the background runtime, at the lowest priority
    /// (`super::background`); otherwise here. Only the instance goes: the
    /// caller (a pipeline lane, a workflow run, a request) stays where it
    /// is, so the database work around the call — claims, commits, run saves,
    /// which hold SQLite's one writer — never waits behind runaway plugins on
    /// a low-priority worker while every other tenant's writes wait behind it.
    /// (The plugin's own host calls run with its instance: an action's
    /// store writes through the host still hold the writer from there.)
    ///
    /// The wait for a background worker counts against the call's deadline,
    /// as the wait for a call slot does.
    async fn call_for_tenant<T: Send + 'static>(
        &self,
        pre: &InstancePre<HostState>,
        scope: CallScope,
        limits: &Limits,
        guest: GuestCall<T>,
    ) -> Result<Called<T>, CallError> {
        let Admitted { slot, limits, turns } = self.admit(&scope, limits).await?;
        let home = turns.tenant_burnt_lately().then(super::background::handle).flatten();
        if home.is_some() {
            turns.ran_in_background();
        }
        let pre = pre.clone();
        let admitted_at = Instant::now();
        let call = async move {
            let limits = Limits { deadline: limits.deadline.saturating_sub(admitted_at.elapsed()), ..limits };
            let mut call = begin(&pre, Some(scope), &limits, Some(turns)).await?;
            call._slot = slot;
            let Call { store, instance, .. } = &mut call;
            let outcome = tokio::time::timeout(limits.deadline, guest(store, instance)).await;
            call.finish(outcome)
        };
        let Some(home) = home else { return call.await };
        // Aborted if the caller stops waiting (a lane aborted at shutdown),
        // as the call would have been in place.
        let mut placed = AbortOnDrop(home.spawn(call));
        match (&mut placed.0).await {
            Ok(called) => called,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(CallError {
                cause: FailureCause::Unavailable,
                message: "the call was cancelled".into(),
                retryable: true,
                stats: CallStats::default(),
            }),
        }
    }
}

/// Aborts the call's task when the caller stops waiting for it.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Name the cause of a wasmtime error.
fn classify(error: wasmtime::Error, store: &Store<HostState>, _fuel_budget: u64) -> CallError {
    let state = store.data();
    let stderr = state.stderr_text();
    let (cause, message, retryable) = if state.limiter.memory_refused {
        (FailureCause::Memory, "the plugin tried to grow its memory beyond the cap".to_string(), false)
    } else if let Some(trap) = error.downcast_ref::<Trap>() {
        match trap {
            Trap::OutOfFuel => (FailureCause::Fuel, "the plugin used its whole instruction budget".into(), false),
            Trap::Interrupt => (FailureCause::Deadline, "the plugin ran past its deadline".into(), true),
            Trap::StackOverflow => (FailureCause::StackOverflow, "the plugin overflowed its stack".into(), false),
            other => {
                // Rust prints "thread .. panicked at file:line:col:" and the
                // message on the next line: keep both, nothing else.
                let lines: Vec<&str> = stderr.lines().collect();
                let panic = lines
                    .iter()
                    .position(|l| l.contains("panicked"))
                    .map(|i| lines[i..lines.len().min(i + 2)].join(" ").chars().take(1000).collect::<String>());
                match panic {
                    Some(p) => (FailureCause::Trap, format!("{other}: {p}"), false),
                    None => (FailureCause::Trap, other.to_string(), false),
                }
            }
        }
    } else {
        (FailureCause::Trap, format!("{error:#}"), false)
    };
    CallError { cause, message, retryable, stats: CallStats::default() }
}

fn unsupported(kind: &str) -> CallError {
    CallError {
        cause: FailureCause::Unsupported,
        message: format!("this plugin does not implement the {kind} kind"),
        retryable: false,
        stats: CallStats::default(),
    }
}

fn too_large(size: usize, limits: &Limits, stats: CallStats) -> CallError {
    CallError {
        cause: FailureCause::OutputTooLarge,
        message: format!("the plugin returned {size} bytes; the cap is {}", limits.output_bytes),
        retryable: false,
        stats,
    }
}

fn call_context(scope: &CallScope, invocation_id: &str) -> wit::CallContext {
    wit::CallContext {
        install_id: scope.install_id.clone(),
        invocation_id: invocation_id.to_string(),
        now: scope.now,
        test_mode: scope.test_mode,
    }
}

fn properties_size(props: &[wit::Property]) -> usize {
    props.iter().map(|p| p.name.len() + value_size(&p.value)).sum()
}

fn value_size(v: &wit::Value) -> usize {
    match v {
        wit::Value::Text(s) => s.len(),
        wit::Value::TextList(l) => l.iter().map(|s| s.len() + 8).sum(),
        _ => 8,
    }
}

/// Call `describe()` on a fresh instance with no host access.
pub(crate) async fn describe(
    runtime: &Runtime,
    pre: &InstancePre<HostState>,
    meta: &guest::meta::GuestIndices,
) -> Result<Description, LoadError> {
    let limits = runtime.limits().clone();
    let mut call = begin(pre, None, &limits, None).await.map_err(|e| LoadError::DescribeFailed(e.to_string()))?;
    let exports = meta.load(&mut call.store, &call.instance).map_err(|e| LoadError::DescribeFailed(format!("{e}")))?;
    let outcome = tokio::time::timeout(limits.deadline, exports.call_describe(&mut call.store)).await;
    let called = call.finish(outcome.map(|r| r.map(Ok))).map_err(|e| LoadError::DescribeFailed(e.to_string()))?;
    let d = called.value;
    let size = d.config_schema.len() + d.summary.len() + d.name.len() + d.version.len();
    if size > limits.output_bytes {
        return Err(LoadError::InvalidDescription(format!(
            "describe() returned {size} bytes; the cap is {}",
            limits.output_bytes
        )));
    }
    Description::from_wit(d).map_err(LoadError::InvalidDescription)
}

/// One check of a plugin's self-test.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SelfCheck {
    /// Its name.
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// What was expected and seen.
    pub detail: String,
}

/// Most checks kept from one self-test, and most bytes per text: the
/// plugin writes them and the host stores them in the install's history.
const MAX_SELF_CHECKS: usize = 100;
const MAX_CHECK_TEXT: usize = 500;

impl Runtime {
    /// Run the plugin's optional `cairn:health/self-test` export on a fresh
    /// instance with no tenant, under the default limits. `Ok(None)` when the
    /// component does not export it (components built against
    /// `cairn:plugin@0.1.0` alone): describe() is then the whole check.
    pub async fn self_test(&self, plugin: &LoadedPlugin) -> Result<Option<Vec<SelfCheck>>, CallError> {
        let Some(indices) = plugin.self_test.as_ref() else { return Ok(None) };
        let limits = self.limits().clone();
        let mut call = begin(&plugin.pre, None, &limits, None).await?;
        let guest = indices.load(&mut call.store, &call.instance).map_err(|e| classify(e, &call.store, limits.fuel))?;
        let outcome = tokio::time::timeout(limits.deadline, guest.call_run(&mut call.store)).await;
        let called = call.finish(outcome.map(|r| r.map(Ok)))?;
        let cut = |s: String| s.chars().take(MAX_CHECK_TEXT).collect::<String>();
        Ok(Some(
            called
                .value
                .into_iter()
                .take(MAX_SELF_CHECKS)
                .map(|c| SelfCheck { name: cut(c.name), passed: c.passed, detail: cut(c.detail) })
                .collect(),
        ))
    }
}

/// The inputs a scorer or trigger sees, projected per its `reads`.
#[derive(Clone)]
pub struct ProjectedInput {
    /// The contact with only the declared properties.
    pub contact: wit::Contact,
    /// The declared events, newest first.
    pub events: Vec<wit::Event>,
}

impl ProjectedInput {
    /// Project a contact and its events for `plugin`.
    pub fn build(plugin: &LoadedPlugin, contact: &store::Contact, events: &[store::Event]) -> ProjectedInput {
        let reads = &plugin.description.reads;
        ProjectedInput {
            contact: convert::contact_to_wit(contact, Some(&reads.contact_properties)),
            events: events
                .iter()
                .filter(|e| reads.event_kinds.is_empty() || reads.event_kinds.contains(&e.kind))
                .take(reads.max_events as usize)
                .map(convert::event_to_wit)
                .collect(),
        }
    }
}

impl Runtime {
    /// Score a contact.
    pub async fn score(
        &self,
        plugin: &LoadedPlugin,
        scope: CallScope,
        config: &str,
        input: ProjectedInput,
        invocation_id: &str,
    ) -> Result<Called<ScoreResult>, CallError> {
        let indices = plugin.scorer.clone().ok_or_else(|| unsupported("scorer"))?;
        let limits = self.limits().clone();
        let (ctx, config) = (call_context(&scope, invocation_id), config.to_string());
        let guest: GuestCall<_> = Box::new(move |store, instance| {
            Box::pin(async move {
                let guest = indices.load(&mut *store, instance)?;
                guest.call_score(store, &ctx, &config, &input.contact, &input.events).await
            })
        });
        let called = self.call_for_tenant(&plugin.pre, scope, &limits, guest).await?;
        let size: usize = called.value.reasons.iter().map(|r| r.len() + 8).sum();
        if size > limits.output_bytes {
            return Err(too_large(size, &limits, called.stats));
        }
        let value = called.value.value;
        if !value.is_finite() {
            return Err(CallError {
                cause: FailureCause::InvalidOutput,
                message: format!("the scorer returned {value}, which is not a finite number"),
                retryable: false,
                stats: called.stats,
            });
        }
        Ok(Called {
            value: ScoreResult { value: value.clamp(-MAX_ABS_SCORE, MAX_ABS_SCORE), reasons: called.value.reasons },
            stats: called.stats,
        })
    }

    /// Offer an event to a trigger; returns the contacts to enroll.
    pub async fn on_event(
        &self,
        plugin: &LoadedPlugin,
        scope: CallScope,
        config: &str,
        input: ProjectedInput,
        event: &store::Event,
        invocation_id: &str,
    ) -> Result<Called<Vec<guest::trigger::Enrollment>>, CallError> {
        let indices = plugin.trigger.clone().ok_or_else(|| unsupported("trigger"))?;
        let limits = self.limits().clone();
        let (ctx, config) = (call_context(&scope, invocation_id), config.to_string());
        let event = convert::event_to_wit(event);
        let guest: GuestCall<_> = Box::new(move |store, instance| {
            Box::pin(async move {
                let guest = indices.load(&mut *store, instance)?;
                guest.call_on_event(store, &ctx, &config, &input.contact, &event, &input.events).await
            })
        });
        let called = self.call_for_tenant(&plugin.pre, scope, &limits, guest).await?;
        let size: usize = called.value.iter().map(|e| e.contact_id.len() + e.reason.len()).sum();
        if size > limits.output_bytes {
            return Err(too_large(size, &limits, called.stats));
        }
        Ok(called)
    }

    /// Run an action step.
    pub async fn execute(
        &self,
        plugin: &LoadedPlugin,
        scope: CallScope,
        config: &str,
        input: guest::action::ActionInput,
        invocation_id: &str,
    ) -> Result<Called<store::Properties>, CallError> {
        let indices = plugin.action.clone().ok_or_else(|| unsupported("action"))?;
        let limits = self.limits().clone();
        let (ctx, config) = (call_context(&scope, invocation_id), config.to_string());
        let guest: GuestCall<_> = Box::new(move |store, instance| {
            Box::pin(async move {
                let guest = indices.load(&mut *store, instance)?;
                guest.call_execute(store, &ctx, &config, &input).await
            })
        });
        let called = self.call_for_tenant(&plugin.pre, scope, &limits, guest).await?;
        let size = properties_size(&called.value);
        if size > limits.output_bytes {
            return Err(too_large(size, &limits, called.stats));
        }
        Ok(Called { value: convert::properties_from_wit(called.value), stats: called.stats })
    }

    /// Deliver a message through a channel.
    pub async fn send(
        &self,
        plugin: &LoadedPlugin,
        scope: CallScope,
        config: &str,
        message: guest::channel::Message,
        invocation_id: &str,
    ) -> Result<Called<guest::channel::Receipt>, CallError> {
        let indices = plugin.channel.clone().ok_or_else(|| unsupported("channel"))?;
        let limits = self.limits().clone();
        let (ctx, config) = (call_context(&scope, invocation_id), config.to_string());
        let guest: GuestCall<_> = Box::new(move |store, instance| {
            Box::pin(async move {
                let guest = indices.load(&mut *store, instance)?;
                guest.call_send(store, &ctx, &config, &message).await
            })
        });
        self.call_for_tenant(&plugin.pre, scope, &limits, guest).await
    }

    /// Parse a provider callback into events.
    pub async fn parse_inbound(
        &self,
        plugin: &LoadedPlugin,
        scope: CallScope,
        config: &str,
        request: guest::channel::InboundRequest,
        invocation_id: &str,
    ) -> Result<Called<Vec<guest::channel::InboundEvent>>, CallError> {
        let indices = plugin.channel.clone().ok_or_else(|| unsupported("channel"))?;
        let limits = self.limits().clone();
        let (ctx, config) = (call_context(&scope, invocation_id), config.to_string());
        let guest: GuestCall<_> = Box::new(move |store, instance| {
            Box::pin(async move {
                let guest = indices.load(&mut *store, instance)?;
                guest.call_parse_inbound(store, &ctx, &config, &request).await
            })
        });
        let called = self.call_for_tenant(&plugin.pre, scope, &limits, guest).await?;
        let size: usize = called.value.iter().map(|e| e.kind.len() + properties_size(&e.properties)).sum();
        if size > limits.output_bytes {
            return Err(too_large(size, &limits, called.stats));
        }
        Ok(called)
    }
}
