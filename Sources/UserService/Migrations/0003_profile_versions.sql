-- UserService, migration 0003: what other services keep of an account.
--
-- The notification service keeps its own copy of each account's contact details, language and
-- roles, built from UserRegistered and UserUpdated (it never reads this database). Those events
-- carry the whole state and a version, so a copy applies one only when it is newer: a redelivered
-- or reordered event changes nothing.

-- Preferred language of messages, BCP 47: a language with an optional region ("en", "en-ZA").
ALTER TABLE users ADD COLUMN locale text NOT NULL DEFAULT 'en'
  CHECK (locale ~ '^[a-z]{2,3}(-[A-Z]{2})?$');

-- One more at every change of what the events carry. The trigger counts, not the statements, so
-- no UPDATE can change the account without a new version.
ALTER TABLE users ADD COLUMN version bigint NOT NULL DEFAULT 1 CHECK (version >= 1);

CREATE FUNCTION users_count_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF (NEW.email, NEW.full_name, NEW.phone, NEW.roles, NEW.locale)
     IS DISTINCT FROM (OLD.email, OLD.full_name, OLD.phone, OLD.roles, OLD.locale) THEN
    NEW.version := OLD.version + 1;
  ELSE
    NEW.version := OLD.version;
  END IF;
  RETURN NEW;
END
$$;

CREATE TRIGGER users_count_version BEFORE UPDATE ON users
  FOR EACH ROW EXECUTE FUNCTION users_count_version();
