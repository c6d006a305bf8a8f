-- InventoryService, migration 0001: initial schema of the inventory database.
-- Stock levels, the append-only stock ledger, order reservations. (The outbox and inbox tables are
-- MartRuntime's shared migration 0002.)
--
-- Conventions (all Mart service databases): timestamptz everywhere; ids of
-- other services' entities (products, orders, users) are plain uuid columns,
-- because each service owns its database and there are no cross-database keys.
-- Quantities are bigint here but the proto carries int32, so stored
-- quantities are capped at 2147483647 to always fit the API.

-- ---------------------------------------------------------------------------
-- Stock (mart.inventory.v1.Stock)
-- ---------------------------------------------------------------------------

-- One row per product (created at zero from the ProductCreated event; a
-- product without a row reads as all zeros).
--   on_hand   = units physically in the warehouse;
--   reserved  = units held by active reservations;
--   available = on_hand - reserved = what can still be ordered.
-- Every change of on_hand or reserved is recorded in stock_movements, and the
-- database checks that the two agree (see the ledger triggers below).
CREATE TABLE stock (
  product_id uuid PRIMARY KEY,
  on_hand bigint NOT NULL DEFAULT 0
    CONSTRAINT stock_on_hand_nonnegative CHECK (on_hand >= 0)
    CONSTRAINT stock_on_hand_fits_int32 CHECK (on_hand <= 2147483647),
  reserved bigint NOT NULL DEFAULT 0
    CONSTRAINT stock_reserved_nonnegative CHECK (reserved >= 0),
  -- Reserving more than is on hand would sell goods that do not exist; with
  -- this, available can never go below zero, whatever the application does.
  -- Reserve with
  --   UPDATE stock SET reserved = reserved + $2 WHERE product_id = $1
  --   AND on_hand - reserved >= $2
  -- (no row = short); an AdjustStock that would break it fails with SQLSTATE
  -- 23514 on this constraint name (STOCK_WOULD_GO_NEGATIVE).
  CONSTRAINT stock_reserved_within_on_hand CHECK (reserved <= on_hand),
  -- Derived, never written: the proto's Stock.available.
  available bigint GENERATED ALWAYS AS (on_hand - reserved) STORED,
  -- A LowStock event is due when available falls to or below this; 0
  -- disables the alert.
  low_stock_threshold bigint NOT NULL DEFAULT 0
    CHECK (low_stock_threshold >= 0 AND low_stock_threshold <= 2147483647),
  -- Set when LowStock is published, cleared when available rises above the
  -- threshold again: one event per crossing, not one per sale while low.
  low_stock_alerted boolean NOT NULL DEFAULT false,
  -- Optimistic concurrency for admin edits: +1 on every change.
  version bigint NOT NULL DEFAULT 1 CHECK (version >= 1),
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);

-- ---------------------------------------------------------------------------
-- Stock movements: the audit trail (mart.inventory.v1.StockMovement)
-- ---------------------------------------------------------------------------

-- Ledger position, assigned by the insert trigger while it holds the
-- product's stock row lock, so that per product seq order is commit order.
CREATE SEQUENCE stock_movements_seq AS bigint;

CREATE TABLE stock_movements (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  -- Set by stock_movements_before_insert; any value given is overwritten.
  seq bigint NOT NULL UNIQUE,
  -- NO ACTION: a product with history keeps its stock row.
  product_id uuid NOT NULL REFERENCES stock (product_id),
  -- What caused it (StockMovement.Kind): an admin's AdjustStock, or one of the
  -- reservation saga steps.
  kind text NOT NULL CHECK (kind IN ('adjustment', 'reservation', 'release', 'commit')),
  -- Why an adjustment was made (AdjustmentReason); only adjustments have one.
  reason text CHECK (reason IN ('restock', 'damage', 'correction', 'return')),
  on_hand_delta bigint NOT NULL,
  reserved_delta bigint NOT NULL,
  -- The stock after this movement: each row continues the previous row of the
  -- same product (checked by the insert trigger), so the ledger can be
  -- audited and replayed, and the newest row equals the stock row.
  on_hand_after bigint NOT NULL CHECK (on_hand_after >= 0),
  reserved_after bigint NOT NULL CHECK (reserved_after >= 0 AND reserved_after <= on_hand_after),
  note text,
  -- The order, for reservation, release and commit.
  order_id uuid,
  -- The admin who made an adjustment (proto: actor_user_id).
  actor_user_id uuid,
  -- AdjustStock's client idempotency key: a retry finds the movement it
  -- already recorded (and its *_after values) instead of adjusting twice.
  request_id uuid,
  created_at timestamptz NOT NULL DEFAULT now(),
  CHECK ((kind = 'adjustment') = (reason IS NOT NULL)),
  -- The sign of each delta follows from the kind (and the reason), so a
  -- mis-signed movement cannot be recorded:
  --   restock/return add goods, damage removes them, a correction goes either
  --   way (0 is allowed: AdjustStock may change only the threshold);
  --   a reservation raises reserved, a release lowers it;
  --   a commit (sale) ships reserved goods: on_hand and reserved drop alike.
  CONSTRAINT stock_movements_delta_signs CHECK (CASE kind
    WHEN 'adjustment' THEN reserved_delta = 0 AND CASE reason
      WHEN 'restock' THEN on_hand_delta >= 0
      WHEN 'return' THEN on_hand_delta >= 0
      WHEN 'damage' THEN on_hand_delta <= 0
      ELSE true END
    WHEN 'reservation' THEN on_hand_delta = 0 AND reserved_delta > 0
    WHEN 'release' THEN on_hand_delta = 0 AND reserved_delta < 0
    WHEN 'commit' THEN on_hand_delta < 0 AND reserved_delta = on_hand_delta
    ELSE false END),
  CHECK (kind = 'adjustment' OR order_id IS NOT NULL),
  CHECK (kind <> 'adjustment' OR actor_user_id IS NOT NULL),
  CHECK (request_id IS NULL OR kind = 'adjustment')
);

-- ListMovements: a product's movements, newest first (keyset on seq).
CREATE INDEX stock_movements_product_id_seq_idx ON stock_movements (product_id, seq DESC);

-- An order's movements (support, audits).
CREATE INDEX stock_movements_order_id_idx ON stock_movements (order_id) WHERE order_id IS NOT NULL;

-- One adjustment per idempotency key (a reused key conflicts here).
CREATE UNIQUE INDEX stock_movements_request_id_key ON stock_movements (request_id)
  WHERE request_id IS NOT NULL;

-- The ledger is append-only: history is corrected by a new movement (e.g. an
-- adjustment with reason 'correction'), never rewritten. Note that a table
-- owner can still disable triggers; this guards against application bugs,
-- not against a hostile administrator.
CREATE FUNCTION stock_movements_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'stock_movements is append-only: % is not allowed', TG_OP
    USING ERRCODE = 'restrict_violation',
          HINT = 'Record a correcting movement instead.';
END;
$$;

CREATE TRIGGER stock_movements_no_update_or_delete
  BEFORE UPDATE OR DELETE ON stock_movements
  FOR EACH ROW EXECUTE FUNCTION stock_movements_append_only();

-- Row triggers do not fire for TRUNCATE.
CREATE TRIGGER stock_movements_no_truncate
  BEFORE TRUNCATE ON stock_movements
  FOR EACH STATEMENT EXECUTE FUNCTION stock_movements_append_only();

-- Before a movement is recorded: lock the product's stock row (the service
-- normally holds that lock already, having just updated the row), take the
-- next ledger position, and check that the movement continues the product's
-- previous one: after = previous after + delta (a product's first movement
-- starts from zero). Under the lock, the newest row is stable and its seq is
-- lower than the one taken here, so per product the ledger is a chain.
CREATE FUNCTION stock_movements_before_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  previous_on_hand bigint;
  previous_reserved bigint;
BEGIN
  PERFORM 1 FROM stock WHERE product_id = NEW.product_id FOR UPDATE;
  NEW.seq := nextval('stock_movements_seq');
  SELECT on_hand_after, reserved_after INTO previous_on_hand, previous_reserved
    FROM stock_movements
    WHERE product_id = NEW.product_id
    ORDER BY seq DESC
    LIMIT 1;
  IF NOT FOUND THEN
    previous_on_hand := 0;
    previous_reserved := 0;
  END IF;
  IF NEW.on_hand_after <> previous_on_hand + NEW.on_hand_delta
     OR NEW.reserved_after <> previous_reserved + NEW.reserved_delta THEN
    RAISE EXCEPTION 'stock movement for product % does not continue the ledger', NEW.product_id
      USING ERRCODE = 'check_violation',
            DETAIL = format('previous on_hand %s, reserved %s; movement deltas %s, %s; after %s, %s',
                            previous_on_hand, previous_reserved, NEW.on_hand_delta,
                            NEW.reserved_delta, NEW.on_hand_after, NEW.reserved_after);
  END IF;
  RETURN NEW;
END;
$$;

CREATE TRIGGER stock_movements_before_insert
  BEFORE INSERT ON stock_movements
  FOR EACH ROW EXECUTE FUNCTION stock_movements_before_insert();

-- At commit: a product's stock row equals its newest movement's *_after
-- values (or zero if it has none). So on_hand and reserved cannot change
-- without a matching movement in the same transaction, and no movement can be
-- recorded that the stock row does not reflect. Deferred, because the service
-- updates the stock row and inserts the movement in either order.
CREATE FUNCTION stock_matches_ledger() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  current_on_hand bigint;
  current_reserved bigint;
  ledger_on_hand bigint := 0;
  ledger_reserved bigint := 0;
BEGIN
  SELECT on_hand, reserved INTO current_on_hand, current_reserved
    FROM stock WHERE product_id = NEW.product_id;
  IF NOT FOUND THEN
    RETURN NULL;  -- deleted later in the transaction: nothing to compare
  END IF;
  SELECT on_hand_after, reserved_after INTO ledger_on_hand, ledger_reserved
    FROM stock_movements
    WHERE product_id = NEW.product_id
    ORDER BY seq DESC
    LIMIT 1;
  IF NOT FOUND THEN
    ledger_on_hand := 0;
    ledger_reserved := 0;
  END IF;
  IF current_on_hand <> ledger_on_hand OR current_reserved <> ledger_reserved THEN
    RAISE EXCEPTION 'stock of product % does not match its ledger', NEW.product_id
      USING ERRCODE = 'check_violation',
            DETAIL = format('stock on_hand %s, reserved %s; newest movement on_hand_after %s, reserved_after %s',
                            current_on_hand, current_reserved, ledger_on_hand, ledger_reserved),
            HINT = 'Record a stock_movements row for every change of on_hand or reserved.';
  END IF;
  RETURN NULL;
END;
$$;

CREATE CONSTRAINT TRIGGER stock_matches_ledger
  AFTER INSERT OR UPDATE OF on_hand, reserved ON stock
  DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION stock_matches_ledger();

CREATE CONSTRAINT TRIGGER stock_movements_match_stock
  AFTER INSERT ON stock_movements
  DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION stock_matches_ledger();

-- ---------------------------------------------------------------------------
-- Reservations (mart.inventory.v1.Reservation): the order saga's stock holds
-- ---------------------------------------------------------------------------

-- One reservation per order: the order id is the key, which makes
-- ReserveStock idempotent (INSERT ... ON CONFLICT (order_id) DO NOTHING, then
-- compare the lines for RESERVATION_CONFLICT).
-- Status follows the proto (ACTIVE, RELEASED, COMMITTED); a reservation that
-- ran out of time is released, with release_reason saying so.
CREATE TABLE reservations (
  order_id uuid PRIMARY KEY,
  status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'released', 'committed')),
  -- ReleaseReservation's reason, for the audit trail (e.g. 'order cancelled',
  -- 'expired'); only a released reservation has one.
  release_reason text CHECK (release_reason IS NULL OR status = 'released'),
  -- Safety net: an active reservation past this time is released by the
  -- sweeper even if the order service never calls back.
  expires_at timestamptz NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);

-- The sweeper's queue: only active reservations, by deadline.
CREATE INDEX reservations_active_expires_at_idx ON reservations (expires_at) WHERE status = 'active';

CREATE TABLE reservation_lines (
  order_id uuid NOT NULL REFERENCES reservations (order_id) ON DELETE CASCADE,
  -- A product without a stock row has nothing available, so it cannot be
  -- reserved; the key also keeps stock rows with holds from being deleted.
  product_id uuid NOT NULL REFERENCES stock (product_id),
  quantity bigint NOT NULL CHECK (quantity > 0 AND quantity <= 2147483647),
  -- Each product at most once per reservation (the proto's rule).
  PRIMARY KEY (order_id, product_id)
);

-- Which reservations hold a product (support; the foreign key's check).
CREATE INDEX reservation_lines_product_id_idx ON reservation_lines (product_id);
