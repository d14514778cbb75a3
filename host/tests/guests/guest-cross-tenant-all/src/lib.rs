//! Attack: one action that turns every store import and every state function
//! against another tenant's data. Its config carries tenant A's ids (the test
//! installs it in tenant B): a contact id and email, a tag and an event kind
//! that contact has, a task id and that task's idempotency key, the id of one
//! of A's installs and a state key that install wrote.
//!
//! The host must scope every import to the tenant (and state to the install)
//! of the call, so each probe comes back as if A's records did not exist:
//! `not-found` (never `denied`, which would confirm the id exists elsewhere),
//! `none`, `0` or `empty`. The action returns one output per probe, named
//! `<import>` or `<import>.<variant>`, with what it saw; anything it found is
//! written out in full, so a leak shows in the recorded output.
//!
//! A second mode, `plant`, is what tenant A runs with its own install of the
//! same plugin: it writes a state key and a note on its own contact the first
//! time, and reports the stored value on later calls (there is no API that
//! reads an install's state, so this is how the test reads it back).
//!
//! ## Layout
//! - [`Config`]: the mode and A's ids.
//! - [`attack`]: the probes, each import in turn; a few controls on B's own
//!   contact show the grants work, so a `not-found` means "not yours".
//! - [`plant`]: tenant A's side.

use cairn_sdk::prelude::*;

/// What the test passes.
#[derive(serde::Deserialize)]
struct Config {
    /// `attack` (tenant B) or `plant` (tenant A).
    mode: String,
    /// The state key: A's key in an attack, the key to write when planting.
    state_key: String,
    /// Plant: the value to write.
    #[serde(default)]
    state_value: String,
    /// Plant: the body of the note on the contact of the run.
    #[serde(default)]
    note: String,
    /// Attack: A's contact.
    #[serde(default)]
    contact_id: String,
    /// Attack: that contact's email.
    #[serde(default)]
    email: String,
    /// Attack: a tag that contact has.
    #[serde(default)]
    tag: String,
    /// Attack: an event kind that contact has events of.
    #[serde(default)]
    event_kind: String,
    /// Attack: A's task on that contact.
    #[serde(default)]
    task_id: String,
    /// Attack: the idempotency key of that task.
    #[serde(default)]
    task_key: String,
    /// Attack: the install of A's that wrote `state_key`.
    #[serde(default)]
    install_id: String,
}

struct Guest;

impl Plugin for Guest {
    type Config = Config;

    fn describe() -> Description {
        let text = serde_json::json!({"type": "string"});
        Description::new("guest-cross-tenant-all", "0.1.0")
            .summary("hostile test guest: every store and state import against another tenant's ids")
            .kind(Kind::Action)
            .capability(Capability::StoreRead)
            .capability(Capability::StoreWrite)
            .capability(Capability::State)
            .config_schema(serde_json::json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["mode", "state_key"],
                "properties": {
                    "mode": {"enum": ["attack", "plant"]},
                    "state_key": text, "state_value": text, "note": text,
                    "contact_id": text, "email": text, "tag": text, "event_kind": text,
                    "task_id": text, "task_key": text, "install_id": text,
                }
            }))
    }
}

impl Action for Guest {
    fn execute(ctx: &Context, config: &Config, input: &ActionInput) -> Result<Outputs, PluginError> {
        match config.mode.as_str() {
            "plant" => plant(ctx, config, input),
            _ => Ok(attack(ctx, config, input)),
        }
    }
}

/// Tenant A: write the state key and a note once; report the stored value.
fn plant(ctx: &Context, config: &Config, input: &ActionInput) -> Result<Outputs, PluginError> {
    let mut out = Outputs::new();
    match ctx.state_get(&config.state_key)? {
        None => {
            ctx.state_set(&config.state_key, config.state_value.as_bytes())?;
            let note = ctx.add_note(&input.contact.id, &config.note)?;
            out.insert("planted".into(), "yes".into());
            out.insert("note_id".into(), note.into());
        }
        Some(value) => {
            out.insert("planted".into(), "no".into());
            out.insert("state_value".into(), String::from_utf8_lossy(&value).into_owned().into());
        }
    }
    Ok(out)
}

/// How a host error reads in the outputs.
fn error(e: &HostError) -> String {
    match e {
        HostError::NotFound => "not-found".into(),
        HostError::Denied(m) => format!("denied: {m}"),
        HostError::Invalid(m) => format!("invalid: {m}"),
        HostError::Limit(m) => format!("limit: {m}"),
        HostError::Unavailable(m) => format!("unavailable: {m}"),
    }
}

fn done(r: Result<(), HostError>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(e) => error(&e),
    }
}

fn created(r: Result<String, HostError>) -> String {
    match r {
        Ok(id) => format!("created {id}"),
        Err(e) => error(&e),
    }
}

fn contact(r: Result<Option<Contact>, HostError>) -> String {
    match r {
        Ok(None) => "none".into(),
        Ok(Some(c)) => format!("found {c:?}"),
        Err(e) => error(&e),
    }
}

fn count(r: Result<u32, HostError>) -> String {
    match r {
        Ok(n) => n.to_string(),
        Err(e) => error(&e),
    }
}

fn events(r: Result<Vec<Event>, HostError>) -> String {
    match r {
        Ok(list) if list.is_empty() => "empty".into(),
        Ok(list) => format!("found {list:?}"),
        Err(e) => error(&e),
    }
}

fn value(r: Result<Option<Vec<u8>>, HostError>) -> String {
    match r {
        Ok(None) => "none".into(),
        Ok(Some(v)) => format!("value {}", String::from_utf8_lossy(&v)),
        Err(e) => error(&e),
    }
}

/// Tenant B: every import against A's data; one output per probe.
fn attack(ctx: &Context, c: &Config, input: &ActionInput) -> Outputs {
    let mut out = Outputs::new();
    let mut probe = |name: &str, outcome: String| {
        out.insert(name.into(), outcome.into());
    };
    let a = c.contact_id.as_str();
    let own = input.contact.id.as_str();
    let kinds = vec![c.event_kind.clone()];

    // Controls: the grants work on B's own contact and state.
    probe("control.get_contact_own", done(ctx.get_contact(own).map(|_| ())));
    probe("control.state_set_own", done(ctx.state_set("control", b"own")));
    probe("control.state_get_own", value(ctx.state_get("control")));
    probe("control.state_delete_own", done(ctx.state_delete("control")));

    // store: reads.
    probe("get_contact", contact(ctx.get_contact(a).map(Some)));
    probe("get_contact.quoted", contact(ctx.get_contact(&format!("{a}' OR '1'='1")).map(Some)));
    probe("find_contact_by_email", contact(ctx.find_contact_by_email(&c.email)));
    probe("find_contact_by_email.case", contact(ctx.find_contact_by_email(&format!(" {} ", c.email.to_uppercase()))));
    probe("find_contact_by_email.wildcard", contact(ctx.find_contact_by_email("%")));
    probe("count_events", count(ctx.count_events(a, &c.event_kind, 0)));
    probe("count_events.any_kind", count(ctx.count_events(a, "", 0)));
    probe("recent_events", events(ctx.recent_events(a, &kinds, 0, 1000)));
    probe("recent_events.any_kind", events(ctx.recent_events(a, &[], 0, 1000)));

    // store: writes.
    let mut custom = Properties::new();
    custom.insert("region".into(), "pwned".into());
    custom.insert("planted_by_b".into(), "yes".into());
    probe("set_properties", done(ctx.set_properties(a, &custom)));
    let mut core = Properties::new();
    core.insert("email".into(), "pwned@b-tenant.test".into());
    core.insert("first_name".into(), "Pwned".into());
    core.insert("owner".into(), "mallory".into());
    probe("set_properties.core_fields", done(ctx.set_properties(a, &core)));
    let mut cleared = Properties::new();
    cleared.insert("region".into(), Value::Null);
    probe("set_properties.clear", done(ctx.set_properties(a, &cleared)));
    probe("add_tag", done(ctx.add_tag(a, "pwned")));
    probe("add_tag.existing", done(ctx.add_tag(a, &c.tag)));
    probe("remove_tag", done(ctx.remove_tag(a, &c.tag)));
    let task = |contact_id: &str, assignee: Option<&str>, key: Option<&str>| NewTask {
        contact_id: contact_id.into(),
        title: "pwned".into(),
        assignee: assignee.map(str::to_string),
        due_at: None,
        idempotency_key: key.map(str::to_string),
    };
    probe("create_task", created(ctx.create_task(&task(a, None, None))));
    probe("create_task.assignee", created(ctx.create_task(&task(a, Some("mallory"), None))));
    probe("create_task.a_key", created(ctx.create_task(&task(a, Some("mallory"), Some(&c.task_key)))));
    // A's key on B's own contact: a task of B's (or a dry run's stand-in),
    // never A's task coming back.
    let own_task = match ctx.create_task(&task(own, Some("mallory"), Some(&c.task_key))) {
        Ok(id) if id == c.task_id => format!("returned A's task {id}"),
        Ok(_) => "own task".into(),
        Err(e) => error(&e),
    };
    probe("create_task.a_key_own_contact", own_task);
    probe("add_note", created(ctx.add_note(a, "pwned")));
    probe("emit_event", created(ctx.emit_event(a, &c.event_kind, &Properties::new())));
    probe("emit_event.new_kind", created(ctx.emit_event(a, "pwned", &custom)));

    // state: A's key, bare and with A's install id in it.
    let key = c.state_key.as_str();
    probe("state_get", value(ctx.state_get(key)));
    probe("state_get.install_slash", value(ctx.state_get(&format!("{}/{key}", c.install_id))));
    probe("state_get.install_colon", value(ctx.state_get(&format!("{}:{key}", c.install_id))));
    probe("state_get.install_id", value(ctx.state_get(&c.install_id)));
    probe("state_get.wildcard", value(ctx.state_get("%")));
    probe("state_delete", done(ctx.state_delete(key)));
    probe("state_get.after_delete", value(ctx.state_get(key)));
    // Writing A's key writes B's own entry (kept only outside a dry run);
    // B then removes it again.
    probe("state_set", done(ctx.state_set(key, b"pwned by B")));
    probe("state_get.after_set", value(ctx.state_get(key)));
    probe("state_delete.after_set", done(ctx.state_delete(key)));
    out
}

cairn_sdk::register_plugin!(Guest: action);
