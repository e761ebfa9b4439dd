-- Coupons, what users hold, every request and its outcome, and the outbox.

CREATE TABLE coupons (
    id            BIGSERIAL PRIMARY KEY,
    name          TEXT        NOT NULL CHECK (length(btrim(name)) BETWEEN 1 AND 200),
    discount_rate NUMERIC(5, 4) NOT NULL CHECK (discount_rate > 0 AND discount_rate <= 1),
    quantity      INTEGER     NOT NULL CHECK (quantity > 0),
    issued_count  INTEGER     NOT NULL DEFAULT 0,
    status        TEXT        NOT NULL CHECK (status IN ('PUBLISHABLE', 'UNPUBLISHABLE')),
    expired_at    TIMESTAMPTZ NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- The database itself refuses to over-issue, whatever the code above it does.
    CONSTRAINT coupons_issued_within_quantity CHECK (issued_count >= 0 AND issued_count <= quantity)
);

CREATE TABLE user_coupons (
    id         BIGSERIAL PRIMARY KEY,
    user_id    BIGINT      NOT NULL CHECK (user_id > 0),
    coupon_id  BIGINT      NOT NULL REFERENCES coupons (id),
    request_id TEXT        NOT NULL,
    issued_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Nobody holds the same coupon twice: a constraint, not just a read.
    CONSTRAINT user_coupons_one_per_user UNIQUE (user_id, coupon_id)
);
CREATE INDEX user_coupons_by_coupon ON user_coupons (coupon_id);

-- One row per accepted request: PENDING until the worker decides ISSUED or REJECTED (with why).
-- No foreign key to coupons, so a request for a coupon that vanished is still recorded and refused.
CREATE TABLE coupon_requests (
    request_id   TEXT PRIMARY KEY,
    user_id      BIGINT      NOT NULL,
    coupon_id    BIGINT      NOT NULL,
    status       TEXT        NOT NULL DEFAULT 'PENDING' CHECK (status IN ('PENDING', 'ISSUED', 'REJECTED')),
    reason       TEXT,
    requested_at TIMESTAMPTZ NOT NULL,
    decided_at   TIMESTAMPTZ,
    CONSTRAINT coupon_requests_reason_iff_rejected CHECK ((status = 'REJECTED') = (reason IS NOT NULL))
);
CREATE INDEX coupon_requests_by_user_coupon ON coupon_requests (user_id, coupon_id, requested_at DESC);
CREATE INDEX coupon_requests_pending ON coupon_requests (requested_at) WHERE status = 'PENDING';

-- Transactional outbox: written in the same transaction as the fact it announces, relayed to Kafka,
-- marked sent only once the broker acknowledged it.
CREATE TABLE outbox (
    id         BIGSERIAL PRIMARY KEY,
    topic      TEXT        NOT NULL,
    key        TEXT,
    payload    BYTEA       NOT NULL,
    headers    JSONB       NOT NULL DEFAULT '{}'::jsonb,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at    TIMESTAMPTZ,
    attempts   INTEGER     NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;

-- Wake the relay as soon as a row is committed (NOTIFY is delivered at commit).
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('couponrush_outbox', '');
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
