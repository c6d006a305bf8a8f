-- OrderService, migration 0001: initial schema of the order database.
-- Orders with price-snapshot lines, their timeline, CreateOrder idempotency
-- keys. (The outbox and inbox tables are
-- MartRuntime's shared migration 0002.)
--
-- Conventions (all Mart service databases): uuid primary keys from
-- gen_random_uuid() (built in since PostgreSQL 13); timestamptz everywhere;
-- money as bigint minor units plus a char(3) ISO-4217 code, never floating
-- point; an absent optional value is NULL, not '' (NULLIF($1, '') on write).
-- Ids of other services' entities (users, products, payments) are plain uuid
-- columns: each service owns its database, so no cross-database keys.

-- ---------------------------------------------------------------------------
-- Orders (mart.order.v1.Order)
-- ---------------------------------------------------------------------------

-- Human-friendly order numbers, e.g. M-2025-000123 (Order.number). The
-- sequence is never reset, so numbers stay unique across years; lpad would
-- truncate a longer number, hence greatest(6, length).
CREATE SEQUENCE order_number_seq AS bigint;

CREATE FUNCTION next_order_number() RETURNS text
LANGUAGE sql VOLATILE AS $$
  SELECT 'M-' || to_char(now() AT TIME ZONE 'UTC', 'YYYY') || '-'
         || lpad(n::text, greatest(6, length(n::text)), '0')
  FROM nextval('order_number_seq') AS n
$$;

CREATE TABLE orders (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  number text NOT NULL UNIQUE DEFAULT next_order_number(),
  user_id uuid NOT NULL,
  -- Order.Status in lower case. The allowed transitions are enforced by the
  -- orders_status_transition trigger below.
  status text NOT NULL DEFAULT 'pending'
    CHECK (status IN ('pending', 'awaiting_payment', 'paid', 'cancelled', 'shipped', 'delivered',
                      'refunded')),
  -- One currency per order (CURRENCY_MISMATCH is refused before insert); the
  -- lines' prices are in it too.
  currency char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
  -- Sum of the lines' totals; orders_totals_match_lines checks it at commit.
  subtotal_minor bigint NOT NULL CHECK (subtotal_minor >= 0),
  shipping_fee_minor bigint NOT NULL DEFAULT 0 CHECK (shipping_fee_minor >= 0),
  -- The amount to pay. Stored (the payment service reads it) and therefore
  -- checked, so that it can never disagree with its parts.
  total_minor bigint NOT NULL,
  CONSTRAINT orders_total_is_subtotal_plus_shipping
    CHECK (total_minor = subtotal_minor + shipping_fee_minor),
  -- Shipping address: a snapshot of mart.common.v1.Address taken when the
  -- order is placed (editing the address book later does not move a parcel).
  -- Address.lines (one to three) are line1..line3.
  shipping_recipient_name text NOT NULL CHECK (char_length(shipping_recipient_name) BETWEEN 1 AND 200),
  shipping_line1 text NOT NULL CHECK (char_length(shipping_line1) BETWEEN 1 AND 200),
  shipping_line2 text CHECK (char_length(shipping_line2) BETWEEN 1 AND 200),
  shipping_line3 text CHECK (char_length(shipping_line3) BETWEEN 1 AND 200),
  shipping_city text NOT NULL CHECK (char_length(shipping_city) BETWEEN 1 AND 100),
  shipping_region text,
  shipping_postal_code text,
  shipping_country_code char(2) NOT NULL CHECK (shipping_country_code ~ '^[A-Z]{2}$'),
  shipping_phone text CHECK (shipping_phone ~ '^\+[1-9][0-9]{6,14}$'),
  CHECK (shipping_line3 IS NULL OR shipping_line2 IS NOT NULL),
  -- The provider the customer chose (PaymentProvider in lower case; an
  -- unspecified choice is resolved to the shop's default before insert).
  payment_provider text NOT NULL CHECK (payment_provider IN ('sandbox', 'stripe', 'payfast')),
  -- The successful payment (payment service id), once paid.
  payment_id uuid,
  -- Unpaid after this time, the order is cancelled (PAYMENT_TIMEOUT).
  payment_deadline timestamptz NOT NULL,
  customer_note text CHECK (char_length(customer_note) <= 1000),
  -- Order.CancelReason in lower case, and the free-text detail.
  cancel_reason text
    CHECK (cancel_reason IN ('customer_request', 'admin_request', 'out_of_stock', 'payment_timeout',
                             'payment_failed')),
  cancel_note text,
  -- Shipment.
  carrier text,
  tracking_number text,
  tracking_url text,
  -- Optimistic concurrency: +1 on every change.
  version bigint NOT NULL DEFAULT 1 CHECK (version >= 1),
  -- created_at is when the order was placed (Order.create_time).
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  paid_at timestamptz,
  shipped_at timestamptz,
  delivered_at timestamptz,
  cancelled_at timestamptz,
  refunded_at timestamptz,
  -- The status and the facts recorded with it agree, so a reader never sees,
  -- say, a PAID order without its payment or a SHIPPED one without tracking:
  -- paid states carry the payment ...
  CHECK (status NOT IN ('paid', 'shipped', 'delivered', 'refunded')
         OR (paid_at IS NOT NULL AND payment_id IS NOT NULL)),
  -- ... an order not yet awaiting payment's outcome has no payment facts ...
  CHECK (status NOT IN ('pending', 'awaiting_payment') OR (paid_at IS NULL AND shipped_at IS NULL)),
  -- ... shipping needs a carrier and a tracking number (ShipOrder requires
  -- both), and only a paid order ships; delivery comes after shipping ...
  CHECK (status NOT IN ('shipped', 'delivered')
         OR (shipped_at IS NOT NULL AND carrier IS NOT NULL AND tracking_number IS NOT NULL)),
  CHECK (shipped_at IS NULL OR paid_at IS NOT NULL),
  CHECK (status <> 'delivered' OR delivered_at IS NOT NULL),
  CHECK (delivered_at IS NULL OR shipped_at IS NOT NULL),
  -- ... cancelled exactly when it has a cancellation time and reason ...
  CHECK ((status = 'cancelled') = (cancelled_at IS NOT NULL)),
  CHECK ((status = 'cancelled') = (cancel_reason IS NOT NULL)),
  -- ... and refunded has its refund time.
  CHECK (status <> 'refunded' OR refunded_at IS NOT NULL),
  -- Target of idempotency_keys' composite key (see there).
  UNIQUE (id, user_id)
);

-- ListOrders for a customer: newest first, keyset on (created_at, id).
CREATE INDEX orders_user_id_created_at_id_idx ON orders (user_id, created_at DESC, id DESC);

-- ListOrders for an admin: all orders, or those in one status, newest first.
CREATE INDEX orders_created_at_id_idx ON orders (created_at DESC, id DESC);
CREATE INDEX orders_status_created_at_id_idx ON orders (status, created_at DESC, id DESC);

-- The payment-deadline sweeper's queue: only unpaid orders, by deadline.
CREATE INDEX orders_unpaid_payment_deadline_idx ON orders (payment_deadline)
  WHERE status IN ('pending', 'awaiting_payment');

-- The order lifecycle (see OrderService in order.proto) as the database
-- enforces it. Staying in a status (e.g. updating tracking) is allowed;
-- CANCELLED and REFUNDED are final. Guard the application's update as well
-- (UPDATE ... WHERE id = $1 AND status = ANY($2)) to turn a lost race into
-- INVALID_ORDER_STATUS rather than an exception; this trigger is the net.
CREATE FUNCTION orders_status_transition() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  allowed boolean;
BEGIN
  IF NEW.status = OLD.status THEN
    RETURN NEW;
  END IF;
  allowed := CASE OLD.status
      WHEN 'pending' THEN NEW.status IN ('awaiting_payment', 'cancelled')
      WHEN 'awaiting_payment' THEN NEW.status IN ('paid', 'cancelled')
      WHEN 'paid' THEN NEW.status IN ('shipped', 'cancelled', 'refunded')
      WHEN 'shipped' THEN NEW.status IN ('delivered', 'refunded')
      WHEN 'delivered' THEN NEW.status = 'refunded'
      ELSE false
    END;
  IF NOT allowed THEN
    RAISE EXCEPTION 'order %: status % cannot change to %', OLD.id, OLD.status, NEW.status
      USING ERRCODE = 'check_violation';
  END IF;
  RETURN NEW;
END;
$$;

CREATE TRIGGER orders_status_transition
  BEFORE UPDATE OF status ON orders
  FOR EACH ROW EXECUTE FUNCTION orders_status_transition();

-- ---------------------------------------------------------------------------
-- Order lines (mart.order.v1.OrderLine): price snapshots
-- ---------------------------------------------------------------------------

CREATE TABLE order_lines (
  order_id uuid NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
  -- 1-based position, for a stable display order.
  line_no integer NOT NULL CHECK (line_no > 0),
  product_id uuid NOT NULL,
  -- Product data as it was when the order was placed: later catalogue
  -- changes (price, name, archiving) do not alter a placed order.
  sku text NOT NULL,
  name text NOT NULL,
  image_url text,
  -- In the order's currency.
  unit_price_minor bigint NOT NULL CHECK (unit_price_minor >= 0),
  quantity integer NOT NULL CHECK (quantity > 0),
  -- Stored for reading convenience, so checked. A bigint overflow raises an
  -- error rather than wrapping.
  line_total_minor bigint NOT NULL,
  CONSTRAINT order_lines_total_is_price_times_quantity
    CHECK (line_total_minor = unit_price_minor * quantity),
  PRIMARY KEY (order_id, line_no),
  -- Each product at most once per order (the proto's rule): quantities of a
  -- product are summed into one line, which is what the stock reservation
  -- (keyed by order and product) expects.
  UNIQUE (order_id, product_id)
);

-- At commit: an order has at least one line and its subtotal is the sum of
-- its lines' totals. Deferred, because the order row and its lines are
-- inserted by separate statements of one transaction.
CREATE FUNCTION orders_totals_match_lines() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  target uuid;
  order_subtotal bigint;
  line_count bigint;
  line_sum numeric;
BEGIN
  IF TG_TABLE_NAME = 'orders' THEN
    target := NEW.id;
  ELSIF TG_OP = 'DELETE' THEN
    target := OLD.order_id;
  ELSE
    target := NEW.order_id;
  END IF;
  SELECT subtotal_minor INTO order_subtotal FROM orders WHERE id = target;
  IF NOT FOUND THEN
    RETURN NULL;  -- the order itself was deleted: nothing to check
  END IF;
  SELECT count(*), coalesce(sum(line_total_minor), 0) INTO line_count, line_sum
    FROM order_lines WHERE order_id = target;
  IF line_count = 0 THEN
    RAISE EXCEPTION 'order % has no lines', target USING ERRCODE = 'check_violation';
  END IF;
  IF line_sum <> order_subtotal THEN
    RAISE EXCEPTION 'order %: subtotal % is not the sum of its lines (%)', target, order_subtotal, line_sum
      USING ERRCODE = 'check_violation';
  END IF;
  RETURN NULL;
END;
$$;

CREATE CONSTRAINT TRIGGER orders_totals_match_lines
  AFTER INSERT OR UPDATE OF subtotal_minor ON orders
  DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION orders_totals_match_lines();

CREATE CONSTRAINT TRIGGER order_lines_totals_match_order
  AFTER INSERT OR UPDATE OR DELETE ON order_lines
  DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION orders_totals_match_lines();

-- ---------------------------------------------------------------------------
-- Timeline (GetOrderTimeline; mart.order.v1.TimelineEntry)
-- ---------------------------------------------------------------------------

CREATE TABLE order_timeline (
  -- Oldest first = by id. Entries of one order are written while its row is
  -- locked (each goes with a status change or saga step), so their id order
  -- is their commit order.
  id bigserial PRIMARY KEY,
  order_id uuid NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
  -- TimelineEntry.Kind in lower case.
  kind text NOT NULL
    CHECK (kind IN ('placed', 'stock_reserved', 'stock_reservation_failed', 'payment_started',
                    'payment_failed', 'paid', 'cancelled', 'shipped', 'delivered', 'refunded')),
  -- The order's status after the entry.
  status text NOT NULL
    CHECK (status IN ('pending', 'awaiting_payment', 'paid', 'cancelled', 'shipped', 'delivered',
                      'refunded')),
  -- Human-readable description, e.g. 'Shipped with The Courier Guy'.
  message text NOT NULL DEFAULT '',
  -- Who caused it: a user id, or 'system' (sagas, sweepers, events). Either
  -- case of hex digits, since Swift prints UUIDs in upper case.
  actor text NOT NULL
    CHECK (actor = 'system'
           OR actor ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'),
  created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX order_timeline_order_id_id_idx ON order_timeline (order_id, id);

-- ---------------------------------------------------------------------------
-- CreateOrder idempotency
-- ---------------------------------------------------------------------------

-- CreateOrder's request_id: a retried call (the client timed out, the
-- gateway retried) returns the order of the first call instead of placing a
-- second one. Insert the key in the transaction that inserts the order; a
-- concurrent duplicate then waits on the primary key and fails (or, with ON
-- CONFLICT DO NOTHING, inserts nothing) once the first commits, and reads the
-- first call's order.
CREATE TABLE idempotency_keys (
  -- Keys are per user: one customer cannot collide with, or probe, another's.
  user_id uuid NOT NULL,
  key text NOT NULL CHECK (char_length(key) BETWEEN 1 AND 200),
  order_id uuid NOT NULL,
  -- SHA-256 of the canonical request: the same key with a different request
  -- is refused (IDEMPOTENCY_KEY_REUSED) instead of returning an unrelated order.
  request_hash bytea NOT NULL CHECK (octet_length(request_hash) = 32),
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (user_id, key),
  -- The order belongs to the same user as the key, so a key can never hand
  -- one customer another customer's order.
  FOREIGN KEY (order_id, user_id) REFERENCES orders (id, user_id) ON DELETE CASCADE
);

-- The foreign key's cascade, and pruning of old keys.
CREATE INDEX idempotency_keys_order_id_idx ON idempotency_keys (order_id, user_id);
CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at);
