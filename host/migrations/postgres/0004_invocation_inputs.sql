-- Replay: every recorded plugin call keeps what it was given, so a developer
-- can fetch it (`GET /v1/invocations/{id}`) and run it against another build
-- (`cairn plugin replay`). PostgreSQL flavour; the SQLite file beside this
-- one is the same statements.
--
-- input_json     the call as a RecordedCall document (JSON text); NULL when
--                none was kept.
-- input_status   why input_json is what it is: NULL (no input recorded:
--                rows older than this migration), 'kept', 'too-large' (over
--                the 256 KiB cap, never written), 'expired' (erased by the
--                retention task after the configured time; the row stays).
-- plugin_version_id  the version that ran, so a replay picks the same build.
ALTER TABLE invocations ADD COLUMN plugin_version_id TEXT NULL;
ALTER TABLE invocations ADD COLUMN input_json TEXT NULL;
ALTER TABLE invocations ADD COLUMN input_status TEXT NULL;

-- What the retention task scans: only rows still holding an input, by age,
-- so each pass reads the expired ones and nothing else.
CREATE INDEX invocations_input_at ON invocations (at) WHERE input_json IS NOT NULL;

-- A workflow step's record links to its latest attempt's invocation.
ALTER TABLE run_steps ADD COLUMN invocation_id TEXT NULL;
