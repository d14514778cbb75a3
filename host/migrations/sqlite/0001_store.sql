-- Cairn customer store, SQLite flavour (the PostgreSQL file beside this one
-- differs only in BYTEA instead of BLOB and a "C" collation on keyset-paged ids).
--
-- Conventions (shared with PostgreSQL so one set of queries serves both):
-- ids are TEXT uuid v7 (time ordered, so keyset paging by id is creation
-- order); times are BIGINT epoch milliseconds; JSON is TEXT; booleans are
-- BIGINT 0/1 (the sqlx Any driver cannot read SQLite BOOLEAN columns).
-- Every tenant-owned row carries tenant_id and every query filters on it.
-- Child tables index their parent id first so ON DELETE CASCADE and
-- per-contact reads never scan.

CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

-- Only the SHA-256 of a key is stored; tenant_id NULL means an admin key.
CREATE TABLE api_keys (
    key_hash    TEXT PRIMARY KEY,
    tenant_id   TEXT REFERENCES tenants (id) ON DELETE CASCADE,
    created_at  BIGINT NOT NULL
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

CREATE TABLE companies (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    domain      TEXT,
    properties  TEXT NOT NULL DEFAULT '{}',
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX companies_tenant ON companies (tenant_id, id);

CREATE TABLE contacts (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    email            TEXT,
    phone            TEXT,
    first_name       TEXT,
    last_name        TEXT,
    owner            TEXT,
    lifecycle_stage  TEXT NOT NULL DEFAULT 'lead',
    score            DOUBLE PRECISION NOT NULL DEFAULT 0,
    properties       TEXT NOT NULL DEFAULT '{}',
    company_id       TEXT REFERENCES companies (id) ON DELETE SET NULL,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    last_activity_at BIGINT
);
CREATE INDEX contacts_tenant ON contacts (tenant_id, id);
-- Emails are stored lower-cased; one contact per email per tenant (NULLs are distinct).
CREATE UNIQUE INDEX contacts_email ON contacts (tenant_id, email);
CREATE INDEX contacts_stage ON contacts (tenant_id, lifecycle_stage, id);
CREATE INDEX contacts_owner ON contacts (tenant_id, owner, id);
CREATE INDEX contacts_company ON contacts (company_id);

CREATE TABLE contact_tags (
    contact_id  TEXT NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    tenant_id   TEXT NOT NULL,
    tag         TEXT NOT NULL,
    PRIMARY KEY (contact_id, tag)
);
CREATE INDEX contact_tags_tag ON contact_tags (tenant_id, tag, contact_id);

CREATE TABLE score_changes (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    contact_id  TEXT NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    old_score   DOUBLE PRECISION NOT NULL,
    new_score   DOUBLE PRECISION NOT NULL,
    reasons     TEXT NOT NULL DEFAULT '[]',
    at          BIGINT NOT NULL
);
CREATE INDEX score_changes_contact ON score_changes (contact_id, at);

-- The event log and the pipeline's queue. lease_until is set when a
-- pipeline worker claims an event; an expired lease makes it claimable again.
-- No foreign key on tenant_id: the contact's (checked on insert) implies
-- it, and each check is a lookup per ingested event.
CREATE TABLE events (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL,
    contact_id       TEXT NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    kind             TEXT NOT NULL,
    occurred_at      BIGINT NOT NULL,
    properties       TEXT NOT NULL DEFAULT '{}',
    received_at      BIGINT NOT NULL,
    processed        BIGINT NOT NULL DEFAULT 0,
    idempotency_key  TEXT,
    lease_until      BIGINT
);
-- Partial: most events have no key and need no entry.
CREATE UNIQUE INDEX events_idempotency ON events (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX events_contact ON events (contact_id, occurred_at);
CREATE INDEX events_queue ON events (id) WHERE processed = 0;

CREATE TABLE deals (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    stage       TEXT NOT NULL,
    amount      DOUBLE PRECISION,
    contact_id  TEXT REFERENCES contacts (id) ON DELETE SET NULL,
    company_id  TEXT REFERENCES companies (id) ON DELETE SET NULL,
    properties  TEXT NOT NULL DEFAULT '{}',
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX deals_tenant ON deals (tenant_id, id);
CREATE INDEX deals_contact ON deals (contact_id);
CREATE INDEX deals_company ON deals (company_id);

CREATE TABLE tasks (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    contact_id       TEXT REFERENCES contacts (id) ON DELETE CASCADE,
    title            TEXT NOT NULL,
    assignee         TEXT,
    due_at           BIGINT,
    status           TEXT NOT NULL DEFAULT 'open',
    idempotency_key  TEXT,
    created_by       TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);
CREATE INDEX tasks_tenant ON tasks (tenant_id, id);
CREATE UNIQUE INDEX tasks_idempotency ON tasks (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX tasks_contact ON tasks (contact_id, created_at);

CREATE TABLE notes (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    contact_id  TEXT NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    body        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX notes_contact ON notes (contact_id, created_at);

-- Plugin bytes, content addressed: the same component uploaded by several
-- tenants is stored once.
CREATE TABLE plugin_blobs (
    hash        TEXT PRIMARY KEY,
    bytes       BLOB NOT NULL,
    size        BIGINT NOT NULL
);

-- owner_key is the tenant id, or '' for the global catalog (tenant_id NULL):
-- a unique index treats NULLs as distinct, so it cannot guard global names.
CREATE TABLE plugin_versions (
    id                TEXT PRIMARY KEY,
    tenant_id         TEXT REFERENCES tenants (id) ON DELETE CASCADE,
    owner_key         TEXT NOT NULL,
    name              TEXT NOT NULL,
    version           TEXT NOT NULL,
    hash              TEXT NOT NULL REFERENCES plugin_blobs (hash),
    size              BIGINT NOT NULL,
    description_json  TEXT NOT NULL,
    created_at        BIGINT NOT NULL
);
CREATE UNIQUE INDEX plugin_versions_name ON plugin_versions (owner_key, name, version);
CREATE INDEX plugin_versions_tenant ON plugin_versions (tenant_id);

CREATE TABLE installs (
    id                 TEXT PRIMARY KEY,
    tenant_id          TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    plugin_version_id  TEXT NOT NULL REFERENCES plugin_versions (id),
    config             TEXT NOT NULL DEFAULT '{}',
    grants             TEXT NOT NULL DEFAULT '[]',
    enabled            BIGINT NOT NULL DEFAULT 1,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL
);
CREATE INDEX installs_tenant ON installs (tenant_id, id);
CREATE INDEX installs_version ON installs (plugin_version_id);

CREATE TABLE plugin_state (
    install_id  TEXT NOT NULL REFERENCES installs (id) ON DELETE CASCADE,
    tenant_id   TEXT NOT NULL,
    key         TEXT NOT NULL,
    value       BLOB NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (install_id, key)
);

-- A rule starts from a trigger install, or (trigger_install_id NULL) from a
-- built-in matcher: an event kind plus property values the event must have.
CREATE TABLE rules (
    id                  TEXT PRIMARY KEY,
    tenant_id           TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name                TEXT NOT NULL,
    trigger_install_id  TEXT REFERENCES installs (id) ON DELETE CASCADE,
    event_kind          TEXT,
    event_filter        TEXT NOT NULL DEFAULT '{}',
    action_install_id   TEXT NOT NULL REFERENCES installs (id) ON DELETE CASCADE,
    enabled             BIGINT NOT NULL DEFAULT 1,
    created_at          BIGINT NOT NULL
);
CREATE INDEX rules_tenant ON rules (tenant_id, id);
CREATE INDEX rules_trigger ON rules (trigger_install_id);
CREATE INDEX rules_action ON rules (action_install_id);

CREATE TABLE lifecycle_thresholds (
    tenant_id   TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    stage       TEXT NOT NULL,
    min_score   DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (tenant_id, stage)
);

-- History of plugin calls; no foreign keys so the record outlives installs.
CREATE TABLE invocations (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL,
    install_id       TEXT NOT NULL,
    kind             TEXT NOT NULL,
    contact_id       TEXT,
    event_id         TEXT,
    ok               BIGINT NOT NULL,
    error_cause      TEXT,
    error_message    TEXT,
    fuel_used        BIGINT,
    duration_us      BIGINT NOT NULL,
    idempotency_key  TEXT,
    output_json      TEXT,
    at               BIGINT NOT NULL
);
CREATE INDEX invocations_tenant ON invocations (tenant_id, at);
CREATE INDEX invocations_install ON invocations (install_id, at);
CREATE INDEX invocations_contact ON invocations (contact_id, at);

-- One row per action idempotency key: a retried action that already
-- succeeded is not run again.
CREATE TABLE action_runs (
    tenant_id        TEXT NOT NULL,
    idempotency_key  TEXT NOT NULL,
    status           TEXT NOT NULL,
    attempts         BIGINT NOT NULL,
    output_json      TEXT,
    error            TEXT,
    started_at       BIGINT NOT NULL,
    finished_at      BIGINT,
    PRIMARY KEY (tenant_id, idempotency_key)
);
