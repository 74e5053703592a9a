# The collector image: worker, streamer and Flower all run from it.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /app
COPY pyproject.toml README.md celeryconfig.py ./
COPY telemetry ./telemetry
RUN pip install --no-cache-dir . \
    && useradd --create-home --uid 10001 telemetry
USER telemetry

CMD ["celery", "-A", "telemetry", "worker", "-c", "10", "--loglevel=INFO"]
