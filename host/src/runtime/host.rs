//! The per-call state of a plugin instance and the host imports it can use.
//!
//! Every import follows the same pattern (Spin factors, wasmtime wasi-http):
//! the outer `wasmtime::Result` traps the guest (reserved for host bugs), the
//! inner `Result<_, HostError>` is the guest's to handle. Each import:
//! 1. counts against the call's host-call budget,
//! 2. checks the install's grant,
//! 3. is scoped to the tenant of the call: ids are looked up only inside it,
//!    so another tenant's ids behave exactly like ids that do not exist.
//!
//! In test mode (dry runs) writes are acknowledged but not kept.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::runtime::bindings::cairn::plugin::{http, log, state, store as wit_store, types};
use crate::runtime::convert;
use crate::runtime::egress::{Egress, EgressError};
use crate::runtime::grants::Grants;
use crate::runtime::limits::{CallLimiter, Limits};
use crate::store::{self, Store};

use types::HostError;

/// Events of one kind a contact may have in a minute before a plugin may
/// not emit another: the guard against plugins that re-trigger themselves.
pub const MAX_EMITTED_PER_MINUTE: i64 = 100;

/// Bytes of guest stderr kept per call (enough for a panic message).
const STDERR_CAPTURE: usize = 4096;
/// Longest log line kept; the rest is cut.
const MAX_LOG_LINE: usize = 2048;
/// Longest key and value of the install's state.
const MAX_STATE_KEY: usize = 256;
const MAX_STATE_VALUE: usize = 64 << 10;

/// What a call may reach: its tenant, install, grants and services.
#[derive(Clone)]
pub struct CallScope {
    /// The tenant every store access is scoped to.
    pub tenant_id: String,
    /// The install being invoked.
    pub install_id: String,
    /// What the install was granted.
    pub grants: Arc<Grants>,
    /// The customer store.
    pub store: Store,
    /// Outbound HTTP.
    pub egress: Egress,
    /// Dry run: writes are not kept, no outbound effects.
    pub test_mode: bool,
    /// The call's clock (epoch ms).
    pub now: i64,
    /// In a dry run on an inline sample contact, its id: the sample exists
    /// for this call only, so writes to it are accepted (and, like every
    /// test-mode write, not kept).
    pub test_contact: Option<String>,
}

/// A log line written by the plugin.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LogLine {
    /// `debug`, `info`, `warn` or `error`.
    pub level: &'static str,
    /// The text (cut to 2 KiB).
    pub message: String,
}

/// The `Store` data of one plugin call.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    /// Memory cap enforcement.
    pub limiter: CallLimiter,
    scope: Option<CallScope>,
    limits: Limits,
    host_calls: u32,
    /// Log lines kept (up to the limit).
    pub logs: Vec<LogLine>,
    /// Log lines dropped beyond the limit.
    pub logs_dropped: u32,
    stderr: MemoryOutputPipe,
}

impl HostState {
    /// State for a call with `scope`, or for `describe()` (no scope: every
    /// import is denied).
    pub fn new(scope: Option<CallScope>, limits: Limits) -> Self {
        let stderr = MemoryOutputPipe::new(STDERR_CAPTURE);
        // Deny-all WASI: no preopened directories, no environment, no
        // arguments, no network; stdout discarded, stderr captured for panics.
        let wasi = WasiCtx::builder().stderr(stderr.clone()).build();
        HostState {
            wasi,
            table: ResourceTable::new(),
            limiter: CallLimiter::new(limits.memory_bytes),
            scope,
            limits,
            host_calls: 0,
            logs: Vec::new(),
            logs_dropped: 0,
            stderr,
        }
    }

    /// What the guest wrote to stderr (a Rust panic message lands here).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.contents()).trim().to_string()
    }

    /// Host calls made so far.
    pub fn host_calls(&self) -> u32 {
        self.host_calls
    }

    /// Count a host call and return the scope, or the guest-visible error.
    fn enter(&mut self, needs: Need) -> Result<&CallScope, HostError> {
        self.host_calls += 1;
        if self.host_calls > self.limits.host_calls {
            return Err(HostError::Limit(format!("more than {} host calls in one invocation", self.limits.host_calls)));
        }
        let scope = self
            .scope
            .as_ref()
            .ok_or_else(|| HostError::Denied("no host access during describe() or the self-test".into()))?;
        let granted = match needs {
            Need::Read => scope.grants.store_read,
            Need::Write => scope.grants.store_write,
            Need::State => scope.grants.state,
            Need::Http => true, // checked per host by the egress policy
        };
        if !granted {
            let name = match needs {
                Need::Read => "store-read",
                Need::Write => "store-write",
                Need::State => "state",
                Need::Http => "http",
            };
            tracing::info!(install = %scope.install_id, capability = name, "plugin used a capability it was not granted");
            return Err(HostError::Denied(format!("this install was not granted `{name}`")));
        }
        Ok(scope)
    }
}

#[derive(Clone, Copy)]
enum Need {
    Read,
    Write,
    State,
    Http,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Database trouble is the guest's to retry; details stay in the host log.
fn unavailable(e: store::StoreError) -> HostError {
    tracing::warn!("store error inside a plugin call: {e}");
    HostError::Unavailable("the customer store is temporarily unavailable".into())
}

fn ok<T>(value: T) -> wasmtime::Result<Result<T, HostError>> {
    Ok(Ok(value))
}

fn fail<T>(error: HostError) -> wasmtime::Result<Result<T, HostError>> {
    Ok(Err(error))
}

/// Evaluate to the scope, or return the guest-visible error from the import.
macro_rules! enter {
    ($self:ident, $need:expr) => {
        match $self.enter($need) {
            Ok(scope) => scope.clone(),
            Err(e) => return fail(e),
        }
    };
}

impl types::Host for HostState {}

impl wit_store::Host for HostState {
    async fn get_contact(&mut self, id: String) -> wasmtime::Result<Result<types::Contact, HostError>> {
        let scope = enter!(self, Need::Read);
        match scope.store.get_contact(&scope.tenant_id, &id).await {
            Ok(Some(c)) => ok(convert::contact_to_wit(&c, None)),
            Ok(None) => fail(HostError::NotFound),
            Err(e) => fail(unavailable(e)),
        }
    }

    async fn find_contact_by_email(
        &mut self,
        email: String,
    ) -> wasmtime::Result<Result<Option<types::Contact>, HostError>> {
        let scope = enter!(self, Need::Read);
        match scope.store.find_contact_by_email(&scope.tenant_id, &email).await {
            Ok(c) => ok(c.map(|c| convert::contact_to_wit(&c, None))),
            Err(e) => fail(unavailable(e)),
        }
    }

    async fn count_events(
        &mut self,
        contact_id: String,
        kind: String,
        since: i64,
    ) -> wasmtime::Result<Result<u32, HostError>> {
        let scope = enter!(self, Need::Read);
        match scope.store.count_events(&scope.tenant_id, &contact_id, &kind, since).await {
            Ok(n) => ok(u32::try_from(n).unwrap_or(u32::MAX)),
            Err(e) => fail(unavailable(e)),
        }
    }

    async fn recent_events(
        &mut self,
        contact_id: String,
        kinds: Vec<String>,
        since: i64,
        limit: u32,
    ) -> wasmtime::Result<Result<Vec<types::Event>, HostError>> {
        let scope = enter!(self, Need::Read);
        // One call returns at most 1000 events: a plugin cannot pull a whole
        // history into the host's memory in one go.
        let limit = i64::from(limit.min(1000));
        match scope.store.recent_events(&scope.tenant_id, &contact_id, &kinds, since, limit).await {
            Ok(events) => ok(events.iter().map(convert::event_to_wit).collect()),
            Err(e) => fail(unavailable(e)),
        }
    }

    async fn set_properties(
        &mut self,
        contact_id: String,
        properties: Vec<types::Property>,
    ) -> wasmtime::Result<Result<(), HostError>> {
        let scope = enter!(self, Need::Write);
        let props = convert::properties_from_wit(properties);
        if scope.test_mode {
            return exists_in_tenant(&scope, &contact_id).await;
        }
        match scope.store.set_properties(&scope.tenant_id, &contact_id, &props).await {
            Ok(true) => ok(()),
            Ok(false) => fail(HostError::NotFound),
            Err(store::StoreError::Invalid(m)) => fail(HostError::Invalid(m)),
            Err(e) => fail(unavailable(e)),
        }
    }

    async fn add_tag(&mut self, contact_id: String, tag: String) -> wasmtime::Result<Result<(), HostError>> {
        let scope = enter!(self, Need::Write);
        if tag.is_empty() || tag.len() > 100 {
            return fail(HostError::Invalid("a tag is 1 to 100 bytes".into()));
        }
        if scope.test_mode {
            return exists_in_tenant(&scope, &contact_id).await;
        }
        match scope.store.add_tag(&scope.tenant_id, &contact_id, &tag).await {
            Ok(true) => ok(()),
            Ok(false) => fail(HostError::NotFound),
            Err(e) => fail(unavailable(e)),
        }
    }

    async fn remove_tag(&mut self, contact_id: String, tag: String) -> wasmtime::Result<Result<(), HostError>> {
        let scope = enter!(self, Need::Write);
        if scope.test_mode {
            return exists_in_tenant(&scope, &contact_id).await;
        }
        match scope.store.remove_tag(&scope.tenant_id, &contact_id, &tag).await {
            Ok(true) => ok(()),
            Ok(false) => fail(HostError::NotFound),
            Err(e) => fail(unavailable(e)),
        }
    }

    async fn create_task(&mut self, task: wit_store::NewTask) -> wasmtime::Result<Result<String, HostError>> {
        let scope = enter!(self, Need::Write);
        if task.title.is_empty() || task.title.len() > 500 {
            return fail(HostError::Invalid("a task title is 1 to 500 bytes".into()));
        }
        if scope.test_mode {
            return match exists_in_tenant(&scope, &task.contact_id).await? {
                Ok(()) => ok("test-task".into()),
                Err(e) => fail(e),
            };
        }
        // No assignee means the contact's owner: the usual "task for the owner".
        let assignee = match task.assignee {
            Some(a) => Some(a),
            None => match scope.store.get_contact(&scope.tenant_id, &task.contact_id).await {
                Ok(Some(c)) => c.owner,
                Ok(None) => return fail(HostError::NotFound),
                Err(e) => return fail(unavailable(e)),
            },
        };
        let new = store::NewTask {
            contact_id: Some(task.contact_id),
            title: task.title,
            assignee,
            due_at: task.due_at,
            idempotency_key: task.idempotency_key,
        };
        match scope.store.create_task(&scope.tenant_id, new, &scope.install_id).await {
            Ok(Some((task, _created))) => ok(task.id),
            Ok(None) => fail(HostError::NotFound),
            Err(e) => fail(unavailable(e)),
        }
    }

    async fn add_note(&mut self, contact_id: String, body: String) -> wasmtime::Result<Result<String, HostError>> {
        let scope = enter!(self, Need::Write);
        if body.len() > 64 << 10 {
            return fail(HostError::Invalid("a note is at most 64 KiB".into()));
        }
        if scope.test_mode {
            return match exists_in_tenant(&scope, &contact_id).await? {
                Ok(()) => ok("test-note".into()),
                Err(e) => fail(e),
            };
        }
        match scope.store.add_note(&scope.tenant_id, &contact_id, &body).await {
            Ok(Some(note)) => ok(note.id),
            Ok(None) => fail(HostError::NotFound),
            Err(e) => fail(unavailable(e)),
        }
    }

    async fn emit_event(
        &mut self,
        contact_id: String,
        kind: String,
        properties: Vec<types::Property>,
    ) -> wasmtime::Result<Result<String, HostError>> {
        let scope = enter!(self, Need::Write);
        if kind.is_empty() || kind.len() > 100 {
            return fail(HostError::Invalid("an event kind is 1 to 100 bytes".into()));
        }
        if scope.test_mode {
            return match exists_in_tenant(&scope, &contact_id).await? {
                Ok(()) => ok("test-event".into()),
                Err(e) => fail(e),
            };
        }
        // A plugin whose events trigger itself (an emit per call, each
        // event calling it again) would loop forever: events of one kind
        // for one contact are capped per minute of business time, counting
        // every source, which ends such a chain at the cap.
        let since = scope.now - 60_000;
        match scope.store.count_events(&scope.tenant_id, &contact_id, &kind, since).await {
            Ok(n) if n >= MAX_EMITTED_PER_MINUTE => {
                tracing::warn!(install = %scope.install_id, kind, "plugin event emission capped (loop guard)");
                return fail(HostError::Limit(format!(
                    "this contact already has {n} `{kind}` events in the last minute; a plugin may not add more \
                     (the cap of {MAX_EMITTED_PER_MINUTE} stops events that re-trigger their own plugin)"
                )));
            }
            Ok(_) => {}
            Err(e) => return fail(unavailable(e)),
        }
        let mut props = convert::properties_from_wit(properties);
        props.insert("emitted_by".into(), store::Value::Text(scope.install_id.clone()));
        let event = store::NewEvent {
            contact_id: Some(contact_id),
            email: None,
            kind,
            occurred_at: Some(scope.now),
            properties: props,
            idempotency_key: None,
        };
        match scope.store.insert_events(&scope.tenant_id, vec![event]).await {
            Ok(events) => match events.into_iter().next() {
                Some(e) => ok(e.id),
                None => fail(HostError::NotFound),
            },
            Err(store::StoreError::UnknownContact(_)) => fail(HostError::NotFound),
            Err(e) => fail(unavailable(e)),
        }
    }
}

/// In test mode writes are skipped, but a write to a contact that does not
/// exist must still fail as it would for real.
async fn exists_in_tenant(scope: &CallScope, contact_id: &str) -> wasmtime::Result<Result<(), HostError>> {
    if scope.test_mode && scope.test_contact.as_deref() == Some(contact_id) {
        return ok(());
    }
    match scope.store.get_contact(&scope.tenant_id, contact_id).await {
        Ok(Some(_)) => ok(()),
        Ok(None) => fail(HostError::NotFound),
        Err(e) => fail(unavailable(e)),
    }
}

impl state::Host for HostState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, HostError>> {
        let scope = enter!(self, Need::State);
        match scope.store.state_get(&scope.tenant_id, &scope.install_id, &key).await {
            Ok(v) => ok(v),
            Err(e) => fail(unavailable(e)),
        }
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<Result<(), HostError>> {
        let scope = enter!(self, Need::State);
        if key.len() > MAX_STATE_KEY || value.len() > MAX_STATE_VALUE {
            return fail(HostError::Invalid(format!(
                "state keys are at most {MAX_STATE_KEY} bytes and values at most {MAX_STATE_VALUE} bytes"
            )));
        }
        if scope.test_mode {
            return ok(());
        }
        match scope.store.state_set(&scope.tenant_id, &scope.install_id, &key, &value).await {
            Ok(()) => ok(()),
            Err(e) => fail(unavailable(e)),
        }
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<(), HostError>> {
        let scope = enter!(self, Need::State);
        if scope.test_mode {
            return ok(());
        }
        match scope.store.state_delete(&scope.tenant_id, &scope.install_id, &key).await {
            Ok(_) => ok(()),
            Err(e) => fail(unavailable(e)),
        }
    }
}

impl log::Host for HostState {
    async fn write(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        self.host_calls += 1;
        if self.logs.len() as u32 >= self.limits.log_lines || self.host_calls > self.limits.host_calls {
            self.logs_dropped += 1;
            return Ok(());
        }
        let mut message = message;
        if message.len() > MAX_LOG_LINE {
            let mut cut = MAX_LOG_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        let level = match level {
            log::Level::Debug => "debug",
            log::Level::Info => "info",
            log::Level::Warn => "warn",
            log::Level::Error => "error",
        };
        let install = self.scope.as_ref().map(|s| s.install_id.as_str()).unwrap_or("-");
        tracing::debug!(target: "cairn::plugin", install, level, "{message}");
        self.logs.push(LogLine { level, message });
        Ok(())
    }
}

impl http::Host for HostState {
    async fn send(&mut self, request: http::Request) -> wasmtime::Result<Result<http::Response, HostError>> {
        let scope = enter!(self, Need::Http);
        if scope.test_mode {
            // A dry run must not reach the outside world.
            return ok(http::Response { status: 200, headers: Vec::new(), body: b"{\"test_mode\":true}".to_vec() });
        }
        let timeout = self.limits.deadline;
        let result = scope
            .egress
            .send(&scope.grants, &request.method, &request.url, &request.headers, request.body, timeout)
            .await;
        match result {
            Ok(r) => ok(http::Response { status: r.status, headers: r.headers, body: r.body }),
            Err(EgressError::Invalid(m)) => fail(HostError::Invalid(m)),
            Err(EgressError::Denied(m)) => {
                tracing::info!(install = %scope.install_id, url = %request.url, "outbound request refused: {m}");
                fail(HostError::Denied(m))
            }
            Err(EgressError::Unavailable(m)) => fail(HostError::Unavailable(m)),
        }
    }
}
