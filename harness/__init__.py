"""cpr-transfer conformance harness: the library.

Imports nothing from pytest, allure or avocado; the adapters in ``conftest.py`` and
``suites/`` stay thin.
"""
__version__ = "0.1.0"
