# The collector image: worker, streamer, scraper, API and Flower all run from it, and so do
# the stand-in dcgm-exporters of the compose file's scrape profile.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /app
COPY pyproject.toml README.md celeryconfig.py ./
# Flower reads its settings (the task page columns) from its working directory.
COPY flowerconfig.py ./
COPY telemetry ./telemetry
RUN pip install --no-cache-dir . \
    && useradd --create-home --uid 10001 telemetry
USER telemetry

# The worker's Prometheus metrics and its /healthz and /readyz probes (METRICS_PORT).
EXPOSE 9842
# `telemetry api`: the read API and dashboard.
EXPOSE 8000
# `telemetry scrape`: the scraper's Prometheus metrics and its /healthz probe (SCRAPER_PORT).
EXPOSE 9843

CMD ["celery", "-A", "telemetry", "worker", "-c", "10", "--loglevel=INFO"]
