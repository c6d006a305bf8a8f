-- ---------------------------------------------------------------------------
-- Event plumbing: the same two tables in every Mart service database, so this
-- migration lives once in MartRuntime and every service lists it
-- (Migration.eventTables) after its own first migration.
-- ---------------------------------------------------------------------------

-- Transactional outbox: a service writes its domain change and the event that
-- announces it in one local transaction; a relay publishes unpublished rows to
-- the broker and then stamps published_at. Delivery is therefore at least
-- once, and consumers de-duplicate by event_id (see inbox).
CREATE TABLE outbox (
  -- Publication order. A sequence gives insertion order, not commit order: a
  -- lower id can become visible after a higher one. The relay must therefore
  -- select "published_at IS NULL ORDER BY id", never "id > last seen id", or
  -- it would skip a late committer for good.
  id bigserial PRIMARY KEY,
  -- The EventMetadata.event_id inside the payload; unique so that a retried
  -- write cannot enqueue the same event twice.
  event_id uuid NOT NULL UNIQUE,
  topic text NOT NULL CHECK (topic <> ''),
  aggregate_type text NOT NULL CHECK (aggregate_type <> ''),
  -- The broker message key (e.g. the order id): events of one aggregate go to
  -- one partition and stay in order. Text, because a key need not be a uuid.
  aggregate_id text NOT NULL CHECK (aggregate_id <> ''),
  -- Full protobuf message name, e.g. mart.order.v1.OrderPlaced: consumers
  -- pick the decoder by it. The pattern rejects short names such as
  -- "OrderPlaced" (lower-case package segments, then a capitalised message).
  event_type text NOT NULL
    CHECK (event_type ~ '^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+\.[A-Z][A-Za-z0-9_]*$'),
  -- The serialised protobuf message (binary wire format).
  payload bytea NOT NULL,
  -- Extra broker headers (e.g. traceparent, correlation id): a flat JSON object.
  headers jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(headers) = 'object'),
  created_at timestamptz NOT NULL DEFAULT now(),
  -- Deliberately no CHECK (published_at >= created_at): now() is each
  -- transaction's start time, and a relay transaction that began before the
  -- writer committed may legitimately stamp an earlier time.
  published_at timestamptz
);

-- The relay's work queue: small, because published rows leave it.
CREATE INDEX outbox_unpublished_idx ON outbox (id) WHERE published_at IS NULL;

-- For pruning: DELETE FROM outbox WHERE published_at < now() - interval '7 days'.
CREATE INDEX outbox_published_at_idx ON outbox (published_at) WHERE published_at IS NOT NULL;

-- Idempotent consumers: a handler inserts (consumer, event_id) in the same
-- transaction as its effect; a re-delivered event hits the primary key (use
-- ON CONFLICT DO NOTHING and skip the effect when no row was inserted).
-- Keyed by consumer too, because two handlers in one service may each need to
-- process the same event once.
CREATE TABLE inbox (
  consumer text NOT NULL CHECK (consumer <> ''),
  event_id uuid NOT NULL,
  received_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (consumer, event_id)
);

-- For pruning rows older than the broker's retention (a re-delivery can only
-- come from a message the broker still holds).
CREATE INDEX inbox_received_at_idx ON inbox (received_at);
