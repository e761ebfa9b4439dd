"""Mark every test by the folder it lives in, so `-m unit` / `-m integration` / `-m e2e` / `-m bench` select them."""

from __future__ import annotations

import pytest

_FOLDER_MARKS = {
    "tests/unit/": pytest.mark.unit,
    "tests/integration/": pytest.mark.integration,
    "tests/e2e/": pytest.mark.e2e,
    "tests/chaos/": pytest.mark.chaos,
    "bench/tests/": pytest.mark.bench,
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        where = item.path.relative_to(config.rootpath).as_posix() if item.path.is_relative_to(config.rootpath) else ""
        for folder, mark in _FOLDER_MARKS.items():
            if where.startswith(folder):
                item.add_marker(mark)
