"""How the library tells an adapter what it is doing, without importing it.

``pair.run_scenario`` calls ``observer.step(title)`` around each phase (start src,
start dst, transfer, verify, ...). The pytest adapter maps steps onto Allure steps;
the default observer does nothing.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


class Observer:
    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        yield


NULL_OBSERVER = Observer()
