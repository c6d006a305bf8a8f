# PostgreSQL 15 from Debian's packages for `make deploy-check`, standing in for the official
# postgres:15 image (no registry here). Its entrypoint does what the official one does with the
# environment deploy/docker-compose.yml gives it: a cluster owned by POSTGRES_USER with
# POSTGRES_PASSWORD, the scripts in /docker-entrypoint-initdb.d run once, then the server on
# every address with password authentication.
FROM mart-base:bookworm
RUN apt-get update && apt-get install -y --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /docker-entrypoint-initdb.d /var/lib/postgresql/data /var/run/postgresql \
 && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]
