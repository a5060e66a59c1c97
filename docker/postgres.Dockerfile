# PostgreSQL for the provisioning bridge: Debian's postgresql-15. On first start the
# entrypoint makes the cluster and two login roles (docker/postgres-init.sh):
#   bridge_owner  owns the database and its tables; `bridge migrate` runs as it;
#   bridge        the runtime role of `bridge serve`: reads and writes rows, owns nothing,
#                 so it cannot drop or disable the audit log's append-only trigger, nor
#                 TRUNCATE it. The superuser `postgres` has no password and no network login.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# Debian's package would create and start a "main" cluster; this image makes its own
# in PGDATA (a volume), so the package's cluster creation is switched off. The postgres
# user gets a fixed uid (10003) before the package would make one. Debian 12's packages are
# the pin (DL3008).
# hadolint ignore=DL3008
RUN groupadd --system --gid 10003 postgres \
 && useradd --system --uid 10003 --gid 10003 --home-dir /var/lib/postgresql --no-create-home \
        --shell /bin/sh postgres \
 && mkdir -p /etc/postgresql-common/createcluster.d \
 && echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/no-main.conf \
 && apt-get update \
 && apt-get install -y --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
 && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql \
 && chmod 0700 /var/lib/postgresql/data
COPY docker/postgres-init.sh /usr/local/bin/postgres-init
ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PGDATA=/var/lib/postgresql/data
USER 10003:10003
EXPOSE 5432
STOPSIGNAL SIGINT
HEALTHCHECK --interval=5s --timeout=3s --retries=20 CMD ["pg_isready", "-h", "127.0.0.1", "-U", "bridge", "-d", "bridge"]
ENTRYPOINT ["/usr/local/bin/postgres-init"]
CMD ["postgres"]
