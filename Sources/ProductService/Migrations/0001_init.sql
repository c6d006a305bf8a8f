-- ProductService, migration 0001: initial schema of the product database.
-- The catalogue (categories and products) and the event plumbing.
--
-- Conventions (all Mart service databases): uuid primary keys from
-- gen_random_uuid() (built in since PostgreSQL 13); timestamptz everywhere;
-- money as bigint minor units plus a char(3) ISO-4217 code, never floating
-- point; an absent optional value is NULL, not '' (NULLIF($1, '') on write).

-- ---------------------------------------------------------------------------
-- Categories (mart.product.v1.Category)
-- ---------------------------------------------------------------------------

CREATE TABLE categories (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  name text NOT NULL UNIQUE CHECK (char_length(name) BETWEEN 1 AND 100),
  -- URL-friendly: lower-case words joined by single hyphens, e.g. "t-shirts".
  slug text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9]+(-[a-z0-9]+)*$' AND char_length(slug) <= 100),
  -- NULL for a top-level category. RESTRICT (the default NO ACTION) refuses
  -- to delete a category that still has sub-categories. A category cannot be
  -- its own parent; longer cycles cannot arise because the API sets the
  -- parent only at creation (to an existing category) and never changes it.
  parent_id uuid REFERENCES categories (id) CHECK (parent_id <> id),
  description text,
  created_at timestamptz NOT NULL DEFAULT now()
);

-- ListCategories(parent_id) and the recursive walk of ListProducts'
-- "this category and its sub-categories" filter.
CREATE INDEX categories_parent_id_idx ON categories (parent_id);

-- ---------------------------------------------------------------------------
-- Products (mart.product.v1.Product)
-- ---------------------------------------------------------------------------

CREATE TABLE products (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  -- Unique across the catalogue (SKU_ALREADY_EXISTS comes from this key).
  sku text NOT NULL UNIQUE CHECK (sku = btrim(sku) AND char_length(sku) BETWEEN 1 AND 64),
  name text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
  description text NOT NULL DEFAULT '',
  -- Unit price, tax included, in minor units (cents); a free item is 0.
  price_minor bigint NOT NULL CHECK (price_minor >= 0),
  -- ISO-4217, upper case; char(3) pads short codes, which the pattern rejects.
  currency char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
  -- NULL = uncategorised. A category with products cannot be deleted (NO
  -- ACTION): silently un-categorising products would hide them from
  -- category listings.
  category_id uuid REFERENCES categories (id),
  brand text,
  -- Absolute URLs, the first is the main image. No NULL elements.
  image_urls text[] NOT NULL DEFAULT '{}'
    CHECK (array_position(image_urls, NULL) IS NULL AND cardinality(image_urls) <= 20),
  -- The proto's map<string, string>: a JSON object whose values are all
  -- strings, so that every row decodes into the proto type.
  attributes jsonb NOT NULL DEFAULT '{}'
    CHECK (jsonb_typeof(attributes) = 'object')
    CHECK (NOT jsonb_path_exists(attributes, '$.* ? (@.type() != "string")')),
  status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'archived')),
  -- Optimistic concurrency: 1 on creation, +1 on every change. Update with
  --   UPDATE ... SET ..., version = version + 1 WHERE id = $1 AND version = $2
  -- and report VERSION_MISMATCH when no row matched.
  version bigint NOT NULL DEFAULT 1 CHECK (version >= 1),
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  -- Full-text search document (ListProducts.query searches name, brand, SKU
  -- and description). Weights rank a match in the name above one in the SKU or
  -- brand, above one in the description. Query it with the same
  -- configuration: search @@ websearch_to_tsquery('english', $1), ranked by
  -- ts_rank(search, query). 'english' is spelled out, so the expression is
  -- immutable, as a generated column requires.
  search tsvector GENERATED ALWAYS AS (
    setweight(to_tsvector('english', coalesce(name, '')), 'A')
    || setweight(to_tsvector('english', coalesce(sku, '') || ' ' || coalesce(brand, '')), 'B')
    || setweight(to_tsvector('english', coalesce(description, '')), 'C')
  ) STORED
);

CREATE INDEX products_search_idx ON products USING gin (search);

-- Keyset (cursor) pagination, one index per sort of ListProducts. Every
-- listing filters on status (customers see active products only, admins may
-- ask for archived), so status leads; the id tie-breaker makes each order
-- total, which a cursor needs. PRICE_DESC scans the price index backwards.
--   NEWEST:    WHERE status = $1 AND (created_at, id) < ($2, $3) ORDER BY created_at DESC, id DESC
--   PRICE_ASC: WHERE status = $1 AND (price_minor, id) > ($2, $3) ORDER BY price_minor, id
--   NAME:      WHERE status = $1 AND (name, id) > ($2, $3) ORDER BY name, id
CREATE INDEX products_status_created_at_id_idx ON products (status, created_at DESC, id DESC);
CREATE INDEX products_status_price_id_idx ON products (status, price_minor, id);
CREATE INDEX products_status_name_id_idx ON products (status, name, id);

-- The category filter (and the foreign key's check when a category is deleted).
CREATE INDEX products_category_id_idx ON products (category_id);

-- ---------------------------------------------------------------------------
-- Event plumbing (the same definition in every Mart service database).
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
