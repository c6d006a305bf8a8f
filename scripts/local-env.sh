# shellcheck shell=bash
# Sourced by scripts/run.sh and scripts/mart.sh: the database URLs of the local cluster that
# `make run` keeps under .mart/, for every service whose MART_<SERVICE>_DATABASE_URL the caller
# has not set (URLs already in the environment are kept as they are).
LOCAL_DIR=.mart

export_local_database_urls() {
  local line var
  while IFS= read -r line; do
    [[ $line =~ ^export\ (MART_[A-Z]+_DATABASE_URL)=(.*)$ ]] || continue
    var=${BASH_REMATCH[1]}
    [[ -n "${!var:-}" ]] || export "$var=$(eval "printf '%s' ${BASH_REMATCH[2]}")"
  done <"$LOCAL_DIR/env"
}

# True when some service has no database URL in the environment.
needs_local_cluster() {
  local service var
  for service in user product inventory order payment notification; do
    var="MART_${service^^}_DATABASE_URL"
    [[ -n "${!var:-}" ]] || return 0
  done
  return 1
}

# The user service's key-encryption key for `make run`, unless the caller set one: made once and
# kept in .mart/kek (git-ignored, readable by this user only), so that the signing keys sealed in
# the local database still open after a restart. A random key per machine, never a fixed one.
export_local_key_encryption_key() {
  [[ -z ${MART_USER_KEY_ENCRYPTION_KEYS:-} ]] || return 0
  mkdir -p "$LOCAL_DIR"
  if [[ ! -s $LOCAL_DIR/kek ]]; then
    (umask 077 && printf 'local:%s\n' "$(head -c 32 /dev/urandom | base64 -w0)" >"$LOCAL_DIR/kek")
  fi
  MART_USER_KEY_ENCRYPTION_KEYS=$(<"$LOCAL_DIR/kek")
  export MART_USER_KEY_ENCRYPTION_KEYS
}
