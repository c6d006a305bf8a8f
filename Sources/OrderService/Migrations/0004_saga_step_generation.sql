-- OrderService, migration 0004: a saga step's generation.
--
-- A step armed again while a worker runs it (a release called for a second
-- time because a reservation landed after the cancellation) must run again:
-- `schedule` bumps the generation, and a worker marks the step done only if
-- the generation it leased is still the step's.
ALTER TABLE order_saga_steps ADD COLUMN generation bigint NOT NULL DEFAULT 0;
