-- Workflows and their runs, PostgreSQL flavour (the SQLite file beside this
-- one differs only in having no collation clauses). Ids that lists order by
-- use the "C" collation, so the order matches SQLite's whatever the locale.
--
-- Conventions as in 0001: TEXT uuid v7 ids, BIGINT epoch ms, JSON as TEXT.
-- Business times (wake_at, next_fire_at, enrolled_at, ...) follow the
-- store's clock; the *lease_until columns are real time (a claim lease says
-- whether a worker is alive).

-- Tenants get a time zone (IANA name) for calendar delays and schedules.
ALTER TABLE tenants ADD COLUMN time_zone TEXT NOT NULL DEFAULT 'UTC';

-- A workflow is a name and a list of versions; at most one is active.
-- next_fire_at is the next firing of a scheduled trigger of the active
-- version; schedule_lease_until is the claim on that firing.
CREATE TABLE workflows (
    id                    TEXT COLLATE "C" PRIMARY KEY,
    tenant_id             TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name                  TEXT NOT NULL,
    latest_version        BIGINT NOT NULL,
    active_version        BIGINT,
    next_fire_at          BIGINT,
    schedule_lease_until  BIGINT,
    created_at            BIGINT NOT NULL,
    updated_at            BIGINT NOT NULL
);
CREATE INDEX workflows_tenant ON workflows (tenant_id, id);
-- Partial: only scheduled, active workflows are ever due.
CREATE INDEX workflows_due ON workflows (next_fire_at) WHERE next_fire_at IS NOT NULL;

-- Versions are immutable definitions; only their status moves
-- (draft -> active -> archived, and archived -> active on a rollback).
CREATE TABLE workflow_versions (
    tenant_id    TEXT NOT NULL,
    workflow_id  TEXT NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    version      BIGINT NOT NULL,
    status       TEXT NOT NULL,
    definition   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (workflow_id, version)
);

-- One enrollment of a contact into a workflow version. A waiting run is a
-- timer: due at wake_at (business time). A contact deleted takes its runs
-- with it, like its events.
CREATE TABLE workflow_runs (
    id                TEXT COLLATE "C" PRIMARY KEY,
    tenant_id         TEXT NOT NULL,
    workflow_id       TEXT NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    version           BIGINT NOT NULL,
    contact_id        TEXT NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    status            TEXT NOT NULL,
    cursor            TEXT,
    wake_at           BIGINT,
    lease_until       BIGINT,
    attempts          BIGINT NOT NULL DEFAULT 0,
    variants          TEXT NOT NULL DEFAULT '{}',
    state             TEXT NOT NULL DEFAULT '{}',
    trigger_event_id  TEXT,
    enrollment_key    TEXT NOT NULL,
    error             TEXT,
    exit_reason       TEXT,
    enrolled_at       BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    finished_at       BIGINT,
    UNIQUE (tenant_id, workflow_id, enrollment_key)
);
-- The timer queue: partial, so finished runs (most of them) cost nothing.
CREATE INDEX workflow_runs_due ON workflow_runs (status, wake_at) WHERE status = 'waiting';
CREATE INDEX workflow_runs_tenant ON workflow_runs (tenant_id, id);
CREATE INDEX workflow_runs_contact ON workflow_runs (tenant_id, contact_id);
-- Enrollment rules: in flight, re-enrollment, interval and daily cap per contact.
CREATE INDEX workflow_runs_enrollments ON workflow_runs (tenant_id, workflow_id, contact_id, enrolled_at);

-- What each step of a run did: one row per (run, step), updated on retries.
CREATE TABLE run_steps (
    id           TEXT COLLATE "C" PRIMARY KEY,
    tenant_id    TEXT NOT NULL,
    run_id       TEXT NOT NULL REFERENCES workflow_runs (id) ON DELETE CASCADE,
    workflow_id  TEXT NOT NULL,
    contact_id   TEXT NOT NULL,
    step_id      TEXT NOT NULL,
    kind         TEXT NOT NULL,
    status       TEXT NOT NULL,
    attempts     BIGINT NOT NULL,
    input        TEXT,
    output       TEXT,
    error        TEXT,
    started_at   BIGINT NOT NULL,
    finished_at  BIGINT,
    duration_us  BIGINT NOT NULL DEFAULT 0,
    fuel_used    BIGINT,
    UNIQUE (run_id, step_id)
);
CREATE INDEX run_steps_contact ON run_steps (tenant_id, contact_id, started_at);

-- Workflows replace the single-step rules of 0001 (a pre-release stand-in
-- that no tenant used): their definitions and idempotency records go.
DROP TABLE IF EXISTS action_runs;
DROP TABLE IF EXISTS rules;

-- Why an install was disabled by the host (the circuit breaker), shown to
-- the admin until they enable it again; NULL when enabled or disabled by hand.
ALTER TABLE installs ADD COLUMN disabled_reason TEXT NULL;
