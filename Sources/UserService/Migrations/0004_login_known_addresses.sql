-- The client addresses each account has signed in from (an IPv6 address by
-- its /64), so that a lockout of the account by someone else's guesses does
-- not refuse its owner's correct password from a place it has used before.
-- The account is its login-throttle key ('account:' || lower(email)), the
-- same whether or not an account exists; a row is only ever written by a
-- successful login.
CREATE TABLE login_known_addresses (
  account text NOT NULL CHECK (char_length(account) BETWEEN 1 AND 400),
  address text NOT NULL CHECK (char_length(address) BETWEEN 1 AND 100),
  last_success_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (account, address)
);

-- Pruning addresses not used for a long time.
CREATE INDEX login_known_addresses_last_success_at_idx ON login_known_addresses (last_success_at);
