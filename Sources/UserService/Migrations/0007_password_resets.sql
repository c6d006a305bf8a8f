-- Links that set a new password: a random single-use token, stored only as
-- its SHA-256 (like email_verifications), for the address it was sent to (a
-- link for an address the account no longer has resets nothing).
CREATE TABLE password_resets (
  token_hash bytea PRIMARY KEY CHECK (octet_length(token_hash) = 32),
  user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  email text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  expires_at timestamptz NOT NULL,
  used_at timestamptz,
  CHECK (expires_at > created_at)
);

CREATE INDEX password_resets_user_id_idx ON password_resets (user_id);
-- A link is done when it expires or is used, whichever comes first: the housekeeping sweeper
-- (UserHousekeeping) deletes links done long ago by this index.
CREATE INDEX password_resets_finished_at_idx ON password_resets (least(expires_at, used_at));
