-- Links that verify an account's email: a random single-use token, stored
-- only as its SHA-256 (like refresh tokens), for the address it was sent to
-- (a link for an address the account no longer has verifies nothing).
CREATE TABLE email_verifications (
  token_hash bytea PRIMARY KEY CHECK (octet_length(token_hash) = 32),
  user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  email text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  expires_at timestamptz NOT NULL,
  used_at timestamptz,
  CHECK (expires_at > created_at)
);

CREATE INDEX email_verifications_user_id_idx ON email_verifications (user_id);

-- Requests counted per key in a fixed window, for the quotas of Register and
-- ResendVerificationEmail. Key conventions:
--   'register:' || lower(email)   registrations for one email, taken or not
--   'register-ip:' || address     registrations from one client address
--   'resend:' || lower(email)     verification emails asked for one email
CREATE TABLE request_quotas (
  key text PRIMARY KEY CHECK (char_length(key) BETWEEN 1 AND 400),
  window_start timestamptz NOT NULL DEFAULT now(),
  requests integer NOT NULL DEFAULT 0 CHECK (requests >= 0)
);

CREATE INDEX request_quotas_window_start_idx ON request_quotas (window_start);
