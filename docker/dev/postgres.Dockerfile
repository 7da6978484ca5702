# Development only (the local compose stack): PostgreSQL 15 from Debian's packages.
#   localhost/faceharmony-postgres:dev     listens on 0.0.0.0:5432 inside (publish it on 127.0.0.1 only)
# First start with an empty /var/lib/postgresql/data: a cluster is made for POSTGRES_USER (default faceharmony)
# with the password in POSTGRES_PASSWORD_FILE (a compose secret) or POSTGRES_PASSWORD, and the database
# POSTGRES_DB (default faceharmony); password logins (scram-sha-256) only. docker/dev/postgres-start.sh does it.
ARG BASE_IMAGE=debian:bookworm-20251117-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 tini \
    && rm -rf /var/lib/apt/lists/* \
    && usermod -u 10001 postgres && groupmod -g 10001 postgres \
    && chown -R postgres:postgres /var/lib/postgresql /etc/postgresql /var/log/postgresql \
    && install -d -m 0700 -o postgres -g postgres /var/lib/postgresql/data \
    && install -d -m 0775 -o postgres -g postgres /var/run/postgresql
COPY --chmod=0755 docker/dev/postgres-start.sh /usr/local/bin/postgres-start
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
# Debian's postgres user, moved to uid 10001 like the other images' users, so one owner can read the compose
# stack's secret files (bind mounts keep the host's owner); the server refuses to run as root.
# hadolint ignore=DL3066
USER postgres
VOLUME ["/var/lib/postgresql/data"]
EXPOSE 5432
ENTRYPOINT ["tini", "--"]
CMD ["postgres-start"]
HEALTHCHECK --interval=5s --timeout=5s --start-period=30s --retries=5 CMD ["pg_isready", "-h", "127.0.0.1", "-p", "5432"]
