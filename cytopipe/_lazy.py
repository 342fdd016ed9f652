"""Names a package re-exports but imports only on first use (PEP 562 module ``__getattr__``).

``import cytopipe`` and ``cytopipe --help`` must not load FlowKit, Dask or
matplotlib; a stage's heavy names load with their module the first time they
are looked up (the same idea as scientific-python's ``lazy_loader.attach``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any

__all__ = ["lazy_names"]


def lazy_names(package: str, origins: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's module ``__getattr__`` and ``__dir__`` for names loaded on first use.

    Parameters
    ----------
    package
        The package's ``__name__``.
    origins
        Each lazy name to the module of the package that defines it:
        ``"report"`` for ``cytopipe.review.report``, ``"batch"`` for the
        stage ``cytopipe.batch`` when the package is ``cytopipe``.

    Returns
    -------
    __getattr__, __dir__
        Assign both at the package's top level. A name is imported once, then
        kept in the package's namespace; an unknown name raises
        :class:`AttributeError` as a module without ``__getattr__`` would.
        ``__dir__`` lists the package's namespace and its ``__all__``.

    Examples
    --------
    In ``cytopipe/review/__init__.py``::

        __getattr__, __dir__ = lazy_names(__name__, {"write_report": "report"})
    """

    def __getattr__(name: str) -> Any:
        origin = origins.get(name)
        if origin is None:
            msg = f"module {package!r} has no attribute {name!r}"
            raise AttributeError(msg)
        value = getattr(import_module(f".{origin}", package), name)
        vars(sys.modules[package])[name] = value  # looked up once
        return value

    def __dir__() -> list[str]:
        namespace = vars(sys.modules[package])
        return sorted(set(namespace) | set(namespace.get("__all__", ())))

    return __getattr__, __dir__
