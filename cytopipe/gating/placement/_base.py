"""What every placement method shares: its parameters read from the manifest once, checked, and frozen.

A method's parameters are a frozen dataclass (a subclass of
:class:`PlacementParams`) whose fields are the keys of its ``placement``
entry in the strategy manifest; a field's default is the value the method
takes when the manifest leaves the key out. :func:`build_params` makes one
from a manifest entry and refuses an unknown (misspelt) key, a missing
required one, a value of the wrong type or out of its range, naming the key,
the gate path and the manifest file, the way scikit-learn checks every
estimator parameter against declared constraints
(``sklearn/utils/_param_validation.py``).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

__all__ = ["PlacementParams", "Review", "build_params", "entry_where", "fit_rows", "param", "subset"]

#: Keys of a manifest entry that document it and that no method reads as a number.
DOC_KEYS = ("gate_path", "method", "description")


class Review(Exception):
    """No clear structure: the message is the reason code and detail; the sample goes to a reviewer."""

    def __init__(self, code: str, detail: str, candidate=None, info=None):
        super().__init__(f"{code}: {detail}")
        self.code, self.detail, self.candidate, self.info = code, detail, candidate, info or {}


class _Bad(ValueError):
    """A value of the wrong type: the message says what was expected."""


# -- converters: a manifest's JSON value to the field's value, or _Bad ------------------------------

def as_int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise _Bad("an integer")
    return v


def as_float(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not np.isfinite(v):
        raise _Bad("a finite number")
    return float(v)


def as_bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise _Bad("true or false")
    return v


def as_str(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise _Bad("a non-empty string")
    return v


def as_ints(v: Any) -> tuple[int, ...]:
    if not isinstance(v, list | tuple) or not v:
        raise _Bad("a non-empty list of integers")
    try:
        return tuple(as_int(x) for x in v)
    except _Bad:
        raise _Bad("a non-empty list of integers") from None


def as_strs(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list | tuple) or not all(isinstance(x, str) and x for x in v):
        raise _Bad("a list of strings")
    return tuple(v)


def as_range(v: Any) -> tuple[float, float]:
    """Two numbers, the first below the second."""
    if not isinstance(v, list | tuple) or len(v) != 2:
        raise _Bad("two numbers [low, high] with low < high")
    lo, hi = (as_float(x) for x in v)
    if not lo < hi:
        raise _Bad("two numbers [low, high] with low < high")
    return lo, hi


def param(default: Any = dataclasses.MISSING, kind: Callable[[Any], Any] = as_float, *,
          lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False,
          choices: tuple | None = None, repr: bool = True):
    """A parameter field: its default (none: required), how its manifest value is read, its allowed range.

    ``lo``/``hi`` bound the value (each element of a list), closed unless
    ``lo_open``/``hi_open``; ``choices`` lists the allowed values.
    """
    meta = {"kind": kind, "lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open, "choices": choices}
    return field(default=default, metadata=meta, repr=repr)


def _range_text(m: Mapping[str, Any]) -> str | None:
    lo, hi = m["lo"], m["hi"]
    if lo is None and hi is None:
        return None
    if hi is None:
        return f"{'>' if m['lo_open'] else '>='} {lo}"
    if lo is None:
        return f"{'<' if m['hi_open'] else '<='} {hi}"
    return f"in {'(' if m['lo_open'] else '['}{lo}, {hi}{')' if m['hi_open'] else ']'}"


def _in_range(x: Any, m: Mapping[str, Any]) -> bool:
    if isinstance(x, tuple):
        return all(_in_range(y, m) for y in x)
    if not isinstance(x, int | float) or isinstance(x, bool):
        return True
    lo, hi = m["lo"], m["hi"]
    if lo is not None and (x <= lo if m["lo_open"] else x < lo):
        return False
    return not (hi is not None and (x >= hi if m["hi_open"] else x > hi))


@dataclass(frozen=True, kw_only=True)
class PlacementParams:
    """The keys every ``placement`` entry may have: where the gate is, how many events are fitted.

    Attributes
    ----------
    gate_path
        The gate placed, ``["root", ..., name]``.
    method
        The placement method (a key of :data:`cytopipe.gating.placement.METHODS`).
    description
        Words for the people who read the manifest; never read by the code.
    prefilter_events
        At most this many of the file's events are seen by placement (read
        from the first entry: every gate is placed on the same events).
    prefilter_exact
        Exactly ``prefilter_events`` of them, evenly spread (1.2.0 on);
        otherwise every k-th event, k = ceil(n / prefilter_events).
    fit_events
        At most this many of the parent's events are fitted (a fixed-seed choice).
    seed
        The seed of that choice and of the mixtures.
    min_events
        Fewer parent events than this and the gate goes to review (``too_few_events``).
    anchor_events
        The parent's events the method starts from, when it takes more than
        ``fit_events`` (the scatter cloud's CD3 anchor; default ``fit_events``).
    """

    #: The method's fit is used by the gate below even when a reviewer's adjustment replaces this gate.
    feeds_child: ClassVar[bool] = False

    gate_path: tuple[str, ...] = param(kind=as_strs)
    method: str = param(kind=as_str)
    description: str = param("", kind=lambda v: v if isinstance(v, str) else as_str(v), repr=False)
    prefilter_events: int = param(50_000, as_int, lo=1)
    prefilter_exact: bool = param(False, as_bool)
    fit_events: int = param(10_000, as_int, lo=1)
    seed: int = param(0, as_int, lo=0)
    min_events: int = param(200, as_int, lo=0)
    anchor_events: int | None = param(None, as_int, lo=1)

    def check(self) -> list[tuple[str, str]]:
        """Problems among fields together (``(key, message)``); a method adds its own."""
        return []


def build_params(cls: type, entry: Mapping[str, Any], where: str):
    """``(params, problems)``: the method's parameters from a manifest entry, or None and every problem found.

    ``where`` says where the entry is (manifest file, entry, gate path);
    each problem is one message naming the key, the value and the fix.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    method = entry.get("method")
    problems, values = [], {}
    for key in entry:
        if key not in fields:
            near = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            problems.append(f"{where}: unknown key {key!r}{hint} for method {method!r}; its keys are "
                            f"{sorted(fields)}. Fix the spelling or remove the key.")
    for name, f in fields.items():
        if name not in entry:
            if f.default is dataclasses.MISSING:
                problems.append(f"{where}: the required key {name!r} of method {method!r} is missing; add it.")
            continue
        m, raw = f.metadata, entry[name]
        try:
            value = m["kind"](raw)
        except _Bad as e:
            problems.append(f"{where}: {name!r} must be {e}, got {raw!r}.")
            continue
        if m["choices"] is not None and value not in m["choices"]:
            problems.append(f"{where}: {name!r} must be one of {list(m['choices'])}, got {raw!r}.")
            continue
        if not _in_range(value, m):
            problems.append(f"{where}: {name!r} must be {_range_text(m)}, got {raw!r}.")
            continue
        values[name] = value
    if problems:
        return None, problems
    params = cls(**values)
    problems = [f"{where}: {key!r} {msg}" for key, msg in params.check()]
    return (None, problems) if problems else (params, [])


def entry_where(manifest_file, section: str, i: int, entry: Any) -> str:
    """Where a manifest entry is, for messages: ``<file>: placement[3] (root/.../CD3pos)``."""
    path = entry.get("gate_path") if isinstance(entry, Mapping) else None
    gate = "/".join(map(str, path)) if isinstance(path, list | tuple) else "no gate_path"
    return f"{manifest_file}: {section}[{i}] ({gate})"


# -- the events a method fits -----------------------------------------------------------------------

def subset(rows: np.ndarray | None, n_all: int, fit_events: int, seed: int) -> np.ndarray:
    """At most ``fit_events`` of the parent's rows (all ``n_all`` events when ``rows`` is None), a fixed-seed choice."""
    idx = np.arange(n_all) if rows is None else rows
    if idx.size > fit_events:
        rng = np.random.default_rng(seed)
        # the rows are ascending, so a mask gives the chosen rows sorted, without sorting them
        chosen = np.zeros(idx.size, dtype=bool)
        chosen[rng.choice(idx.size, int(fit_events), replace=False)] = True
        idx = idx[chosen]
    return idx


def fit_rows(p: PlacementParams, ctx, parent: np.ndarray | None, path: tuple[str, ...]) -> np.ndarray:
    """The parent's rows a method starts from: at most ``anchor_events`` (default ``fit_events``) of them.

    Raises
    ------
    Review
        Fewer than ``min_events`` (``too_few_events``).
    """
    cap = p.anchor_events if p.anchor_events is not None else p.fit_events
    rows = subset(parent, ctx.raw.shape[0], cap, p.seed)
    if rows.size < p.min_events:
        raise Review("too_few_events", f"{rows.size} events to place {path[-1]} (< {p.min_events})")
    return rows
