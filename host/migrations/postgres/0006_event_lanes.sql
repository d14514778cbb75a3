-- A tenant's events are claimed only while none of them is leased, so one
-- lane at a time works a tenant's events across every node. The check reads
-- this index: it holds only the leased, unprocessed events (a batch per
-- tenant at most, plus expired leases awaiting their next claim), so it is
-- one seek however long the tenant's backlog.
CREATE INDEX events_leased ON events (tenant_id, lease_until) WHERE processed = 0 AND lease_until IS NOT NULL;
