"""GPU telemetry collector: ``celery -A telemetry worker`` finds the Celery app here."""

from telemetry.celery_app import app

__all__ = ["app"]
