-- ProductService, migration 0001: initial schema of the product database.
-- The catalogue (categories and products). (The outbox and inbox tables are
-- MartRuntime's shared migration 0002.)
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
