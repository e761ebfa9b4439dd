"""Fixtures and marks for every test in the repository: couponrush's (tests/) and the bench project's
(bench/tests/). Loaded from here, the repository's root, so either folder runs on its own or both together."""

pytest_plugins = ["tests.support.fixtures_marks", "tests.support.fixtures"]
