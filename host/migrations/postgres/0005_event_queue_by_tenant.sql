-- The pipeline works each tenant's events in a lane of its own, so a tenant
-- whose plugins are slow delays only itself. It claims per tenant, oldest
-- first, and finds the tenants with queued events by seeking from one to the
-- next: both read this index, and neither reads past another tenant's
-- backlog. Partial like `events_queue`: processed events (most of them) have
-- no entry.
CREATE INDEX events_queue_tenant ON events (tenant_id, id) WHERE processed = 0;
