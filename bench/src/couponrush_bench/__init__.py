"""couponrush's tools beside the product: the benchmark, the designs it is measured against, and the
harness and drop invariants that the benchmark and couponrush's end-to-end and chaos tests share."""
