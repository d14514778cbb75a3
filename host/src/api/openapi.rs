//! The OpenAPI 3.1 document served at `/openapi.json`, written by hand next
//! to the routes it describes. Every route of [`crate::api::app`] is listed
//! here; the router test checks each documented path answers something other
//! than the fallback 404.

use serde_json::{Value, json};

fn error_responses() -> Value {
    json!({
        "400": {"$ref": "#/components/responses/Error"},
        "401": {"$ref": "#/components/responses/Error"},
        "403": {"$ref": "#/components/responses/Error"},
        "404": {"$ref": "#/components/responses/Error"},
        "413": {"$ref": "#/components/responses/Error"},
        "422": {"$ref": "#/components/responses/Error"},
        "503": {"$ref": "#/components/responses/Error"},
    })
}

fn op(summary: &str, ok: &str, body: Option<&str>) -> Value {
    let mut responses = error_responses();
    responses[ok] = json!({"description": "success", "content": {"application/json": {"schema": {"type": "object"}}}});
    let mut o = json!({"summary": summary, "security": [{"bearer": []}], "responses": responses});
    if let Some(schema) = body {
        o["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
    }
    o
}

/// `op` that may also answer 429 with `Retry-After`.
fn with_rate_limit(mut o: Value) -> Value {
    o["responses"]["429"] = json!({"$ref": "#/components/responses/Error"});
    o
}

/// `op` with a request body that may be left out.
fn op_optional_body(summary: &str, ok: &str, body: &str) -> Value {
    let mut o = op(summary, ok, Some(body));
    o["requestBody"]["required"] = json!(false);
    o
}

/// A DELETE: 204, or an error.
fn delete_op(summary: &str) -> Value {
    let mut responses = error_responses();
    responses["204"] = json!({"description": "deleted"});
    json!({"summary": summary, "security": [{"bearer": []}], "responses": responses})
}

/// `op` with query parameters `(name, type, required, description)`.
fn with_query(mut o: Value, params: &[(&str, &str, bool, &str)]) -> Value {
    o["parameters"] = params
        .iter()
        .map(|(name, ty, required, description)| {
            json!({"name": name, "in": "query", "required": required, "description": description, "schema": {"type": ty}})
        })
        .collect();
    o
}

const LIMIT: (&str, &str, bool, &str) = ("limit", "integer", false, "page size (default 100, at most 1000)");
const CURSOR: (&str, &str, bool, &str) = ("cursor", "string", false, "`next_cursor` of the previous page");

fn id_param() -> Value {
    json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}])
}

fn crud(name: &str, create_schema: &str, patch_schema: &str, filters: &[(&str, &str, bool, &str)]) -> (Value, Value) {
    let collection = json!({
        "get": with_query(op(&format!("List {name}"), "200", None), filters),
        "post": op(&format!("Create a {name} record"), "201", Some(create_schema)),
    });
    let item = json!({
        "parameters": id_param(),
        "get": op(&format!("Get a {name} record"), "200", None),
        "patch": op(&format!("Change a {name} record"), "200", Some(patch_schema)),
        "delete": delete_op(&format!("Delete a {name} record")),
    });
    (collection, item)
}

/// The document.
pub fn document() -> Value {
    let contact_filters = [
        ("email", "string", false, "exact email"),
        ("tag", "string", false, "has this tag"),
        ("lifecycle_stage", "string", false, "in this stage"),
        ("owner", "string", false, "owned by"),
        CURSOR,
        LIMIT,
    ];
    let company_filters = [CURSOR, LIMIT];
    let deal_filters = [
        ("stage", "string", false, "in this stage"),
        ("contact_id", "string", false, "of this contact"),
        ("company_id", "string", false, "of this company"),
        CURSOR,
        LIMIT,
    ];
    let task_filters = [
        ("contact_id", "string", false, "about this contact"),
        ("status", "string", false, "open or done"),
        CURSOR,
        LIMIT,
    ];
    let mut parts = [
        crud("contacts", "NewContact", "ContactPatch", &contact_filters),
        crud("companies", "NewCompany", "CompanyPatch", &company_filters),
        crud("deals", "NewDeal", "DealPatch", &deal_filters),
        crud("tasks", "NewTask", "TaskPatch", &task_filters),
    ];
    parts[3].0["post"]["responses"]["200"] =
        json!({"description": "a task with this `idempotency_key` exists already: that task"});
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Cairn", "version": env!("CARGO_PKG_VERSION"),
                 "description": "CRM automation host extended by sandboxed WebAssembly plugins."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {"Error": {"description": "an error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}},
            "schemas": schemas(),
        },
        "paths": paths(&parts),
    })
}

fn schemas() -> Value {
    let mut all = core_schemas();
    let nullable = |ty: &str| json!({"type": [ty, "null"]});
    let properties = json!({"$ref": "#/components/schemas/Properties"});
    all["NewCompany"] = json!({"type": "object", "additionalProperties": false, "required": ["name"], "properties": {
        "name": {"type": "string"}, "domain": {"type": "string"}, "properties": properties}});
    all["CompanyPatch"] = json!({"type": "object", "additionalProperties": false, "properties": {
        "name": {"type": "string"}, "domain": nullable("string"), "properties": properties}});
    all["NewDeal"] = json!({"type": "object", "additionalProperties": false, "required": ["name"], "properties": {
        "name": {"type": "string"}, "stage": {"type": "string"}, "amount": {"type": "number"},
        "contact_id": {"type": "string"}, "company_id": {"type": "string"}, "properties": properties}});
    all["DealPatch"] = json!({"type": "object", "additionalProperties": false, "properties": {
        "name": {"type": "string"}, "stage": {"type": "string"}, "amount": nullable("number"),
        "contact_id": nullable("string"), "company_id": nullable("string"), "properties": properties}});
    all
}

fn core_schemas() -> Value {
    json!({
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
            "code": {"type": "string"}, "message": {"type": "string"},
            "details": {"type": "array", "items": {"type": "object", "properties": {"field": {"type": "string"}, "message": {"type": "string"}}}}}}}},
        "Value": {"description": "null, boolean, number, string, list of strings, or {\"$timestamp\": ms}"},
        "Properties": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/Value"}},
        "NewContact": {"type": "object", "additionalProperties": false, "properties": {
            "email": {"type": "string"}, "phone": {"type": "string"}, "first_name": {"type": "string"}, "last_name": {"type": "string"},
            "owner": {"type": "string"}, "lifecycle_stage": {"type": "string"}, "score": {"type": "number"},
            "tags": {"type": "array", "items": {"type": "string"}}, "properties": {"$ref": "#/components/schemas/Properties"}, "company_id": {"type": "string"}}},
        "ContactPatch": {"type": "object", "additionalProperties": false, "properties": {
            "email": {"type": ["string", "null"]}, "phone": {"type": ["string", "null"]}, "first_name": {"type": ["string", "null"]},
            "last_name": {"type": ["string", "null"]}, "owner": {"type": ["string", "null"]}, "company_id": {"type": ["string", "null"]},
            "lifecycle_stage": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}}, "properties": {"$ref": "#/components/schemas/Properties"}}},
                        "NewTask": {"type": "object", "additionalProperties": false, "required": ["title"], "properties": {
            "contact_id": {"type": "string"}, "title": {"type": "string"}, "assignee": {"type": "string"}, "due_at": {"type": "integer"}, "idempotency_key": {"type": "string"}}},
        "TaskPatch": {"type": "object", "additionalProperties": false, "properties": {
            "title": {"type": "string"}, "assignee": {"type": ["string", "null"]}, "due_at": {"type": ["integer", "null"]}, "status": {"enum": ["open", "done"]}}},
        "NewEvent": {"type": "object", "additionalProperties": false, "required": ["kind"], "properties": {
            "contact_id": {"type": "string"}, "email": {"type": "string"}, "kind": {"type": "string"}, "occurred_at": {"type": "integer"},
            "properties": {"$ref": "#/components/schemas/Properties"}, "idempotency_key": {"type": "string"}}},
        "Events": {"oneOf": [{"$ref": "#/components/schemas/NewEvent"},
            {"type": "object", "additionalProperties": false, "required": ["events"], "properties": {"events": {"type": "array", "minItems": 1, "maxItems": 1000, "items": {"$ref": "#/components/schemas/NewEvent"}}}}]},
        "CreateTenant": {"type": "object", "additionalProperties": false, "required": ["name"], "properties": {"name": {"type": "string"}, "time_zone": {"type": "string"}}},
        "CreateInstall": {"type": "object", "additionalProperties": false, "required": ["plugin_version_id"], "properties": {
            "plugin_version_id": {"type": "string"}, "config": {"type": "object"}, "grants": {"type": "array", "items": {"type": "string"}},
            "auto_upgrade": {"type": "boolean", "description": "move to newer uploads of the plugin after their health check"}}},
        "PatchInstall": {"type": "object", "additionalProperties": false, "properties": {
            "plugin_version_id": {"type": "string", "description": "another version of the same plugin: upgrade or roll back"},
            "config": {"type": "object"}, "grants": {"type": "array", "items": {"type": "string"}}, "enabled": {"type": "boolean"},
            "auto_upgrade": {"type": "boolean"}}},
        "Rollback": {"type": "object", "additionalProperties": false, "properties": {
            "plugin_version_id": {"type": "string", "description": "the version to go back to; default: the one before the latest change"}}},
        "Workflow": {"type": "object", "description": "A workflow definition (see examples/workflows/ and README: Workflows)", "required": ["name", "trigger", "steps"], "properties": {
            "name": {"type": "string"}, "description": {"type": "string"},
            "trigger": {"type": "object", "required": ["type"], "properties": {"type": {"enum": ["event", "property_changed", "score", "schedule", "plugin"]}}},
            "enrollment": {"type": "object", "properties": {"reenroll": {"type": "boolean"}, "min_interval": {"type": "string"}, "suppress_if": {"type": "object"}, "max_per_day": {"type": "integer"}}},
            "goals": {"type": "array", "items": {"type": "object", "required": ["id", "condition"]}},
            "retry": {"type": "object", "properties": {"max_attempts": {"type": "integer"}, "backoff": {"type": "string"}}},
            "steps": {"type": "array", "items": {"type": "object", "required": ["id", "type"], "properties": {"type": {"enum": ["action", "delay", "if", "split"]}}}}}},
        "Activate": {"type": "object", "additionalProperties": false, "properties": {"version": {"type": "integer"}}},
        "DryRun": {"type": "object", "additionalProperties": false, "properties": {
            "version": {"type": "integer"}, "contact_id": {"type": "string"}, "contact": {"$ref": "#/components/schemas/NewContact"},
            "events": {"type": "array", "items": {"type": "object", "required": ["kind"], "properties": {"kind": {"type": "string"}, "properties": {"$ref": "#/components/schemas/Properties"}}}},
            "variant": {"type": "string"}}},
        "PatchTenant": {"type": "object", "additionalProperties": false, "required": ["time_zone"], "properties": {"time_zone": {"type": "string"}}},
        "SetThreshold": {"type": "object", "additionalProperties": false, "required": ["min_score"], "properties": {"min_score": {"type": "number"}}},
    })
}

fn paths(parts: &[(Value, Value); 4]) -> Value {
    let [(contacts, contact), (companies, company), (deals, deal), (tasks, task)] = parts;
    let mut all = endpoint_paths();
    for (path, value) in [
        ("/v1/contacts", contacts),
        ("/v1/contacts/{id}", contact),
        ("/v1/companies", companies),
        ("/v1/companies/{id}", company),
        ("/v1/deals", deals),
        ("/v1/deals/{id}", deal),
        ("/v1/tasks", tasks),
        ("/v1/tasks/{id}", task),
    ] {
        all[path] = value.clone();
    }
    all
}

const ACTIVATE: (&str, &str, bool, &str) = ("activate", "boolean", false, "also make this version the active one");

/// `POST /v1/plugins`: 200 for bytes already stored, 201 for new ones.
fn upload_responses() -> Value {
    let mut r = error_responses();
    r["200"] = json!({"description": "these exact bytes were already stored under this version (same body as 201)"});
    r["201"] = json!({"description": "stored with its describe() result, the WIT packages it was built against (`wit`), and what happened to installs that follow the plugin (`upgrades`)"});
    r["409"] = json!({"$ref": "#/components/responses/Error"});
    r
}

/// `POST /v1/installs/{id}/inbound`.
fn inbound_responses() -> Value {
    let mut r = error_responses();
    r["202"] = json!({"description": "accepted, with accepted/rejected counts"});
    r["429"] = json!({"$ref": "#/components/responses/Error"});
    r
}

fn endpoint_paths() -> Value {
    json!({
        "/healthz": {"get": {"summary": "Health", "responses": {"200": {"description": "ok"}, "503": {"$ref": "#/components/responses/Error"}}}},
        "/metrics": {"get": {"summary": "Prometheus metrics: aggregates without a key; per-install series for the admin key (all installs) or a tenant's key (its own)",
            "security": [{}, {"bearer": []}],
            "responses": {"200": {"description": "text/plain metrics"}, "401": {"$ref": "#/components/responses/Error"}}}},
        "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1"}}}},
        "/v1/tenants": {
            "post": op("Create a tenant and its first API key (admin key)", "201", Some("CreateTenant")),
            "get": op("List tenants (admin key)", "200", None),
        },
        "/v1/contacts/{id}/timeline": {"parameters": id_param(), "get": with_query(op("A contact's events, scores, tasks, notes and plugin runs, newest first", "200", None), &[LIMIT])},
        "/v1/events": {
            "post": with_rate_limit(op("Ingest one event or a batch of up to 1000; 202 once durable; 429 with Retry-After past the tenant's events per second", "202", Some("Events"))),
            "get": with_query(op("A contact's recent events", "200", None), &[("contact_id", "string", true, "the contact"), ("kind", "string", false, "only this kind"), LIMIT]),
        },
        "/v1/plugins": {
            "post": {"summary": "Upload a plugin component (.wasm body); tenant key: private, admin key: catalog", "security": [{"bearer": []}],
                     "requestBody": {"required": true, "content": {"application/wasm": {"schema": {"type": "string", "format": "binary"}}}},
                     "responses": upload_responses()},
            "get": op("Plugin versions visible to the tenant (its own and the catalog)", "200", None),
        },
        "/v1/plugins/{id}": {"parameters": id_param(), "get": op("A plugin version", "200", None)},
        "/v1/installs": {"get": op("List installs", "200", None), "post": op("Install a plugin version with config and grants", "201", Some("CreateInstall"))},
        "/v1/installs/{id}": {"parameters": id_param(), "get": op("An install with call statistics", "200", None),
            "patch": op("Upgrade or roll back the version, change config, grants or enabled", "200", Some("PatchInstall")),
            "delete": delete_op("Remove an install")},
        "/v1/installs/{id}/history": {"parameters": id_param(), "get": with_query(op("The install's version changes, newest first: upgrades, rollbacks, automatic rollbacks and refused upgrades with reasons and self-test checks", "200", None), &[LIMIT])},
        "/v1/installs/{id}/rollback": {"parameters": id_param(), "post": op_optional_body("Go back to the version before the latest change, or to `plugin_version_id`", "200", "Rollback")},
        "/v1/installs/{id}/inbound": {"parameters": id_param(), "post": {"summary": "A provider callback for a channel install; the plugin turns it into events (202 with accepted/rejected counts)", "security": [{"bearer": []}], "requestBody": {"content": {"*/*": {"schema": {}}}}, "responses": inbound_responses()}},
        "/v1/invocations": {"get": with_query(op("Recorded plugin calls, newest first, without inputs", "200", None), &[("install_id", "string", false, "of this install"), ("contact_id", "string", false, "about this contact"), ("ok", "boolean", false, "only successes (true) or failures (false)"), LIMIT])},
        "/v1/invocations/{id}": {"parameters": id_param(), "get": op("A recorded plugin call with its input (`input`: a RecordedCall to replay with `cairn plugin replay`, null when not kept; `input_expired`, `input_dropped`)", "200", None)},
        "/v1/tenant": {"get": op("The caller's tenant and its settings", "200", None), "patch": op("Set the tenant's time zone (IANA name)", "200", Some("PatchTenant"))},
        "/v1/workflows": {"get": op("List workflows", "200", None),
            "post": with_query(op("Save a workflow definition as version 1 (a draft unless activated); 422 lists every problem with a JSON pointer", "201", Some("Workflow")), &[ACTIVATE])},
        "/v1/workflows/{id}": {"parameters": id_param(), "get": op("A workflow: its current definition, versions and run counts", "200", None),
            "put": with_query(op("Save a new version (a draft unless activated)", "201", Some("Workflow")), &[ACTIVATE])},
        "/v1/workflows/{id}/versions/{version}": {"parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}, {"name": "version", "in": "path", "required": true, "schema": {"type": "integer"}}],
            "get": op("One version's definition and status", "200", None)},
        "/v1/workflows/{id}/activate": {"parameters": id_param(), "post": op("Activate a version (default: the latest); runs in flight keep their version", "200", Some("Activate"))},
        "/v1/workflows/{id}/archive": {"parameters": id_param(), "post": op("Stop enrolling; runs in flight finish", "200", None)},
        "/v1/workflows/{id}/test": {"parameters": id_param(), "post": op("Dry run on a sample or existing contact: delays skipped, plugins in test mode, nothing kept; returns the path", "200", Some("DryRun"))},
        "/v1/runs": {"get": with_query(op("Workflow runs, newest first", "200", None), &[("workflow_id", "string", false, "of this workflow"), ("contact_id", "string", false, "of this contact"), ("status", "string", false, "waiting, running, completed, failed, exited or cancelled"), CURSOR, LIMIT])},
        "/v1/runs/{id}": {"parameters": id_param(), "get": op("A run with every step's input, output, error, attempts, duration and fuel", "200", None)},
        "/v1/runs/{id}/retry": {"parameters": id_param(), "post": op("Retry a failed run from the step that failed", "200", None)},
        "/v1/thresholds": {"get": op("Lifecycle score thresholds", "200", None)},
        "/v1/thresholds/{stage}": {"parameters": [{"name": "stage", "in": "path", "required": true, "schema": {"type": "string"}}],
            "put": op("Set the score at which contacts move to a stage", "200", Some("SetThreshold")),
            "delete": delete_op("Remove a threshold")},
    })
}
