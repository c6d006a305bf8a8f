#!/bin/bash
# The official postgres image's first-run behaviour, for the Debian-packaged stand-in
# (deploy/test/postgres.Dockerfile). Runs as root, then drops to the postgres user.
set -euo pipefail
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}"
chown -R postgres:postgres "$PGDATA" /var/run/postgresql
as_postgres() { runuser -u postgres -- "$@"; }
if [[ ! -s $PGDATA/PG_VERSION ]]; then
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  chown postgres "$pwfile"
  as_postgres initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust \
    --auth-host=scram-sha-256 -D "$PGDATA" >/dev/null
  rm -f "$pwfile"
  printf 'host all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
  # The init scripts run against a server on the socket only, as the official image does.
  as_postgres pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
  for script in /docker-entrypoint-initdb.d/*; do
    case $script in
      # runuser keeps the environment: the script reads its passwords from it.
      *.sh) echo "postgres-entrypoint: running $script"; POSTGRES_USER=$POSTGRES_USER as_postgres sh "$script" ;;
      *.sql) echo "postgres-entrypoint: running $script"; as_postgres psql -v ON_ERROR_STOP=1 \
               --username "$POSTGRES_USER" --dbname postgres -f "$script" ;;
    esac
  done
  as_postgres pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
fi
exec runuser -u postgres -- postgres -D "$PGDATA" -c listen_addresses='*'
