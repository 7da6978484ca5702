# Development only (the local compose stack): stand-ins for Google Cloud Storage and an SMTP relay.
#   localhost/faceharmony-devtools:dev
#   GCS:  default command; gcp-storage-emulator on 0.0.0.0:9023, objects under /var/lib/devtools/gcs
#         (buckets are made by whoever needs them, e.g. through the storage client against the endpoint)
#   SMTP: command ["python", "-m", "aiosmtpd", "-n", "-l", "0.0.0.0:1025", "-c", "aiosmtpd.handlers.Mailbox",
#         "/var/lib/devtools/maildir"]: aiosmtpd's own Mailbox handler writes each message to that Maildir
#         (new/ holds one file per message; Python's mailbox.Maildir reads it).
# Optional build context `extras` as in docker/Dockerfile (ca/*.crt for pip where HTTPS is re-signed).
ARG BASE_IMAGE=debian:bookworm-20251117-slim

FROM ${BASE_IMAGE} AS extras
RUN mkdir -p /ca

FROM ${BASE_IMAGE}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv ca-certificates tini \
    && rm -rf /var/lib/apt/lists/*
RUN --mount=type=bind,from=extras,target=/extras \
    if ls /extras/ca/*.crt >/dev/null 2>&1; then \
      cat /etc/ssl/certs/ca-certificates.crt /extras/ca/*.crt >/tmp/pip-ca.pem && export PIP_CERT=/tmp/pip-ca.pem; \
    fi \
    && python3 -m venv /opt/devtools \
    && PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 /opt/devtools/bin/pip install --quiet \
       gcp-storage-emulator==2026.7.19 aiosmtpd==1.4.6 \
    && rm -f /tmp/pip-ca.pem \
    && groupadd --gid 10001 devtools \
    && useradd --uid 10001 --gid 10001 --home-dir /var/lib/devtools --no-create-home --shell /usr/sbin/nologin devtools \
    && install -d -m 0700 -o 10001 -g 10001 /var/lib/devtools /var/lib/devtools/gcs
# The GCS emulator keeps its objects under STORAGE_BASE/STORAGE_DIR (its own settings).
ENV PATH=/opt/devtools/bin:$PATH PYTHONUNBUFFERED=1 STORAGE_BASE=/var/lib/devtools STORAGE_DIR=gcs
USER 10001:10001
WORKDIR /var/lib/devtools
EXPOSE 9023 1025
ENTRYPOINT ["tini", "--"]
CMD ["gcp-storage-emulator", "start", "--host", "0.0.0.0", "--port", "9023"]
