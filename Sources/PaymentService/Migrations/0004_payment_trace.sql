-- PaymentService, migration 0004: the trace a payment's provider news continues.
--
-- Stripe's webhook and PayFast's ITN arrive in traces of their own. The W3C traceparent of the
-- CreatePayment that made the payment lets what they cause (PaymentSucceeded, OrderPaid) join
-- the checkout's trace. NULL for payments made before this migration or outside any trace.
ALTER TABLE payments ADD COLUMN traceparent text;
