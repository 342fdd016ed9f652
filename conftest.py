"""Doctest collection: docstring examples marked ``+SKIP`` (they need a real file) are illustrations, not tests."""

from __future__ import annotations

import doctest


def pytest_collection_modifyitems(config, items):
    from _pytest.doctest import DoctestItem

    keep, drop = [], []
    for item in items:
        examples = item.dtest.examples if isinstance(item, DoctestItem) else None
        if examples and all(ex.options.get(doctest.SKIP) for ex in examples):
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
