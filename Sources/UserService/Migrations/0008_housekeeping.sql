-- UserService, migration 0008: what the housekeeping sweeper (UserHousekeeping) looks rows up by,
-- so that each of its rounds reads an index range instead of the whole table.

-- A refresh-token family ends with its head (the token no successor replaced): when the head has
-- expired or been revoked, so has every token before it. least() skips a NULL revoked_at.
CREATE INDEX refresh_tokens_head_finished_at_idx ON refresh_tokens (least(expires_at, revoked_at))
  WHERE replaced_by IS NULL;

-- A verification link is done when it expires or is used, whichever comes first.
CREATE INDEX email_verifications_finished_at_idx ON email_verifications (least(expires_at, used_at));
