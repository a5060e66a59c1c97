#!/bin/sh
# Entrypoint of the PostgreSQL image (docker/postgres.Dockerfile). On the first start, with
# an empty PGDATA: make the cluster, the owner role `bridge_owner` (owns the database and
# everything `bridge migrate` creates) and the runtime role `bridge` (rows only: it owns no
# table, so it can neither drop nor disable the audit log's append-only trigger, and it has
# no TRUNCATE). Their passwords come from the environment and are hashed by the server;
# they never appear on a command line and are removed from the environment before
# PostgreSQL itself starts. Then run the command (`postgres`) in the foreground.
set -eu

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${BRIDGE_DB_OWNER_PASSWORD:?set BRIDGE_DB_OWNER_PASSWORD (the migration role)}"
    : "${BRIDGE_DB_PASSWORD:?set BRIDGE_DB_PASSWORD (the runtime role)}"
    initdb --username=postgres --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=peer --auth-host=scram-sha-256 -D "$PGDATA" >/dev/null
    # The superuser logs in only through the local socket, as the OS user postgres.
    cat > "$PGDATA/pg_hba.conf" <<'HBA'
local  all     postgres                       peer
host   bridge  bridge_owner,bridge  0.0.0.0/0  scram-sha-256
host   bridge  bridge_owner,bridge  ::/0       scram-sha-256
HBA
    echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet -U postgres -d postgres <<'SQL'
\getenv owner_password BRIDGE_DB_OWNER_PASSWORD
\getenv bridge_password BRIDGE_DB_PASSWORD
CREATE ROLE bridge_owner LOGIN PASSWORD :'owner_password';
CREATE ROLE bridge LOGIN PASSWORD :'bridge_password';
CREATE DATABASE bridge OWNER bridge_owner;
REVOKE ALL ON DATABASE bridge FROM PUBLIC;
GRANT CONNECT ON DATABASE bridge TO bridge;
\connect bridge
-- PostgreSQL 15: only the database owner may create in schema public.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
-- Whatever the owner's migrations create, the runtime role may use row by row.
ALTER DEFAULT PRIVILEGES FOR ROLE bridge_owner IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO bridge;
ALTER DEFAULT PRIVILEGES FOR ROLE bridge_owner IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO bridge;
SQL
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    echo "postgres-init: made the cluster, roles bridge_owner (migrations) and bridge (runtime)"
fi
unset BRIDGE_DB_OWNER_PASSWORD BRIDGE_DB_PASSWORD
exec "$@"
