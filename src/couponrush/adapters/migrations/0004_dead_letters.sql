-- Dead letters: a request whose event could not be processed after bounded retries is parked on
-- <topic>.dlq and its reserved unit released. It stays PENDING (a replay may still issue it) but
-- is marked here, so gate rebuilds don't reserve for it and the re-drive doesn't re-publish it.
ALTER TABLE coupon_requests
    ADD COLUMN dead_lettered_at  TIMESTAMPTZ,
    ADD COLUMN dead_letter_error TEXT;
