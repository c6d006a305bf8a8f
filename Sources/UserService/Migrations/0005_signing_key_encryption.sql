-- The signing keys' private halves are sealed with a key-encryption key
-- from the environment (AES-256-GCM, the kid as authenticated data), whose
-- id is stored here; NULL marks a key stored before encryption, which the
-- service seals when it first signs.
ALTER TABLE signing_keys
  ADD COLUMN kek_id text CHECK (kek_id ~ '^[A-Za-z0-9._-]{1,64}$');
