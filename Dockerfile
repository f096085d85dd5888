# The Casewatch image: `casewatch topics` and `casewatch worker` (see deploy/docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
# The locked runtime dependencies first (a layer of their own), then the project with --no-deps:
# nothing is resolved at build time (Makefile, `make lock`).
COPY requirements/runtime.txt requirements/runtime.txt
RUN pip install --no-cache-dir --no-deps -r requirements/runtime.txt
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
# A fixed uid/gid (10001): Kubernetes runs the pods as it (deploy/k8s, runAsUser and fsGroup).
RUN pip install --no-cache-dir --no-deps . \
    && pip check \
    && groupadd --system --gid 10001 casewatch \
    && useradd --system --uid 10001 --gid 10001 --home /var/lib/casewatch casewatch \
    && mkdir -p /var/lib/casewatch && chown casewatch:casewatch /var/lib/casewatch
USER 10001:10001
ENV CASEWATCH_STATE_DIR=/var/lib/casewatch CASEWATCH_METRICS_PORT=9464 CASEWATCH_API_PORT=6066
EXPOSE 9464 6066
ENTRYPOINT ["casewatch"]
CMD ["worker"]
