#!/usr/bin/env bash
# Runs docker/compose.yaml (the whole stack on one machine) in the order it needs, with podman-compose or
# docker compose. Compose's own ordering (depends_on conditions) is in the file for docker compose, but
# podman 4.x ignores `service_healthy`, so this script does each step itself and checks it:
#
#   docker/compose-stack.sh up      secrets (made once), stand-ins, base model, migrations, then the processes;
#                                   returns when the API server and both Triton replicas report healthy;
#                                   MONITORING=1 also starts Prometheus (profile `monitoring`)
#   docker/compose-stack.sh down    stops and removes the containers (volumes and secrets are kept)
#   docker/compose-stack.sh clean   down, and deletes the volumes (database, blobs, keys, mail) and the secrets
#   docker/compose-stack.sh ps | logs [SERVICE] | exec SERVICE CMD...
#
# Environment: COMPOSE (default: $PODMAN_COMPOSE, else podman-compose, else `docker compose`),
# COMPOSE_PROJECT_NAME (default faceharmony), FACEHARMONY_COMPOSE_API_PORT (default 50051, on 127.0.0.1),
# FACEHARMONY_COMPOSE_SECRETS (default docker/.secrets), STACK_TIMEOUT seconds for each wait (default 300).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
file="$here/compose.yaml"
project=${COMPOSE_PROJECT_NAME:-faceharmony}
timeout=${STACK_TIMEOUT:-300}
secrets=${FACEHARMONY_COMPOSE_SECRETS:-$here/.secrets}
# The images' user (docker/Dockerfile): secrets are bind-mounted files, so they must be readable by it.
APP_UID=10001

if [ -n "${COMPOSE:-}" ]; then
  read -r -a compose <<<"$COMPOSE"
elif [ -n "${PODMAN_COMPOSE:-}" ]; then
  compose=("$PODMAN_COMPOSE")
elif command -v podman-compose >/dev/null 2>&1; then
  compose=(podman-compose)
else
  compose=(docker compose)
fi
c() { "${compose[@]}" -p "$project" -f "$file" "$@"; }
say() { echo "compose-stack: $*" >&2; }

make_secrets() {
  # Made once, kept across `down` (the database was initialised with this password; the secret key keys the
  # email HMACs kept after purges). Owned by the containers' user, readable by it only.
  [ -f "$secrets/database_url" ] && return 0
  umask 077
  mkdir -p "$secrets"
  local pw
  pw=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
  printf '%s' "$pw" >"$secrets/db_password"
  python3 -c 'import secrets; print(secrets.token_hex(32), end="")' >"$secrets/secret_key"
  printf 'postgresql://faceharmony:%s@postgres:5432/faceharmony' "$pw" >"$secrets/database_url"
  chmod 0400 "$secrets"/*
  if [ "$(id -u)" = 0 ]; then chown "$APP_UID:$APP_UID" "$secrets"/*; fi
  say "secrets made in $secrets"
}

wait_for() {  # wait_for WHAT SERVICE CMD...: runs CMD in SERVICE's container until it succeeds
  local what=$1 service=$2 deadline=$((SECONDS + timeout))
  shift 2
  until c exec -T "$service" "$@" >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then
      say "$what not ready within ${timeout}s; its last lines:"
      c logs --tail 20 "$service" >&2 || true
      return 1
    fi
    sleep 2
  done
  say "$what ready"
}

case "${1:-up}" in
  up)
    make_secrets
    c up -d postgres gcs smtp
    wait_for PostgreSQL postgres pg_isready -h 127.0.0.1 -U faceharmony -d faceharmony
    c run --rm --no-deps base-model >/dev/null
    c run --rm --no-deps migrate
    c up -d --no-deps api trainer triton-0 triton-1 order-worker retention
    wait_for "the API server" api faceharmony-server --healthcheck
    for replica in triton-0 triton-1; do
      wait_for "Triton ($replica)" "$replica" faceharmony-triton --healthcheck --grpc-port 8001
    done
    if [ "${MONITORING:-0}" = 1 ]; then
      c --profile monitoring up -d --no-deps prometheus
      say "Prometheus on 127.0.0.1:${FACEHARMONY_COMPOSE_PROMETHEUS_PORT:-9090}"
    fi
    say "up: the API on 127.0.0.1:${FACEHARMONY_COMPOSE_API_PORT:-50051}"
    ;;
  down) c --profile monitoring down ;;
  clean)
    c --profile monitoring down -v
    rm -rf "$secrets"
    ;;
  ps) c ps ;;
  logs) shift; c logs "$@" ;;
  exec) shift; c exec -T "$@" ;;
  *) echo "usage: $0 up|down|clean|ps|logs [SERVICE]|exec SERVICE CMD..." >&2; exit 2 ;;
esac
