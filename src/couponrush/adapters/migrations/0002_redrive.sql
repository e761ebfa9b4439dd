-- Re-drive: a request accepted but still pending after a while (its record lost by the broker, or
-- skipped) is published again from the database. These columns say when, and how often.
ALTER TABLE coupon_requests
    ADD COLUMN redriven_at TIMESTAMPTZ,
    ADD COLUMN redrives    INTEGER NOT NULL DEFAULT 0;
