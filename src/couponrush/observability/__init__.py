"""Metrics, health, structured logs and (optional) traces. Nothing here changes what the service decides."""
