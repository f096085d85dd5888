# The Casewatch image: `casewatch topics` and `casewatch worker` (see deploy/docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
RUN pip install --no-cache-dir . && useradd --system --home /var/lib/casewatch casewatch \
    && mkdir -p /var/lib/casewatch && chown casewatch /var/lib/casewatch
USER casewatch
ENV CASEWATCH_STATE_DIR=/var/lib/casewatch CASEWATCH_METRICS_PORT=9464
EXPOSE 9464
ENTRYPOINT ["casewatch"]
CMD ["worker"]
