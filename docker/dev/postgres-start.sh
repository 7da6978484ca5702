#!/bin/bash
# PID 1's child in localhost/faceharmony-postgres:dev (docker/dev/postgres.Dockerfile): makes the cluster on the
# first start, then becomes the postgres server (exec), which handles SIGTERM as a fast shutdown.
set -euo pipefail
user=${POSTGRES_USER:-faceharmony}
db=${POSTGRES_DB:-faceharmony}
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then password=$(<"$POSTGRES_PASSWORD_FILE"); else password=${POSTGRES_PASSWORD:-}; fi
  [ -n "$password" ] || { echo "postgres-start: set POSTGRES_PASSWORD_FILE or POSTGRES_PASSWORD" >&2; exit 1; }
  pwfile=$(mktemp)
  printf '%s\n' "$password" >"$pwfile"
  initdb --username="$user" --pwfile="$pwfile" --auth=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$pwfile"
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  pg_ctl -w -o "-c listen_addresses=''" start >/dev/null
  PGPASSWORD=$password createdb --username="$user" "$db"
  pg_ctl -w stop >/dev/null
fi
exec postgres -c listen_addresses='*'
