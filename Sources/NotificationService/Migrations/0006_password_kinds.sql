-- Two more account notices from the user service: the link that sets a new
-- password (password_reset) and "your password changed" (password_changed).
ALTER TABLE notifications DROP CONSTRAINT notifications_kind_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_kind_check
  CHECK (kind IN ('welcome', 'order_placed', 'order_paid', 'order_cancelled', 'order_shipped',
                  'order_delivered', 'payment_failed', 'payment_refunded', 'low_stock', 'test',
                  'roles_changed', 'verify_email', 'registration_attempted', 'password_reset',
                  'password_changed'));

ALTER TABLE deliveries DROP CONSTRAINT deliveries_kind_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_kind_check
  CHECK (kind IN ('welcome', 'order_placed', 'order_paid', 'order_cancelled', 'order_shipped',
                  'order_delivered', 'payment_failed', 'payment_refunded', 'low_stock', 'test',
                  'roles_changed', 'verify_email', 'registration_attempted', 'password_reset',
                  'password_changed'));
