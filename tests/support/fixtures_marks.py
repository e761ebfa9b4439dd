"""Mark every test by the folder it lives in, so `-m unit` / `-m integration` / `-m e2e` select them."""

from __future__ import annotations

import pytest

_FOLDER_MARKS = {
    "unit": pytest.mark.unit,
    "integration": pytest.mark.integration,
    "e2e": pytest.mark.e2e,
    "chaos": pytest.mark.chaos,
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for folder, mark in _FOLDER_MARKS.items():
            if f"/tests/{folder}/" in str(item.path):
                item.add_marker(mark)
