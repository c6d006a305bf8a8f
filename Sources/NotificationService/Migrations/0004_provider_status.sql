-- NotificationService, migration 0004: what a provider says of a message after taking it.
--
-- Twilio's status callbacks report a text's later fate (delivered, undelivered, failed). SENT
-- stays SENT (the provider took the message, and NotificationSent is out); the callback's word is
-- kept beside it, found by the message SID.
ALTER TABLE deliveries ADD COLUMN provider_status text;
ALTER TABLE deliveries ADD COLUMN provider_status_at timestamptz;

CREATE INDEX deliveries_provider_message_id_idx ON deliveries (provider_message_id)
  WHERE channel = 'sms' AND provider_message_id IS NOT NULL;
