//! Run a plugin natively under `cargo test`, against an in-memory store.
//!
//! [`TestHost`] implements [`Host`] with maps instead of a database and
//! records every effect (tags, tasks, notes, emitted events, HTTP requests,
//! log lines) so a test can assert on it. The `run_*` helpers build a call the
//! way Cairn does, config JSON included, so a config the plugin cannot read
//! fails here first.
//!
//! ```ignore
//! let host = TestHost::new().with_contact(Contact::new("c1"));
//! let score = testkit::run_scorer::<MyScorer>(&host, json!({"points": {}}), "c1").unwrap();
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::context::{Context, Host, HttpRequest, HttpResponse, LogLevel, NewTask};
use crate::glue::parse_config;
use crate::kinds::{Action, Channel, Scorer, Trigger};
use crate::types::*;

/// A task recorded by [`TestHost`].
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedTask {
    /// Its id.
    pub id: String,
    /// What the plugin asked for.
    pub task: NewTask,
}

type HttpResponder = Box<dyn Fn(&HttpRequest) -> Result<HttpResponse, HostError>>;

/// An in-memory [`Host`] that records effects.
pub struct TestHost {
    contacts: RefCell<BTreeMap<String, Contact>>,
    events: RefCell<Vec<Event>>,
    tasks: RefCell<Vec<RecordedTask>>,
    notes: RefCell<Vec<(String, String)>>,
    emitted: RefCell<Vec<Event>>,
    state: RefCell<BTreeMap<String, Vec<u8>>>,
    logs: RefCell<Vec<(LogLevel, String)>>,
    http_requests: RefCell<Vec<HttpRequest>>,
    http: HttpResponder,
    /// Epoch ms the `run_*` helpers use as "now".
    pub now: Timestamp,
}

impl Default for TestHost {
    fn default() -> Self {
        Self::new()
    }
}

impl TestHost {
    /// An empty store; HTTP answers 200 with an empty body; now = 2026-01-01.
    pub fn new() -> Self {
        TestHost {
            contacts: RefCell::default(),
            events: RefCell::default(),
            tasks: RefCell::default(),
            notes: RefCell::default(),
            emitted: RefCell::default(),
            state: RefCell::default(),
            logs: RefCell::default(),
            http_requests: RefCell::default(),
            http: Box::new(|_| Ok(HttpResponse { status: 200, headers: Vec::new(), body: Vec::new() })),
            now: 1_767_225_600_000,
        }
    }

    /// Builder: add a contact.
    pub fn with_contact(self, contact: Contact) -> Self {
        self.contacts.borrow_mut().insert(contact.id.clone(), contact);
        self
    }

    /// Builder: add an event to the history.
    pub fn with_event(self, event: Event) -> Self {
        self.events.borrow_mut().push(event);
        self
    }

    /// Builder: set "now".
    pub fn at(mut self, now: Timestamp) -> Self {
        self.now = now;
        self
    }

    /// Builder: answer outbound HTTP with this function.
    pub fn with_http(mut self, responder: impl Fn(&HttpRequest) -> Result<HttpResponse, HostError> + 'static) -> Self {
        self.http = Box::new(responder);
        self
    }

    /// A contact as it is now (after the plugin's writes).
    pub fn contact(&self, id: &str) -> Option<Contact> {
        self.contacts.borrow().get(id).cloned()
    }
    /// Tasks created so far.
    pub fn tasks(&self) -> Vec<RecordedTask> {
        self.tasks.borrow().clone()
    }
    /// Notes added so far, as (contact id, body).
    pub fn notes(&self) -> Vec<(String, String)> {
        self.notes.borrow().clone()
    }
    /// Events emitted by the plugin.
    pub fn emitted(&self) -> Vec<Event> {
        self.emitted.borrow().clone()
    }
    /// Outbound HTTP requests sent.
    pub fn http_requests(&self) -> Vec<HttpRequest> {
        self.http_requests.borrow().clone()
    }
    /// Log lines written.
    pub fn logs(&self) -> Vec<(LogLevel, String)> {
        self.logs.borrow().clone()
    }

    fn context(&self) -> Context<'_> {
        Context::new(self, "test-install", "test-invocation", self.now, false)
    }

    fn contact_or_missing(&self, id: &str) -> Result<Contact, PluginError> {
        self.contact(id).ok_or_else(|| PluginError::permanent(format!("test host has no contact {id}")))
    }

    /// The events a plugin declared it reads, newest first, as Cairn builds them.
    fn history_for(&self, contact_id: &str, reads: &InputQuery) -> Vec<Event> {
        if reads.event_window_days == 0 {
            return Vec::new();
        }
        let since = self.now - i64::from(reads.event_window_days) * DAY_MS;
        let kinds = reads.event_kinds.clone();
        self.recent_events(contact_id, &kinds, since, reads.max_events.max(1)).unwrap_or_default()
    }
}

impl Host for TestHost {
    fn get_contact(&self, id: &str) -> Result<Contact, HostError> {
        self.contact(id).ok_or(HostError::NotFound)
    }
    fn find_contact_by_email(&self, email: &str) -> Result<Option<Contact>, HostError> {
        Ok(self.contacts.borrow().values().find(|c| c.email.as_deref() == Some(email)).cloned())
    }
    fn count_events(&self, contact_id: &str, kind: &str, since: Timestamp) -> Result<u32, HostError> {
        let events = self.events.borrow();
        let n =
            events.iter().filter(|e| e.contact_id == contact_id && e.kind == kind && e.occurred_at >= since).count();
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }
    fn recent_events(
        &self,
        contact_id: &str,
        kinds: &[String],
        since: Timestamp,
        limit: u32,
    ) -> Result<Vec<Event>, HostError> {
        let mut found: Vec<Event> = self
            .events
            .borrow()
            .iter()
            .filter(|e| e.contact_id == contact_id && e.occurred_at >= since)
            .filter(|e| kinds.is_empty() || kinds.contains(&e.kind))
            .cloned()
            .collect();
        found.sort_by_key(|e| std::cmp::Reverse(e.occurred_at));
        found.truncate(limit as usize);
        Ok(found)
    }
    fn set_properties(&self, contact_id: &str, properties: &Properties) -> Result<(), HostError> {
        let mut contacts = self.contacts.borrow_mut();
        let contact = contacts.get_mut(contact_id).ok_or(HostError::NotFound)?;
        for (name, value) in properties {
            // Core field names write the contact's own fields, as in Cairn.
            let text = value.as_text().map(str::to_string);
            match name.as_str() {
                "owner" => contact.owner = text,
                "first_name" => contact.first_name = text,
                "last_name" => contact.last_name = text,
                "phone" => contact.phone = text,
                "email" => contact.email = text,
                "lifecycle_stage" => {
                    if let Some(stage) = text {
                        contact.lifecycle_stage = stage;
                    }
                }
                _ if *value == Value::Null => {
                    contact.properties.remove(name);
                }
                _ => {
                    contact.properties.insert(name.clone(), value.clone());
                }
            }
        }
        Ok(())
    }
    fn add_tag(&self, contact_id: &str, tag: &str) -> Result<(), HostError> {
        let mut contacts = self.contacts.borrow_mut();
        let contact = contacts.get_mut(contact_id).ok_or(HostError::NotFound)?;
        if !contact.tags.iter().any(|t| t == tag) {
            contact.tags.push(tag.to_string());
        }
        Ok(())
    }
    fn remove_tag(&self, contact_id: &str, tag: &str) -> Result<(), HostError> {
        let mut contacts = self.contacts.borrow_mut();
        let contact = contacts.get_mut(contact_id).ok_or(HostError::NotFound)?;
        contact.tags.retain(|t| t != tag);
        Ok(())
    }
    fn create_task(&self, task: &NewTask) -> Result<String, HostError> {
        self.get_contact(&task.contact_id)?;
        let mut tasks = self.tasks.borrow_mut();
        if let Some(key) = &task.idempotency_key
            && let Some(existing) = tasks.iter().find(|t| t.task.idempotency_key.as_ref() == Some(key))
        {
            return Ok(existing.id.clone());
        }
        let id = format!("task-{}", tasks.len() + 1);
        tasks.push(RecordedTask { id: id.clone(), task: task.clone() });
        Ok(id)
    }
    fn add_note(&self, contact_id: &str, body: &str) -> Result<String, HostError> {
        self.get_contact(contact_id)?;
        let mut notes = self.notes.borrow_mut();
        notes.push((contact_id.to_string(), body.to_string()));
        Ok(format!("note-{}", notes.len()))
    }
    fn emit_event(&self, contact_id: &str, kind: &str, properties: &Properties) -> Result<String, HostError> {
        self.get_contact(contact_id)?;
        let mut emitted = self.emitted.borrow_mut();
        let id = format!("emitted-{}", emitted.len() + 1);
        emitted.push(Event {
            id: id.clone(),
            contact_id: contact_id.into(),
            kind: kind.into(),
            occurred_at: self.now,
            properties: properties.clone(),
        });
        Ok(id)
    }
    fn state_get(&self, key: &str) -> Result<Option<Vec<u8>>, HostError> {
        Ok(self.state.borrow().get(key).cloned())
    }
    fn state_set(&self, key: &str, value: &[u8]) -> Result<(), HostError> {
        self.state.borrow_mut().insert(key.to_string(), value.to_vec());
        Ok(())
    }
    fn state_delete(&self, key: &str) -> Result<(), HostError> {
        self.state.borrow_mut().remove(key);
        Ok(())
    }
    fn log(&self, level: LogLevel, message: &str) {
        self.logs.borrow_mut().push((level, message.to_string()));
    }
    fn http_send(&self, request: &HttpRequest) -> Result<HttpResponse, HostError> {
        self.http_requests.borrow_mut().push(request.clone());
        (self.http)(request)
    }
}

/// Score a contact of `host` as Cairn would: config from JSON, events from
/// the scorer's declared `reads`.
pub fn run_scorer<T: Scorer>(
    host: &TestHost,
    config: serde_json::Value,
    contact_id: &str,
) -> Result<Score, PluginError> {
    let config = parse_config::<T>(&config.to_string())?;
    let contact = host.contact_or_missing(contact_id)?;
    let history = host.history_for(contact_id, &T::describe().reads);
    T::score(&host.context(), &config, &contact, &history)
}

/// Offer an event to a trigger as Cairn would (the event is added to the
/// host's history first, like the pipeline stores it before triggers run).
pub fn run_trigger<T: Trigger>(
    host: &TestHost,
    config: serde_json::Value,
    event: Event,
) -> Result<Vec<Enrollment>, PluginError> {
    let config = parse_config::<T>(&config.to_string())?;
    host.events.borrow_mut().push(event.clone());
    let contact = host.contact_or_missing(&event.contact_id)?;
    let history = host.history_for(&event.contact_id, &T::describe().reads);
    T::on_event(&host.context(), &config, &contact, &event, &history)
}

/// Run an action step for a contact of `host`.
pub fn run_action<T: Action>(
    host: &TestHost,
    config: serde_json::Value,
    contact_id: &str,
    idempotency_key: &str,
) -> Result<Outputs, PluginError> {
    let config = parse_config::<T>(&config.to_string())?;
    let input = ActionInput {
        contact: host.contact_or_missing(contact_id)?,
        trigger_event: None,
        idempotency_key: idempotency_key.to_string(),
    };
    T::execute(&host.context(), &config, &input)
}

/// Send a message through a channel.
pub fn run_send<T: Channel>(
    host: &TestHost,
    config: serde_json::Value,
    message: &Message,
) -> Result<Receipt, PluginError> {
    let config = parse_config::<T>(&config.to_string())?;
    T::send(&host.context(), &config, message)
}
