"""xdist grouping of tests that share a costly module-scoped fixture (a pytest plugin, see conftest.py).

Under `--dist loadgroup` ungrouped tests are handed out one by one, so the tests of a module can land on
both workers and each worker then builds the module's fixtures itself (a LOSO run, a generated and
prepared dataset: seconds each, twice). Every test that uses a module-scoped fixture of its own module is
put in that module's xdist group, so the fixture is built once. Tests already in a group keep theirs."""
from __future__ import annotations

import pytest


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook, which suffixes the grouped node ids
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("xdist_group") or not hasattr(item, "_fixtureinfo"):
            continue
        module = getattr(item.module, "__name__", None)
        for name in item.fixturenames:
            defs = item._fixtureinfo.name2fixturedefs.get(name) or ()
            if any(d.scope == "module" and getattr(d.func, "__module__", None) == module for d in defs):
                item.add_marker(pytest.mark.xdist_group(item.path.stem))
                break
