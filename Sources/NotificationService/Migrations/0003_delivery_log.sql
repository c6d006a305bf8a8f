-- NotificationService, migration 0003: the user projection, preferences per category, and the
-- delivery log that sends each message once per event, channel and recipient.
--
-- 0001's contacts, preferences and deliveries were never written (the service had no handlers
-- until this migration), so they are replaced rather than altered.

DROP TABLE deliveries;
DROP TABLE preferences;
DROP TABLE contacts;

-- ---------------------------------------------------------------------------
-- Users: what this service knows of each account, from the user service's events
-- ---------------------------------------------------------------------------

-- Built from UserRegistered and UserUpdated, which carry the whole state and the account's
-- version: a row is replaced only by a higher version, so a redelivered or reordered event
-- changes nothing. This service never reads the user database.
CREATE TABLE users (
  user_id uuid PRIMARY KEY,
  email text CHECK (email LIKE '_%@_%'),
  -- E.164, as SMS providers expect.
  phone text CHECK (phone ~ '^\+[1-9][0-9]{6,14}$'),
  full_name text,
  -- BCP 47 ("en", "en-ZA"): picks the templates' language.
  locale text NOT NULL DEFAULT 'en',
  -- Low-stock alerts go to every admin.
  is_admin boolean NOT NULL DEFAULT false,
  version bigint NOT NULL CHECK (version >= 1),
  updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX users_admins_idx ON users (user_id) WHERE is_admin;

-- ---------------------------------------------------------------------------
-- Preferences (NotificationPreferences): one row per user and category, once changed
-- ---------------------------------------------------------------------------

-- A missing row means the category's defaults (email on and SMS off; marketing off on both).
CREATE TABLE preferences (
  user_id uuid NOT NULL,
  category text NOT NULL CHECK (category IN ('orders', 'account', 'marketing')),
  email_enabled boolean NOT NULL,
  sms_enabled boolean NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (user_id, category)
);

-- ---------------------------------------------------------------------------
-- Notifications: the in-app inbox
-- ---------------------------------------------------------------------------

ALTER TABLE notifications DROP CONSTRAINT notifications_kind_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_kind_check
  CHECK (kind IN ('welcome', 'order_placed', 'order_paid', 'order_cancelled', 'order_shipped',
                  'order_delivered', 'payment_failed', 'payment_refunded', 'low_stock', 'test',
                  'roles_changed'));

-- The unread count of ListMyNotifications.
CREATE INDEX notifications_unread_idx ON notifications (user_id) WHERE read_at IS NULL;

-- ---------------------------------------------------------------------------
-- Deliveries (Delivery): one email or SMS, from queued to sent, failed or skipped
-- ---------------------------------------------------------------------------

CREATE TABLE deliveries (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  -- SET NULL: the log outlives pruned in-app notifications.
  notification_id uuid REFERENCES notifications (id) ON DELETE SET NULL,
  -- The event that caused it; NULL for TEST deliveries.
  source_event_id uuid,
  user_id uuid NOT NULL,
  kind text NOT NULL
    CHECK (kind IN ('welcome', 'order_placed', 'order_paid', 'order_cancelled', 'order_shipped',
                    'order_delivered', 'payment_failed', 'payment_refunded', 'low_stock', 'test',
                    'roles_changed')),
  channel text NOT NULL CHECK (channel IN ('email', 'sms')),
  -- The address or number; NULL until the user's details are known (an event can overtake the
  -- user's registration across topics), then filled in by the sender, or skipped.
  recipient text,
  CHECK (recipient IS NULL OR CASE channel
    WHEN 'email' THEN recipient LIKE '_%@_%'
    WHEN 'sms' THEN recipient ~ '^\+[1-9][0-9]{6,14}$'
    END),
  -- The template's values, rendered when sent in the recipient's language.
  template_data jsonb NOT NULL DEFAULT '{}',
  -- The Message-ID every attempt of this email carries: a second send after a crash between the
  -- provider's accept and our commit is recognisable as the same message.
  message_id text NOT NULL,
  status text NOT NULL DEFAULT 'queued'
    CHECK (status IN ('queued', 'sending', 'sent', 'failed', 'retrying', 'skipped')),
  attempt_count integer NOT NULL DEFAULT 0 CHECK (attempt_count >= 0),
  last_error text,
  -- The provider's id: the SMTP server's reply, Twilio's message SID. Kept the moment it is known.
  provider_message_id text,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  sent_at timestamptz,
  -- When the sender looks at it next: queued and retrying, when due; sending, when its lease
  -- ends (a sender that died mid-send leaves it there, and another takes it up again).
  next_attempt_at timestamptz,
  CHECK ((status IN ('queued', 'sending', 'retrying')) = (next_attempt_at IS NOT NULL)),
  CHECK ((status = 'sent') = (sent_at IS NOT NULL)),
  CHECK (status NOT IN ('sent', 'failed', 'sending', 'retrying') OR attempt_count > 0),
  CHECK (status <> 'sent' OR recipient IS NOT NULL),
  -- Exactly one delivery per event, channel and recipient: a redelivered event, or the same
  -- event handled twice, cannot queue a second message.
  UNIQUE (source_event_id, channel, user_id)
);

-- The sender's work queue: what is due, oldest first.
CREATE INDEX deliveries_due_idx ON deliveries (next_attempt_at)
  WHERE status IN ('queued', 'sending', 'retrying');

-- ListDeliveries (admin): newest first, all or one user's.
CREATE INDEX deliveries_created_at_id_idx ON deliveries (created_at DESC, id DESC);
CREATE INDEX deliveries_user_id_created_at_id_idx ON deliveries (user_id, created_at DESC, id DESC);
CREATE INDEX deliveries_notification_id_idx ON deliveries (notification_id);
