"""Dev-only: the servers `couponrush dev` starts when none is configured (needs the `embedded` extra).

Nothing in production imports this package: a deployment points COUPONRUSH_DATABASE_URL,
COUPONRUSH_REDIS_URL and COUPONRUSH_KAFKA_BOOTSTRAP_SERVERS at real services.
"""
