-- PaymentService, migration 0003: calls to providers that are retried, and money that arrived
-- twice.
--
-- A call to a provider (create a PaymentIntent, refund) that timed out or met a 5xx may or may
-- not have happened at the provider. It is retried, with the same idempotency key, until it
-- has a definite answer: the row says when next (`provider_call_due_at`), how often it was
-- tried and the last error. NULL due time = nothing to call.

ALTER TABLE payments
  ADD COLUMN provider_call_due_at timestamptz,
  ADD COLUMN provider_call_attempts integer NOT NULL DEFAULT 0 CHECK (provider_call_attempts >= 0),
  ADD COLUMN provider_call_error text,
  -- The order's number and payment deadline when the payment was created (PayFast's item name;
  -- the worker stops retrying a create after the deadline).
  ADD COLUMN order_number text,
  ADD COLUMN order_deadline timestamptz,
  -- Money that arrived for an order another payment had already paid (two webhooks racing, or
  -- a superseded checkout the customer completed anyway). It succeeded, so it is recorded as
  -- such, but it is not the order's payment: it is refunded in full automatically.
  ADD COLUMN surplus boolean NOT NULL DEFAULT false,
  ADD CONSTRAINT payments_surplus_took_money CHECK (
    NOT surplus OR status IN ('succeeded', 'partially_refunded', 'refunded'));

ALTER TABLE refunds
  ADD COLUMN provider_call_due_at timestamptz,
  ADD COLUMN provider_call_attempts integer NOT NULL DEFAULT 0 CHECK (provider_call_attempts >= 0),
  ADD COLUMN provider_call_error text;

-- The order's one capture: a surplus payment is not the order's payment, so it stays out.
DROP INDEX payments_one_success_per_order;
CREATE UNIQUE INDEX payments_one_success_per_order ON payments (order_id)
  WHERE status IN ('succeeded', 'partially_refunded', 'refunded') AND NOT surplus;

-- The worker's queues.
CREATE INDEX payments_provider_call_due_idx ON payments (provider_call_due_at)
  WHERE provider_call_due_at IS NOT NULL;
CREATE INDEX refunds_provider_call_due_idx ON refunds (provider_call_due_at)
  WHERE provider_call_due_at IS NOT NULL;
