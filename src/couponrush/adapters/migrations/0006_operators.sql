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

-- Whoever waits for a request's outcome (GET .../request?wait=N and .../request/events) is woken by the
-- issuer's NOTIFY couponrush_decided (adapters/issuer.py), sent in the deciding transaction, so delivered
-- at commit: a woken waiter reads the committed outcome.
