-- OrderService, migration 0006: the trace a saga step continues.
--
-- A step runs in the saga worker, long after the request or event that scheduled it; the W3C
-- traceparent of the span that scheduled it lets its span (and its ReserveStock or
-- CommitReservation call) join that trace. NULL for steps scheduled before this migration, or
-- outside any trace.
ALTER TABLE order_saga_steps ADD COLUMN traceparent text;
