-- The request row is the outbox of its own event: an accepted request costs one row, one statement
-- (no second insert into outbox, no BEGIN/COMMIT round trips). The relay sends rows whose relayed_at
-- is NULL, in arrival order, and sets it once the broker acknowledged the event; a re-drive clears it.
-- The outbox table keeps carrying everything else (published events, dead-letter replays).
ALTER TABLE coupon_requests
    ADD COLUMN relayed_at  TIMESTAMPTZ,
    ADD COLUMN traceparent TEXT;

-- Rows recorded before this migration had their event in the outbox: hand the unsent ones over to the
-- request row (their outbox row goes), mark the rest relayed.
UPDATE coupon_requests r SET relayed_at = now()
 WHERE NOT EXISTS (SELECT 1 FROM outbox o WHERE o.sent_at IS NULL AND o.headers->>'request-id' = r.request_id
                     AND o.headers->>'event-type' = 'CouponPublishRequested');
DELETE FROM outbox o
 WHERE o.sent_at IS NULL AND o.headers->>'event-type' = 'CouponPublishRequested'
   AND EXISTS (SELECT 1 FROM coupon_requests r WHERE r.request_id = o.headers->>'request-id');

CREATE INDEX coupon_requests_unrelayed ON coupon_requests (requested_at) WHERE relayed_at IS NULL;

-- Wake the relay when requests are recorded, as outbox inserts do (one NOTIFY per statement).
CREATE TRIGGER coupon_requests_notify AFTER INSERT ON coupon_requests
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
