-- Plugin lifecycle (issue 4): an install may follow new uploads of its
-- plugin (auto-upgrade), and every change of the version an install runs
-- (upgrade, rollback, automatic rollback, a refused upgrade) is kept with
-- its reason and, when the new version ran a self-test, its checks.
ALTER TABLE installs ADD COLUMN auto_upgrade BIGINT NOT NULL DEFAULT 0;

CREATE TABLE install_history (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL,
    install_id       TEXT NOT NULL REFERENCES installs (id) ON DELETE CASCADE,
    action           TEXT NOT NULL,
    from_version_id  TEXT,
    to_version_id    TEXT,
    from_version     TEXT,
    to_version       TEXT,
    reason           TEXT,
    checks           TEXT,
    at               BIGINT NOT NULL
);
CREATE INDEX install_history_install ON install_history (tenant_id, install_id, at);
