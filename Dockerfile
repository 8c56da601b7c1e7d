# replicator: slim Python base, non-root user. Configuration from the environment (REPLICATOR_<SECTION>__<KEY>,
# DATABASE_URL) and a mounted TOML file (REPLICATOR_CONFIG). Secrets: mount files or pass environment variables.
FROM python:3.11-slim

RUN useradd --create-home --uid 10001 replicator
WORKDIR /app
COPY pyproject.toml README.md ./
COPY sql ./sql
COPY replicator ./replicator
# The symlink replicator/postgres/sql -> ../../sql is resolved by the build: migrations ship inside the package.
RUN pip install --no-cache-dir . && rm -rf /root/.cache

USER replicator
ENV REPLICATOR_CONFIG=/etc/replicator/replicator.toml \
    PYTHONUNBUFFERED=1
# Prometheus metrics, /healthz and /readyz (config [service] port).
EXPOSE 9108
# `replicator healthcheck` GETs /healthz on the configured port: exit 0 when the service answers.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 CMD ["replicator", "healthcheck"]
# SIGTERM (docker stop, Kubernetes) drains: batches in flight commit within [service] shutdown_timeout_s.
STOPSIGNAL SIGTERM
# The service by default; `docker run IMAGE backfill Account` for a one-shot backfill.
ENTRYPOINT ["replicator"]
CMD ["run"]
