# replicator: slim Python base, non-root user. Configuration from the environment and a mounted TOML file.
FROM python:3.11-slim

RUN useradd --create-home --uid 10001 replicator
WORKDIR /app
COPY pyproject.toml README.md ./
COPY sql ./sql
COPY replicator ./replicator
RUN pip install --no-cache-dir . && rm -rf /root/.cache

USER replicator
ENV REPLICATOR_CONFIG=/etc/replicator/replicator.toml
# The service by default; `docker run IMAGE backfill Account` for a one-shot backfill.
ENTRYPOINT ["replicator"]
CMD ["run"]
