-- UserService, migration 0001: initial schema of the user database.
-- Accounts, address book, rotating refresh tokens, JWT signing keys, login
-- throttling. (The outbox and inbox tables are
-- MartRuntime's shared migration 0002.)
--
-- Conventions (all Mart service databases): uuid primary keys from
-- gen_random_uuid() (built in since PostgreSQL 13); timestamptz everywhere;
-- an absent optional value is NULL, not '' (map '' to NULL with NULLIF($1, '')
-- when writing a proto3 string). Ids of other services' entities are plain
-- uuid columns: each service owns its database, so no cross-database keys.

-- ---------------------------------------------------------------------------
-- Accounts
-- ---------------------------------------------------------------------------

CREATE TABLE users (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  -- The proto (mart.user.v1.User.email) says the email is stored lower-cased;
  -- the CHECK holds the service to that. Lower-case it in SQL (lower($1)) so
  -- that the same function decides what "lower case" means on write and on
  -- lookup. The loose shape check only keeps obvious garbage out; real
  -- validation is the service's job. 254 = longest usable address (RFC 5321).
  email text NOT NULL
    CHECK (email = lower(email))
    CHECK (email = btrim(email) AND char_length(email) BETWEEN 3 AND 254 AND email LIKE '_%@_%'),
  -- A memory-hard password hash in PHC string format, e.g.
  -- $argon2id$v=19$m=65536,t=3,p=1$<salt>$<hash> or $scrypt$ln=15,r=8,p=1$...
  -- The format check guarantees that nobody stores a plain-text password or a
  -- bare unsalted digest here by mistake.
  password_hash text NOT NULL CHECK (password_hash ~ '^\$[a-z0-9-]+(\$[^$]*)+$'),
  full_name text NOT NULL CHECK (char_length(full_name) BETWEEN 1 AND 200),
  -- E.164 (the proto's format, and what SMS providers accept); NULL if none.
  phone text CHECK (phone ~ '^\+[1-9][0-9]{6,14}$'),
  -- Roles as lower-case names of mart.user.v1.User.Role (customer, admin),
  -- plus 'service' for machine accounts of other Mart services. The proto
  -- promises every user holds CUSTOMER. Array elements cannot be NULL (a NULL
  -- element would make the <@ test unknown, and a CHECK passes on unknown).
  roles text[] NOT NULL DEFAULT '{customer}'
    CHECK (roles <@ ARRAY['customer', 'admin', 'service']::text[])
    CHECK ('customer' = ANY (roles))
    CHECK (array_position(roles, NULL) IS NULL AND array_ndims(roles) = 1),
  email_verified_at timestamptz,
  last_login_at timestamptz,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  -- A disabled account cannot log in or refresh; its data is kept.
  disabled_at timestamptz
);

-- One account per email regardless of case. Together with the lower-case
-- CHECK this is belt and braces: should the CHECK ever be dropped (e.g. to
-- keep the user's spelling), the index still refuses Alice@x and alice@x.
-- Login looks the user up with WHERE lower(email) = lower($1), which uses it.
CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email));

-- ListUsers: newest first, keyset pagination on (created_at, id).
CREATE INDEX users_created_at_id_idx ON users (created_at DESC, id DESC);

-- ListUsers(role: ADMIN) and the LAST_ADMIN check of SetRoles.
CREATE INDEX users_roles_idx ON users USING gin (roles);

-- ---------------------------------------------------------------------------
-- Address book (mart.user.v1.UserAddress with a mart.common.v1.Address)
-- ---------------------------------------------------------------------------

CREATE TABLE addresses (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  label text CHECK (char_length(label) <= 50),
  recipient_name text NOT NULL CHECK (char_length(recipient_name) BETWEEN 1 AND 200),
  -- Address.lines holds one to three street lines; a later line only exists
  -- if the earlier one does, so the repeated field round-trips in order.
  line1 text NOT NULL CHECK (char_length(line1) BETWEEN 1 AND 200),
  line2 text CHECK (char_length(line2) BETWEEN 1 AND 200),
  line3 text CHECK (char_length(line3) BETWEEN 1 AND 200),
  city text NOT NULL CHECK (char_length(city) BETWEEN 1 AND 100),
  region text,
  -- Nullable: not every country has postal codes.
  postal_code text,
  -- ISO 3166-1 alpha-2, upper case. char(2) would pad 'Z' to 'Z ', which the
  -- pattern rejects (the cast to text drops the padding).
  country_code char(2) NOT NULL CHECK (country_code ~ '^[A-Z]{2}$'),
  phone text CHECK (phone ~ '^\+[1-9][0-9]{6,14}$'),
  is_default boolean NOT NULL DEFAULT false,
  created_at timestamptz NOT NULL DEFAULT now(),
  CHECK (line3 IS NULL OR line2 IS NOT NULL)
);

-- At most one default address per user. To move the default, clear the old
-- one before setting the new one in the same transaction (a unique index is
-- checked row by row, not at commit).
CREATE UNIQUE INDEX addresses_one_default_per_user ON addresses (user_id) WHERE is_default;

-- ListMyAddresses: a user's addresses, newest first (default first is a
-- cheap re-sort of a handful of rows).
CREATE INDEX addresses_user_id_created_at_idx ON addresses (user_id, created_at DESC, id DESC);

-- ---------------------------------------------------------------------------
-- Refresh tokens (rotating, single use, reuse detection by family)
-- ---------------------------------------------------------------------------

-- A login starts a family; every Refresh marks the presented token used and
-- issues its successor in the same family. Presenting a used token again is
-- reuse (a stolen token): the service revokes the whole family.
CREATE TABLE refresh_tokens (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  family_id uuid NOT NULL,
  user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  -- SHA-256 of the opaque token: a database leak must not yield usable
  -- tokens, and a random 256-bit token needs no slow hash. Unique because the
  -- hash is how a presented token is found.
  token_hash bytea NOT NULL UNIQUE CHECK (octet_length(token_hash) = 32),
  created_at timestamptz NOT NULL DEFAULT now(),
  expires_at timestamptz NOT NULL,
  -- Set once, when the token is exchanged. Spend it with
  --   UPDATE ... SET used_at = now() WHERE token_hash = $1 AND used_at IS NULL
  --   AND revoked_at IS NULL AND expires_at > now() RETURNING ...
  -- so that two concurrent Refresh calls cannot both succeed.
  used_at timestamptz,
  revoked_at timestamptz,
  -- The successor issued when this token was used.
  replaced_by uuid REFERENCES refresh_tokens (id) ON DELETE SET NULL,
  -- Only a used token has a successor, and not itself.
  CHECK (replaced_by IS NULL OR (used_at IS NOT NULL AND replaced_by <> id)),
  -- A token is the successor of at most one token: a family is a chain.
  UNIQUE (replaced_by)
);

-- A family has at most one live (unused, unrevoked) token: its head. This is
-- the rotation invariant in the database: issuing a second successor without
-- spending the current head fails with a unique violation.
CREATE UNIQUE INDEX refresh_tokens_one_live_per_family
  ON refresh_tokens (family_id) WHERE used_at IS NULL AND revoked_at IS NULL;

-- Revoking a family on reuse (all its tokens, not only the live one).
CREATE INDEX refresh_tokens_family_id_idx ON refresh_tokens (family_id);

-- Logout(all_sessions) and account disabling: revoke every token of a user.
CREATE INDEX refresh_tokens_user_id_idx ON refresh_tokens (user_id);

-- Pruning expired tokens.
CREATE INDEX refresh_tokens_expires_at_idx ON refresh_tokens (expires_at);

-- ---------------------------------------------------------------------------
-- JWT signing keys (published through GetJwks)
-- ---------------------------------------------------------------------------

-- Lifecycle of a key: created -> signs new access tokens until retire_after ->
-- still published (to verify tokens it signed) until expires_at -> dropped.
-- The service signs with the newest key whose retire_after is in the future.
CREATE TABLE signing_keys (
  -- The JWT "kid" header: URL-safe, because it appears in tokens and JWKS.
  kid text PRIMARY KEY CHECK (kid ~ '^[A-Za-z0-9_-]{1,64}$'),
  -- Asymmetric algorithms only: the public half is published for every
  -- service to verify tokens with, and an HMAC secret must never be.
  algorithm text NOT NULL
    CHECK (algorithm IN ('EdDSA', 'ES256', 'ES384', 'ES512', 'RS256', 'RS384', 'RS512',
                         'PS256', 'PS384', 'PS512')),
  -- The private key as the service serialises it (PEM as UTF-8, or DER).
  -- FUTURE WORK: encrypt at rest (envelope encryption with a key from outside
  -- the database). bytea rather than text so that ciphertext fits unchanged.
  private_key bytea NOT NULL CHECK (octet_length(private_key) > 0),
  -- The public JWK exactly as GetJwks serves it. It must be a JSON object and
  -- must not contain "d", the private part of EC, OKP and RSA keys (nor the
  -- RSA CRT members p, q, dp, dq, qi), so that a coding slip cannot publish
  -- the private key. If it names its "kid" it must be this row's kid.
  public_jwk jsonb NOT NULL
    CHECK (jsonb_typeof(public_jwk) = 'object' AND public_jwk ? 'kty')
    CHECK (NOT (public_jwk ?| ARRAY['d', 'p', 'q', 'dp', 'dq', 'qi', 'k']))
    CHECK (NOT (public_jwk ? 'kid') OR public_jwk ->> 'kid' = kid),
  created_at timestamptz NOT NULL DEFAULT now(),
  -- Stop signing new tokens with it after this time.
  retire_after timestamptz NOT NULL,
  -- Stop publishing it (and accepting tokens signed by it) after this time.
  -- It must outlive retirement by at least the access-token lifetime, so the
  -- last tokens it signed still verify; the database can only insist on order.
  expires_at timestamptz NOT NULL,
  CHECK (expires_at > retire_after)
);

-- ---------------------------------------------------------------------------
-- Login throttling
-- ---------------------------------------------------------------------------

-- Failed logins counted per key over a window, to slow down password
-- guessing against one account and from one client address. Key conventions:
--   'account:' || lower(email)   (counts even for unknown emails, so that the
--                                 throttle does not reveal which exist)
--   'ip:' || client address      (or a /64 prefix for IPv6)
-- Update with INSERT ... ON CONFLICT (key) DO UPDATE, restarting the window
-- when window_start is too old; a successful login deletes the account row.
CREATE TABLE login_failures (
  key text PRIMARY KEY CHECK (char_length(key) BETWEEN 1 AND 400),
  window_start timestamptz NOT NULL DEFAULT now(),
  failures integer NOT NULL DEFAULT 0 CHECK (failures >= 0),
  -- While in the future, logins for this key are refused (RATE_LIMITED)
  -- without checking the password.
  locked_until timestamptz,
  updated_at timestamptz NOT NULL DEFAULT now()
);

-- Pruning stale counters.
CREATE INDEX login_failures_updated_at_idx ON login_failures (updated_at);
