-- Drops as operators run them (README "Running a drop"): a start time, a record of every change,
-- listings by coupon, and a wake-up for clients waiting on a request's outcome.

-- A drop may open at an instant. The gate judges it by the Redis server's clock (adapters/gate.py);
-- the column is what the gate is built from. NULL: open as soon as the coupon is.
ALTER TABLE coupons
    ADD COLUMN opens_at TIMESTAMPTZ,
    ADD CONSTRAINT coupons_opens_before_expiry CHECK (opens_at IS NULL OR opens_at < expired_at);

-- Every change of a coupon by an operator (API or CLI): who, when, what it was and what it became.
CREATE TABLE coupon_changes (
    id         BIGSERIAL PRIMARY KEY,
    coupon_id  BIGINT      NOT NULL REFERENCES coupons (id),
    changed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor      TEXT        NOT NULL CHECK (length(actor) BETWEEN 1 AND 200),
    action     TEXT        NOT NULL CHECK (action IN ('CREATE', 'OPEN', 'CLOSE', 'UPDATE')),
    before     JSONB,
    after      JSONB       NOT NULL
);
CREATE INDEX coupon_changes_by_coupon ON coupon_changes (coupon_id, id);

-- Listings by coupon, in arrival order (holders, requests; the live view's per-second counts).
CREATE INDEX coupon_requests_by_coupon ON coupon_requests (coupon_id, requested_at, request_id);
CREATE INDEX user_coupons_by_coupon_issued ON user_coupons (coupon_id, issued_at, id);
-- The new index serves everything the old one did (it starts with coupon_id).
DROP INDEX user_coupons_by_coupon;

-- Wake whoever waits for a request's outcome (GET .../request?wait=N and .../request/events): when a
-- statement decides requests (PENDING -> ISSUED/REJECTED), NOTIFY couponrush_decided with the
-- "userId:couponId" pairs, comma-separated, at most 200 per notification (the payload limit is 8000
-- bytes). Delivered at commit, so a woken waiter reads the committed outcome. A trigger rather than a
-- statement in the issuer: whatever decides a request wakes its waiters. Transition tables cannot be
-- combined with a column list, so it runs after every UPDATE statement on coupon_requests and finds
-- nothing to say for the others.
CREATE FUNCTION coupon_requests_decided_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    chunk TEXT;
BEGIN
    FOR chunk IN
        SELECT string_agg(d.user_id || ':' || d.coupon_id, ',')
        FROM (
            SELECT n.user_id, n.coupon_id, (row_number() OVER () - 1) / 200 AS part
            FROM decided_new n JOIN decided_old o ON o.request_id = n.request_id
            WHERE o.status = 'PENDING' AND n.status <> 'PENDING'
        ) d
        GROUP BY d.part
    LOOP
        PERFORM pg_notify('couponrush_decided', chunk);
    END LOOP;
    RETURN NULL;
END $$;
CREATE TRIGGER coupon_requests_decided AFTER UPDATE ON coupon_requests
    REFERENCING OLD TABLE AS decided_old NEW TABLE AS decided_new
    FOR EACH STATEMENT EXECUTE FUNCTION coupon_requests_decided_notify();
