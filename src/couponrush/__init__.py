"""couponrush: first-come-first-served coupon drops."""
