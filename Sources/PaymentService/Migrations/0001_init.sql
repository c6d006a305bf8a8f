-- PaymentService, migration 0001: initial schema of the payment database.
-- Payments (sandbox, Stripe, PayFast), refunds, received provider webhooks.
-- (The outbox and inbox tables are
-- MartRuntime's shared migration 0002.)
--
-- Conventions (all Mart service databases): uuid primary keys from
-- gen_random_uuid() (built in since PostgreSQL 13); timestamptz everywhere;
-- money as bigint minor units plus a char(3) ISO-4217 code, never floating
-- point; an absent optional value is NULL, not '' (NULLIF($1, '') on write).
-- Ids of other services' entities (orders, users) are plain uuid columns:
-- each service owns its database, so no cross-database keys.

-- ---------------------------------------------------------------------------
-- Payments (mart.payment.v1.Payment)
-- ---------------------------------------------------------------------------

CREATE TABLE payments (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  order_id uuid NOT NULL,
  user_id uuid NOT NULL,
  -- PaymentProvider in lower case.
  provider text NOT NULL CHECK (provider IN ('sandbox', 'stripe', 'payfast')),
  -- Stripe PaymentIntent id, PayFast pf_payment_id, or the sandbox's id; NULL
  -- until the provider has assigned one (PayFast assigns it in the ITN).
  provider_payment_id text CHECK (provider_payment_id <> ''),
  -- Payment.Status in lower case.
  status text NOT NULL DEFAULT 'pending'
    CHECK (status IN ('pending', 'processing', 'succeeded', 'failed', 'cancelled',
                      'partially_refunded', 'refunded')),
  -- The order total when the payment was created (read from the order
  -- service, never from the client). A zero total needs no payment.
  amount_minor bigint NOT NULL CHECK (amount_minor > 0),
  currency char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
  -- Sum of the succeeded refunds. Never more than was paid.
  refunded_minor bigint NOT NULL DEFAULT 0
    CONSTRAINT payments_refunded_within_amount CHECK (refunded_minor >= 0 AND refunded_minor <= amount_minor),
  -- The status tells how much was refunded, and only a payment that took
  -- money can have refunds: 'refunded' = all of it, 'partially_refunded' =
  -- some of it, every other status = none.
  CONSTRAINT payments_refund_status CHECK (CASE status
    WHEN 'refunded' THEN refunded_minor = amount_minor
    WHEN 'partially_refunded' THEN refunded_minor > 0 AND refunded_minor < amount_minor
    ELSE refunded_minor = 0 END),
  -- Stripe's PaymentIntent client secret, handed back on an idempotent
  -- retry of CreatePayment. It lets its holder confirm this one payment, so
  -- it is shown only to the payment's own customer and never logged.
  client_secret text,
  -- PayFast: where the browser posts the payment form.
  redirect_url text,
  -- When failed: the provider's decline code and a readable message.
  failure_code text,
  failure_message text,
  -- CreatePayment's client idempotency key (see the unique index below).
  request_id text CHECK (char_length(request_id) BETWEEN 1 AND 200),
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  succeeded_at timestamptz,
  -- A payment that took money records when (refunded ones too, since they
  -- succeeded first).
  CHECK (status NOT IN ('succeeded', 'partially_refunded', 'refunded') OR succeeded_at IS NOT NULL)
);

-- Webhooks find the payment by the provider's id; one provider object maps to
-- one payment. (Unique constraints already treat NULLs as distinct; the
-- predicate just keeps not-yet-assigned rows out of the index.)
CREATE UNIQUE INDEX payments_provider_payment_id_key ON payments (provider, provider_payment_id)
  WHERE provider_payment_id IS NOT NULL;

-- At most one payment per order takes the money: the database refuses a
-- second success, so a duplicate or late webhook cannot charge an order
-- twice. Refunded payments count, because they succeeded (a partially
-- refunded payment plus a new success would be a double charge).
CREATE UNIQUE INDEX payments_one_success_per_order ON payments (order_id)
  WHERE status IN ('succeeded', 'partially_refunded', 'refunded');

-- At most one payment per order in flight. CreatePayment cancels an earlier
-- PENDING payment before creating the new one (as payment.proto says); a
-- PROCESSING one cannot be cancelled, so a new attempt is refused while it
-- runs. Two live attempts could otherwise both be paid by the customer.
CREATE UNIQUE INDEX payments_one_open_per_order ON payments (order_id)
  WHERE status IN ('pending', 'processing');

-- CreatePayment idempotency: a retry with the same key returns the first
-- call's payment. Keyed per user, so customers cannot collide or probe;
-- the same key for another order is IDEMPOTENCY_KEY_REUSED.
CREATE UNIQUE INDEX payments_user_id_request_id_key ON payments (user_id, request_id)
  WHERE request_id IS NOT NULL;

-- ListOrderPayments: newest first, keyset on (created_at, id).
CREATE INDEX payments_order_id_created_at_id_idx ON payments (order_id, created_at DESC, id DESC);

-- ---------------------------------------------------------------------------
-- Refunds (mart.payment.v1.Refund)
-- ---------------------------------------------------------------------------

CREATE TABLE refunds (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  -- NO ACTION: a payment with refunds is money history and is never deleted.
  payment_id uuid NOT NULL REFERENCES payments (id),
  -- In the payment's currency.
  amount_minor bigint NOT NULL CHECK (amount_minor > 0),
  status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'succeeded', 'failed')),
  reason text,
  -- The provider's refund id, once known. Refund ids are unique at each
  -- provider and the providers' formats do not overlap (Stripe "re_...").
  provider_refund_id text CHECK (provider_refund_id <> ''),
  -- The admin who asked for it; NULL for automatic refunds (OrderCancelled).
  actor_user_id uuid,
  -- RefundPayment's client idempotency key (see the unique index below).
  request_id text CHECK (char_length(request_id) BETWEEN 1 AND 200),
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);

-- GetPayment lists a payment's refunds, oldest first.
CREATE INDEX refunds_payment_id_created_at_idx ON refunds (payment_id, created_at, id);

-- Refund webhooks find the refund by the provider's id.
CREATE UNIQUE INDEX refunds_provider_refund_id_key ON refunds (provider_refund_id)
  WHERE provider_refund_id IS NOT NULL;

-- RefundPayment idempotency: a retry with the same key returns the first
-- refund instead of refunding twice.
CREATE UNIQUE INDEX refunds_payment_id_request_id_key ON refunds (payment_id, request_id)
  WHERE request_id IS NOT NULL;

-- Never refund more than was paid, and only what took money. Pending refunds
-- count as well as succeeded ones: a refund asked of the provider may still
-- go through. The payment row is locked first, so concurrent refunds of one
-- payment are checked one after the other, each seeing the others' rows
-- (REFUND_NOT_ALLOWED in the API; here SQLSTATE 23514).
CREATE FUNCTION refunds_within_payment() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  payment_status text;
  payment_amount bigint;
  committed_refunds numeric;
BEGIN
  SELECT status, amount_minor INTO payment_status, payment_amount
    FROM payments WHERE id = NEW.payment_id FOR UPDATE;
  IF NOT FOUND THEN
    RETURN NEW;  -- the foreign key reports the missing payment
  END IF;
  IF TG_OP = 'INSERT' AND payment_status NOT IN ('succeeded', 'partially_refunded') THEN
    RAISE EXCEPTION 'payment % is %, only a succeeded payment can be refunded', NEW.payment_id, payment_status
      USING ERRCODE = 'check_violation';
  END IF;
  IF NEW.status IN ('pending', 'succeeded') THEN
    SELECT coalesce(sum(amount_minor), 0) INTO committed_refunds
      FROM refunds
      WHERE payment_id = NEW.payment_id AND status IN ('pending', 'succeeded') AND id <> NEW.id;
    IF committed_refunds + NEW.amount_minor > payment_amount THEN
      RAISE EXCEPTION 'refunds of payment % would exceed its amount', NEW.payment_id
        USING ERRCODE = 'check_violation',
              DETAIL = format('paid %s, already refunded or pending %s, this refund %s',
                              payment_amount, committed_refunds, NEW.amount_minor);
    END IF;
  END IF;
  RETURN NEW;
END;
$$;

CREATE TRIGGER refunds_within_payment
  BEFORE INSERT OR UPDATE OF payment_id, amount_minor, status ON refunds
  FOR EACH ROW EXECUTE FUNCTION refunds_within_payment();

-- ---------------------------------------------------------------------------
-- Provider webhooks
-- ---------------------------------------------------------------------------

-- Every verified webhook delivery, keyed by the provider's event id: insert
-- it (ON CONFLICT DO NOTHING) in the transaction that applies its effect, and
-- skip the effect if the row already existed. Providers retry until they get
-- a 2xx, so duplicates are normal. Stripe events have an id ("evt_...");
-- a PayFast ITN has none, so use pf_payment_id || ':' || payment_status.
CREATE TABLE webhook_events (
  provider text NOT NULL CHECK (provider IN ('sandbox', 'stripe', 'payfast')),
  provider_event_id text NOT NULL CHECK (provider_event_id <> ''),
  received_at timestamptz NOT NULL DEFAULT now(),
  -- The raw body exactly as received (signatures are over these bytes), for
  -- audits and replays.
  payload bytea NOT NULL,
  PRIMARY KEY (provider, provider_event_id)
);

-- Pruning old deliveries.
CREATE INDEX webhook_events_received_at_idx ON webhook_events (received_at);
