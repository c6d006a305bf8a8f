-- OrderService, migration 0003: the saga's durable steps, and the timeline
-- kinds and idempotency columns the saga needs.
--
-- The order saga (OrderSaga.swift) is a queue of steps in this database: a
-- step is a row, written in the same transaction as the status change that
-- calls for it, with the time it is due. The saga worker leases due rows
-- (FOR UPDATE SKIP LOCKED, then pushes `due_at` past the lease), performs
-- the step (idempotent by order id), and marks it done in the transaction
-- that records its outcome. A process that dies mid-step leaves the row
-- leased; once the lease passes, any worker takes it again. Timeouts (the
-- payment deadline) are rows like the others, so they survive restarts.

CREATE TABLE order_saga_steps (
  id bigserial PRIMARY KEY,
  order_id uuid NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
  -- reserve_stock: ReserveStock for the order's lines (PENDING -> AWAITING_PAYMENT, or CANCELLED
  --   OUT_OF_STOCK). commit_stock: CommitReservation once paid (-> PAID).
  --   release_stock: ReleaseReservation (a compensation: cancelled before shipping).
  --   payment_deadline: the timeout: still unpaid -> CANCELLED PAYMENT_TIMEOUT.
  kind text NOT NULL
    CHECK (kind IN ('reserve_stock', 'commit_stock', 'release_stock', 'payment_deadline')),
  due_at timestamptz NOT NULL DEFAULT now(),
  -- Failed attempts so far; the next is due after a capped exponential backoff.
  attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
  -- Why the last attempt failed (visible in the timeline and to operators).
  last_error text,
  created_at timestamptz NOT NULL DEFAULT now(),
  done_at timestamptz,
  -- One step of a kind per order: enqueueing it twice (a redelivered event,
  -- a retried request) is a no-op.
  UNIQUE (order_id, kind)
);

-- The worker's queue: what is due, oldest first.
CREATE INDEX order_saga_steps_due_idx ON order_saga_steps (due_at) WHERE done_at IS NULL;

-- New timeline kinds: the saga's stock compensations and commits, and a step
-- that failed and will be retried (a compensation is never dropped).
ALTER TABLE order_timeline DROP CONSTRAINT order_timeline_kind_check;
ALTER TABLE order_timeline ADD CONSTRAINT order_timeline_kind_check
  CHECK (kind IN ('placed', 'stock_reserved', 'stock_reservation_failed', 'payment_started',
                  'payment_failed', 'paid', 'cancelled', 'shipped', 'delivered', 'refunded',
                  'stock_released', 'stock_committed', 'step_retrying', 'payment_received'));

-- A payment that succeeded is recorded when its event arrives (payment_id,
-- payment_received_at), before the stock is committed and the order turns
-- PAID: the deadline then no longer applies, and a cancellation knows the
-- money must go back.
ALTER TABLE orders ADD COLUMN payment_received_at timestamptz;
ALTER TABLE orders ADD COLUMN paid_amount_minor bigint CHECK (paid_amount_minor >= 0);

-- Idempotency keys expire (MART_ORDER_IDEMPOTENCY_KEY_TTL, default 24 h):
-- an expired key is deleted when it is seen again, and pruned by the saga
-- worker. `completed` is false while the first request is still in flight
-- (a concurrent retry gets ABORTED/409, not a second order).
ALTER TABLE idempotency_keys ALTER COLUMN order_id DROP NOT NULL;
