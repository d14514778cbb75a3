-- Every read of the queue now goes by tenant (`events_queue_tenant`,
-- 0005): the pipeline's lanes, its scan for tenants with queued events.
-- The global queue index had no reader left but the store's test-only
-- claim, and every event paid for it twice: an entry on insert, its removal
-- when processed. On SQLite that was time at the one writer, which every
-- tenant waits for.
DROP INDEX events_queue;
