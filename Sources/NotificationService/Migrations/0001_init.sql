-- NotificationService, migration 0001: initial schema of the notification
-- database. Per-user preferences, contact details learned from events,
-- in-app notifications, outbound email/SMS deliveries. (The outbox and inbox tables are
-- MartRuntime's shared migration 0002.)
--
-- Conventions (all Mart service databases): uuid primary keys from
-- gen_random_uuid() (built in since PostgreSQL 13); timestamptz everywhere;
-- an absent optional value is NULL, not '' (NULLIF($1, '') on write). Ids of
-- other services' entities (users, orders) are plain uuid columns: each
-- service owns its database, so no cross-database keys.

-- ---------------------------------------------------------------------------
-- Preferences (mart.notification.v1.NotificationPreferences)
-- ---------------------------------------------------------------------------

-- One row per user and configurable kind, only once the user has changed it:
-- a missing row means the defaults (email on, SMS off), so the defaults live
-- here too. WELCOME, LOW_STOCK and TEST are not configurable (the proto), so
-- the CHECK refuses rows for them; in-app notifications are always kept.
CREATE TABLE preferences (
  user_id uuid NOT NULL,
  kind text NOT NULL
    CHECK (kind IN ('order_placed', 'order_paid', 'order_cancelled', 'order_shipped',
                    'order_delivered', 'payment_failed', 'payment_refunded')),
  email_enabled boolean NOT NULL DEFAULT true,
  sms_enabled boolean NOT NULL DEFAULT false,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (user_id, kind)
);

-- ---------------------------------------------------------------------------
-- Contacts
-- ---------------------------------------------------------------------------

-- Where to reach a user, learned from UserRegistered events (so that sending
-- does not depend on the user service being up). Both are optional: a
-- delivery to a missing address is recorded as skipped.
CREATE TABLE contacts (
  user_id uuid PRIMARY KEY,
  email text CHECK (email LIKE '_%@_%'),
  -- E.164, as SMS providers expect.
  phone text CHECK (phone ~ '^\+[1-9][0-9]{6,14}$'),
  -- For the greeting ("Hi Alice").
  full_name text,
  updated_at timestamptz NOT NULL DEFAULT now()
);

-- ---------------------------------------------------------------------------
-- Notifications (mart.notification.v1.Notification): the in-app inbox
-- ---------------------------------------------------------------------------

CREATE TABLE notifications (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id uuid NOT NULL,
  -- Notification.Kind in lower case.
  kind text NOT NULL
    CHECK (kind IN ('welcome', 'order_placed', 'order_paid', 'order_cancelled', 'order_shipped',
                    'order_delivered', 'payment_failed', 'payment_refunded', 'low_stock', 'test')),
  title text NOT NULL CHECK (char_length(title) BETWEEN 1 AND 200),
  body text NOT NULL,
  -- The related order, if any.
  order_id uuid,
  -- The event that caused it (NULL for TEST notifications).
  source_event_id uuid,
  created_at timestamptz NOT NULL DEFAULT now(),
  read_at timestamptz,
  -- One notification per event and user (the proto's de-duplication rule):
  -- a re-delivered event cannot notify twice even if the inbox row was lost,
  -- while one LowStock event can still notify every admin.
  UNIQUE (source_event_id, user_id)
);

-- ListMyNotifications: newest first, keyset on (created_at, id).
CREATE INDEX notifications_user_id_created_at_id_idx ON notifications (user_id, created_at DESC, id DESC);

-- ---------------------------------------------------------------------------
-- Deliveries (mart.notification.v1.Delivery): outbound email / SMS
-- ---------------------------------------------------------------------------

CREATE TABLE deliveries (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  -- SET NULL: the delivery log is kept when old in-app notifications are
  -- pruned (it is the record of what was sent to whom).
  notification_id uuid REFERENCES notifications (id) ON DELETE SET NULL,
  user_id uuid NOT NULL,
  -- Copied from the notification, so the log stands on its own.
  kind text NOT NULL
    CHECK (kind IN ('welcome', 'order_placed', 'order_paid', 'order_cancelled', 'order_shipped',
                    'order_delivered', 'payment_failed', 'payment_refunded', 'low_stock', 'test')),
  -- Outbound channels only: in-app notifications are the notifications table.
  channel text NOT NULL CHECK (channel IN ('email', 'sms')),
  -- The full address or number the message goes to (the API masks it for
  -- display). It must fit the channel; NULL only when skipped for the lack of
  -- one.
  recipient text,
  CHECK (CASE channel
    WHEN 'email' THEN recipient LIKE '_%@_%'
    WHEN 'sms' THEN recipient ~ '^\+[1-9][0-9]{6,14}$'
    END),
  -- Delivery.Status in lower case.
  status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'failed', 'skipped')),
  CHECK (recipient IS NOT NULL OR status = 'skipped'),
  attempt_count integer NOT NULL DEFAULT 0 CHECK (attempt_count >= 0),
  last_error text,
  provider_message_id text,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  sent_at timestamptz,
  -- When the sender should (re)try. Set exactly while pending, so the
  -- work-queue index below holds exactly the deliveries still to do, and a
  -- pending delivery can never be forgotten for lack of a schedule.
  next_attempt_at timestamptz,
  CHECK ((status = 'pending') = (next_attempt_at IS NOT NULL)),
  CHECK ((status = 'sent') = (sent_at IS NOT NULL)),
  -- Only something that was tried can have been sent or have failed.
  CHECK (status NOT IN ('sent', 'failed') OR attempt_count > 0),
  -- One delivery per notification and channel: retries update the row
  -- (attempt_count), and a re-processed event cannot send twice.
  UNIQUE (notification_id, channel)
);

-- The sender's work queue: pending deliveries that are due, oldest first.
-- Claim with SELECT ... WHERE status = 'pending' AND next_attempt_at <= now()
-- ORDER BY next_attempt_at LIMIT n FOR UPDATE SKIP LOCKED.
CREATE INDEX deliveries_pending_next_attempt_at_idx ON deliveries (next_attempt_at)
  WHERE status = 'pending';

-- ListDeliveries (admin): newest first, all or one user's.
CREATE INDEX deliveries_created_at_id_idx ON deliveries (created_at DESC, id DESC);
CREATE INDEX deliveries_user_id_created_at_id_idx ON deliveries (user_id, created_at DESC, id DESC);
