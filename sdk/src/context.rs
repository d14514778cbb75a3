//! [`Context`]: what a plugin call can reach besides its arguments.
//!
//! Every host service goes through the [`Host`] trait. Inside Cairn it is the
//! component's WIT imports; under `cargo test` it is
//! [`crate::testkit::TestHost`], an in-memory store. Plugin code only sees
//! `Context`, so the same code runs in both.

use crate::types::{Contact, Event, HostError, Properties, Timestamp};

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Fine detail.
    Debug,
    /// Normal operation.
    Info,
    /// Recovered surprise.
    Warn,
    /// Failure.
    Error,
}

/// A task to create.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    /// The contact it is about.
    pub contact_id: String,
    /// Title.
    pub title: String,
    /// Assignee; the contact's owner when `None`.
    pub assignee: Option<String>,
    /// Due time.
    pub due_at: Option<Timestamp>,
    /// Deduplicates retries.
    pub idempotency_key: Option<String>,
}

/// An outbound HTTP request.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpRequest {
    /// Method.
    pub method: String,
    /// Absolute URL.
    pub url: String,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

/// An HTTP response.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

/// The host services behind a [`Context`]. Plugin authors use `Context`; this
/// trait is public so test doubles can be written.
#[allow(missing_docs)]
pub trait Host {
    fn get_contact(&self, id: &str) -> Result<Contact, HostError>;
    fn find_contact_by_email(&self, email: &str) -> Result<Option<Contact>, HostError>;
    fn count_events(&self, contact_id: &str, kind: &str, since: Timestamp) -> Result<u32, HostError>;
    fn recent_events(
        &self,
        contact_id: &str,
        kinds: &[String],
        since: Timestamp,
        limit: u32,
    ) -> Result<Vec<Event>, HostError>;
    fn set_properties(&self, contact_id: &str, properties: &Properties) -> Result<(), HostError>;
    fn add_tag(&self, contact_id: &str, tag: &str) -> Result<(), HostError>;
    fn remove_tag(&self, contact_id: &str, tag: &str) -> Result<(), HostError>;
    fn create_task(&self, task: &NewTask) -> Result<String, HostError>;
    fn add_note(&self, contact_id: &str, body: &str) -> Result<String, HostError>;
    fn emit_event(&self, contact_id: &str, kind: &str, properties: &Properties) -> Result<String, HostError>;
    fn state_get(&self, key: &str) -> Result<Option<Vec<u8>>, HostError>;
    fn state_set(&self, key: &str, value: &[u8]) -> Result<(), HostError>;
    fn state_delete(&self, key: &str) -> Result<(), HostError>;
    fn log(&self, level: LogLevel, message: &str);
    fn http_send(&self, request: &HttpRequest) -> Result<HttpResponse, HostError>;
}

/// The handle every plugin call receives.
pub struct Context<'h> {
    /// The install being invoked.
    pub install_id: String,
    /// This invocation's id.
    pub invocation_id: String,
    /// The host's clock at the start of the call (use it, not the system clock).
    pub now: Timestamp,
    /// True in a dry run: cause no effects outside Cairn.
    pub test_mode: bool,
    host: &'h dyn Host,
}

impl<'h> Context<'h> {
    /// A context over a host (the SDK builds it; tests may too).
    pub fn new(host: &'h dyn Host, install_id: &str, invocation_id: &str, now: Timestamp, test_mode: bool) -> Self {
        Context { install_id: install_id.into(), invocation_id: invocation_id.into(), now, test_mode, host }
    }

    /// Fetch a contact of this tenant (needs `store-read`).
    pub fn get_contact(&self, id: &str) -> Result<Contact, HostError> {
        self.host.get_contact(id)
    }
    /// Find a contact by email (needs `store-read`).
    pub fn find_contact_by_email(&self, email: &str) -> Result<Option<Contact>, HostError> {
        self.host.find_contact_by_email(email)
    }
    /// Count a contact's events of a kind since a time (needs `store-read`).
    pub fn count_events(&self, contact_id: &str, kind: &str, since: Timestamp) -> Result<u32, HostError> {
        self.host.count_events(contact_id, kind, since)
    }
    /// Recent events, newest first (needs `store-read`).
    pub fn recent_events(
        &self,
        contact_id: &str,
        kinds: &[String],
        since: Timestamp,
        limit: u32,
    ) -> Result<Vec<Event>, HostError> {
        self.host.recent_events(contact_id, kinds, since, limit)
    }
    /// Set custom properties (needs `store-write`).
    pub fn set_properties(&self, contact_id: &str, properties: &Properties) -> Result<(), HostError> {
        self.host.set_properties(contact_id, properties)
    }
    /// Add a tag (needs `store-write`).
    pub fn add_tag(&self, contact_id: &str, tag: &str) -> Result<(), HostError> {
        self.host.add_tag(contact_id, tag)
    }
    /// Remove a tag (needs `store-write`).
    pub fn remove_tag(&self, contact_id: &str, tag: &str) -> Result<(), HostError> {
        self.host.remove_tag(contact_id, tag)
    }
    /// Create a task, returning its id (needs `store-write`).
    pub fn create_task(&self, task: &NewTask) -> Result<String, HostError> {
        self.host.create_task(task)
    }
    /// Add a note, returning its id (needs `store-write`).
    pub fn add_note(&self, contact_id: &str, body: &str) -> Result<String, HostError> {
        self.host.add_note(contact_id, body)
    }
    /// Emit an event for a contact (needs `store-write`).
    pub fn emit_event(&self, contact_id: &str, kind: &str, properties: &Properties) -> Result<String, HostError> {
        self.host.emit_event(contact_id, kind, properties)
    }
    /// Read the install's state (needs `state`).
    pub fn state_get(&self, key: &str) -> Result<Option<Vec<u8>>, HostError> {
        self.host.state_get(key)
    }
    /// Write the install's state (needs `state`).
    pub fn state_set(&self, key: &str, value: &[u8]) -> Result<(), HostError> {
        self.host.state_set(key, value)
    }
    /// Delete from the install's state (needs `state`).
    pub fn state_delete(&self, key: &str) -> Result<(), HostError> {
        self.host.state_delete(key)
    }
    /// Log a line.
    pub fn log(&self, level: LogLevel, message: &str) {
        self.host.log(level, message)
    }
    /// Send an HTTP request to a granted host.
    pub fn http_send(&self, request: &HttpRequest) -> Result<HttpResponse, HostError> {
        self.host.http_send(request)
    }
}
