//! The generated WIT bindings and the glue between them and the SDK's own
//! types. Hidden: plugin authors never touch generated code, so the public
//! API does not change when the bindings do.

use crate::context::{Context, Host, HttpRequest, HttpResponse, LogLevel, NewTask};
use crate::kinds::{Action, Channel, Plugin, Scorer, Trigger};
use crate::types::{self as sdk, HostError, PluginError, Properties};

/// Bindings for the `cairn:health/plugin` world: every kind of
/// `cairn:plugin@0.1.0` exported, plus the optional self-test.
#[allow(missing_docs, unsafe_code, clippy::all)]
pub mod wit {
    wit_bindgen::generate!({
        world: "cairn:health/plugin",
        path: ["../wit/0.1.0", "../wit/health/0.1.0"],
        generate_all,
        pub_export_macro: true,
        export_macro_name: "__export_cairn_plugin",
        default_bindings_module: "cairn_sdk::glue::wit",
    });
}

use wit::cairn::plugin as w;
use wit::exports::cairn::plugin as x;

// ---- conversions: WIT -> SDK -------------------------------------------------

fn value_from_wit(v: w::types::Value) -> sdk::Value {
    match v {
        w::types::Value::Null => sdk::Value::Null,
        w::types::Value::Text(s) => sdk::Value::Text(s),
        w::types::Value::Number(n) => sdk::Value::Number(n),
        w::types::Value::Boolean(b) => sdk::Value::Bool(b),
        w::types::Value::Timestamp(t) => sdk::Value::Timestamp(t),
        w::types::Value::TextList(l) => sdk::Value::TextList(l),
    }
}

fn properties_from_wit(props: Vec<w::types::Property>) -> Properties {
    props.into_iter().map(|p| (p.name, value_from_wit(p.value))).collect()
}

/// A WIT contact as an SDK contact.
pub fn contact_from_wit(c: w::types::Contact) -> sdk::Contact {
    sdk::Contact {
        id: c.id,
        email: c.email,
        phone: c.phone,
        first_name: c.first_name,
        last_name: c.last_name,
        owner: c.owner,
        lifecycle_stage: c.lifecycle_stage,
        score: c.score,
        tags: c.tags,
        properties: properties_from_wit(c.properties),
    }
}

/// A WIT event as an SDK event.
pub fn event_from_wit(e: w::types::Event) -> sdk::Event {
    sdk::Event {
        id: e.id,
        contact_id: e.contact_id,
        kind: e.kind,
        occurred_at: e.occurred_at,
        properties: properties_from_wit(e.properties),
    }
}

fn host_error_from_wit(e: w::types::HostError) -> HostError {
    match e {
        w::types::HostError::Denied(m) => HostError::Denied(m),
        w::types::HostError::NotFound => HostError::NotFound,
        w::types::HostError::Invalid(m) => HostError::Invalid(m),
        w::types::HostError::Limit(m) => HostError::Limit(m),
        w::types::HostError::Unavailable(m) => HostError::Unavailable(m),
    }
}

// ---- conversions: SDK -> WIT -------------------------------------------------

fn value_to_wit(v: &sdk::Value) -> w::types::Value {
    match v {
        sdk::Value::Null => w::types::Value::Null,
        sdk::Value::Text(s) => w::types::Value::Text(s.clone()),
        sdk::Value::Number(n) => w::types::Value::Number(*n),
        sdk::Value::Bool(b) => w::types::Value::Boolean(*b),
        sdk::Value::Timestamp(t) => w::types::Value::Timestamp(*t),
        sdk::Value::TextList(l) => w::types::Value::TextList(l.clone()),
    }
}

fn properties_to_wit(props: &Properties) -> Vec<w::types::Property> {
    props.iter().map(|(k, v)| w::types::Property { name: k.clone(), value: value_to_wit(v) }).collect()
}

fn plugin_error_to_wit(e: PluginError) -> w::types::PluginError {
    w::types::PluginError { message: e.message, retryable: e.retryable }
}

fn enrollments_to_wit(list: Vec<sdk::Enrollment>) -> Vec<x::trigger::Enrollment> {
    list.into_iter().map(|e| x::trigger::Enrollment { contact_id: e.contact_id, reason: e.reason }).collect()
}

/// The SDK description as the WIT record.
pub fn description_to_wit(d: sdk::Description) -> w::types::Description {
    w::types::Description {
        name: d.name,
        version: d.version,
        summary: d.summary,
        kinds: d
            .kinds
            .into_iter()
            .map(|k| match k {
                sdk::Kind::Trigger => w::types::PluginKind::Trigger,
                sdk::Kind::Action => w::types::PluginKind::Action,
                sdk::Kind::Scorer => w::types::PluginKind::Scorer,
                sdk::Kind::Channel => w::types::PluginKind::Channel,
            })
            .collect(),
        config_schema: d.config_schema.to_string(),
        capabilities: d
            .capabilities
            .into_iter()
            .map(|c| match c {
                sdk::Capability::StoreRead => w::types::Capability::StoreRead,
                sdk::Capability::StoreWrite => w::types::Capability::StoreWrite,
                sdk::Capability::Http(h) => w::types::Capability::Http(h),
                sdk::Capability::State => w::types::Capability::State,
            })
            .collect(),
        reads: w::types::InputQuery {
            contact_properties: d.reads.contact_properties,
            event_kinds: d.reads.event_kinds,
            event_window_days: d.reads.event_window_days,
            max_events: d.reads.max_events,
        },
    }
}

// ---- the Host implementation over WIT imports ---------------------------------

/// [`Host`] backed by the component's imports.
struct WitHost;

impl Host for WitHost {
    fn get_contact(&self, id: &str) -> Result<sdk::Contact, HostError> {
        w::store::get_contact(id).map(contact_from_wit).map_err(host_error_from_wit)
    }
    fn find_contact_by_email(&self, email: &str) -> Result<Option<sdk::Contact>, HostError> {
        w::store::find_contact_by_email(email).map(|c| c.map(contact_from_wit)).map_err(host_error_from_wit)
    }
    fn count_events(&self, contact_id: &str, kind: &str, since: sdk::Timestamp) -> Result<u32, HostError> {
        w::store::count_events(contact_id, kind, since).map_err(host_error_from_wit)
    }
    fn recent_events(
        &self,
        contact_id: &str,
        kinds: &[String],
        since: sdk::Timestamp,
        limit: u32,
    ) -> Result<Vec<sdk::Event>, HostError> {
        w::store::recent_events(contact_id, kinds, since, limit)
            .map(|events| events.into_iter().map(event_from_wit).collect())
            .map_err(host_error_from_wit)
    }
    fn set_properties(&self, contact_id: &str, properties: &Properties) -> Result<(), HostError> {
        w::store::set_properties(contact_id, &properties_to_wit(properties)).map_err(host_error_from_wit)
    }
    fn add_tag(&self, contact_id: &str, tag: &str) -> Result<(), HostError> {
        w::store::add_tag(contact_id, tag).map_err(host_error_from_wit)
    }
    fn remove_tag(&self, contact_id: &str, tag: &str) -> Result<(), HostError> {
        w::store::remove_tag(contact_id, tag).map_err(host_error_from_wit)
    }
    fn create_task(&self, task: &NewTask) -> Result<String, HostError> {
        w::store::create_task(&w::store::NewTask {
            contact_id: task.contact_id.clone(),
            title: task.title.clone(),
            assignee: task.assignee.clone(),
            due_at: task.due_at,
            idempotency_key: task.idempotency_key.clone(),
        })
        .map_err(host_error_from_wit)
    }
    fn add_note(&self, contact_id: &str, body: &str) -> Result<String, HostError> {
        w::store::add_note(contact_id, body).map_err(host_error_from_wit)
    }
    fn emit_event(&self, contact_id: &str, kind: &str, properties: &Properties) -> Result<String, HostError> {
        w::store::emit_event(contact_id, kind, &properties_to_wit(properties)).map_err(host_error_from_wit)
    }
    fn state_get(&self, key: &str) -> Result<Option<Vec<u8>>, HostError> {
        w::state::get(key).map_err(host_error_from_wit)
    }
    fn state_set(&self, key: &str, value: &[u8]) -> Result<(), HostError> {
        w::state::set(key, value).map_err(host_error_from_wit)
    }
    fn state_delete(&self, key: &str) -> Result<(), HostError> {
        w::state::delete(key).map_err(host_error_from_wit)
    }
    fn log(&self, level: LogLevel, message: &str) {
        let level = match level {
            LogLevel::Debug => w::log::Level::Debug,
            LogLevel::Info => w::log::Level::Info,
            LogLevel::Warn => w::log::Level::Warn,
            LogLevel::Error => w::log::Level::Error,
        };
        w::log::write(level, message)
    }
    fn http_send(&self, request: &HttpRequest) -> Result<HttpResponse, HostError> {
        w::http::send(&w::http::Request {
            method: request.method.clone(),
            url: request.url.clone(),
            headers: request.headers.clone(),
            body: request.body.clone(),
        })
        .map(|r| HttpResponse { status: r.status, headers: r.headers, body: r.body })
        .map_err(host_error_from_wit)
    }
}

// ---- export glue, called by `register_plugin!` --------------------------------

/// Parse an install's config JSON into the plugin's config type. An empty
/// string means "no config", read as `{}`.
pub fn parse_config<T: Plugin>(config: &str) -> Result<T::Config, PluginError> {
    let text = if config.trim().is_empty() { "{}" } else { config };
    serde_json::from_str(text).map_err(|e| PluginError::permanent(format!("invalid config: {e}")))
}

fn context<'h>(host: &'h dyn Host, ctx: &w::types::CallContext) -> Context<'h> {
    Context::new(host, &ctx.install_id, &ctx.invocation_id, ctx.now, ctx.test_mode)
}

/// The error a component answers for a kind it does not implement.
pub fn unsupported(kind: &str) -> w::types::PluginError {
    w::types::PluginError { message: format!("this plugin does not implement the {kind} kind"), retryable: false }
}

/// `meta.describe`.
pub fn describe<T: Plugin>() -> w::types::Description {
    description_to_wit(T::describe())
}

/// `self-test.run`: the plugin's own checks (none by default).
pub fn self_test<T: Plugin>() -> Vec<wit::exports::cairn::health::self_test::Check> {
    T::self_test()
        .into_iter()
        .map(|c| wit::exports::cairn::health::self_test::Check { name: c.name, passed: c.passed, detail: c.detail })
        .collect()
}

/// `scorer.score`.
pub fn score<T: Scorer>(
    ctx: w::types::CallContext,
    config: String,
    contact: w::types::Contact,
    events: Vec<w::types::Event>,
) -> Result<x::scorer::ScoreResult, w::types::PluginError> {
    let run = || {
        let config = parse_config::<T>(&config)?;
        let contact = contact_from_wit(contact);
        let events: Vec<sdk::Event> = events.into_iter().map(event_from_wit).collect();
        T::score(&context(&WitHost, &ctx), &config, &contact, &events)
    };
    run().map(|s| x::scorer::ScoreResult { value: s.value, reasons: s.reasons }).map_err(plugin_error_to_wit)
}

/// `action.execute`.
pub fn execute<T: Action>(
    ctx: w::types::CallContext,
    config: String,
    input: x::action::ActionInput,
) -> Result<Vec<w::types::Property>, w::types::PluginError> {
    let run = || {
        let config = parse_config::<T>(&config)?;
        let input = sdk::ActionInput {
            contact: contact_from_wit(input.contact),
            trigger_event: input.trigger_event.map(event_from_wit),
            idempotency_key: input.idempotency_key,
        };
        T::execute(&context(&WitHost, &ctx), &config, &input)
    };
    run().map(|out| properties_to_wit(&out)).map_err(plugin_error_to_wit)
}

/// `trigger.on-event`.
pub fn on_event<T: Trigger>(
    ctx: w::types::CallContext,
    config: String,
    contact: w::types::Contact,
    event: w::types::Event,
    history: Vec<w::types::Event>,
) -> Result<Vec<x::trigger::Enrollment>, w::types::PluginError> {
    let run = || {
        let config = parse_config::<T>(&config)?;
        let history: Vec<sdk::Event> = history.into_iter().map(event_from_wit).collect();
        T::on_event(&context(&WitHost, &ctx), &config, &contact_from_wit(contact), &event_from_wit(event), &history)
    };
    run().map(enrollments_to_wit).map_err(plugin_error_to_wit)
}

/// `trigger.on-schedule`.
pub fn on_schedule<T: Trigger>(
    ctx: w::types::CallContext,
    config: String,
    now: i64,
) -> Result<Vec<x::trigger::Enrollment>, w::types::PluginError> {
    let run = || {
        let config = parse_config::<T>(&config)?;
        T::on_schedule(&context(&WitHost, &ctx), &config, now)
    };
    run().map(enrollments_to_wit).map_err(plugin_error_to_wit)
}

/// `channel.send`.
pub fn send<T: Channel>(
    ctx: w::types::CallContext,
    config: String,
    message: x::channel::Message,
) -> Result<x::channel::Receipt, w::types::PluginError> {
    let run = || {
        let config = parse_config::<T>(&config)?;
        let message = sdk::Message {
            contact: contact_from_wit(message.contact),
            subject: message.subject,
            body: message.body,
            properties: properties_from_wit(message.properties),
            idempotency_key: message.idempotency_key,
        };
        T::send(&context(&WitHost, &ctx), &config, &message)
    };
    run().map(|r| x::channel::Receipt { provider_id: r.provider_id, status: r.status }).map_err(plugin_error_to_wit)
}

/// `channel.parse-inbound`.
pub fn parse_inbound<T: Channel>(
    ctx: w::types::CallContext,
    config: String,
    request: x::channel::InboundRequest,
) -> Result<Vec<x::channel::InboundEvent>, w::types::PluginError> {
    let run = || {
        let config = parse_config::<T>(&config)?;
        let request = sdk::InboundRequest { path: request.path, headers: request.headers, body: request.body };
        T::parse_inbound(&context(&WitHost, &ctx), &config, &request)
    };
    run()
        .map(|events| {
            events
                .into_iter()
                .map(|e| x::channel::InboundEvent {
                    contact_id: e.contact_id,
                    email: e.email,
                    kind: e.kind,
                    properties: properties_to_wit(&e.properties),
                })
                .collect()
        })
        .map_err(plugin_error_to_wit)
}
