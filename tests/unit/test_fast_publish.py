"""Which publish bodies the fast path takes itself; everything else goes to the FastAPI route."""

from __future__ import annotations

import pytest

from couponrush.entrypoints.api.fast_publish import plain_coupon_id
from couponrush.entrypoints.api.schemas import MAX_ID


@pytest.mark.parametrize(("body", "coupon_id"), [(b'{"couponId": 7}', 7), (b' {"couponId":%d} ' % MAX_ID, MAX_ID)])
def test_a_plain_body_is_taken(body: bytes, coupon_id: int) -> None:
    assert plain_coupon_id(body) == coupon_id


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"[]",
        b"{}",
        b'{"couponId": 0}',
        b'{"couponId": -1}',
        b'{"couponId": %d}' % (MAX_ID + 1),
        b'{"couponId": true}',
        b'{"couponId": 1.0}',
        b'{"couponId": "1"}',
        b'{"couponId": 1, "extra": 2}',
        b'{"coupon_id": 1}',
        b"null",
    ],
)
def test_anything_else_falls_through_to_the_route(body: bytes) -> None:
    assert plain_coupon_id(body) is None
