"""One file gated as a strategy says: :func:`gate_file` and the :class:`GatedSample` it gives.

Gating a file is always the same chain, wherever it happens (a batch worker,
the report re-reading a file, the review station opening a sample):

1. the strategy's gates, with a reviewer's adjustments as FlowKit custom
   sample gates (:func:`adjusted_gating_strategy`);
2. the file read (float32 where that gates exactly, else FlowKit's reader);
3. each marker's detector found (:func:`~cytopipe.strategy.panel.resolve_panel`,
   a lab panel first) and the file put in the strategy's terms
   (:func:`~cytopipe.gating.conform.conform_sample`: another instrument's
   detector names and range);
4. a pre-gated export's gates down to its start made to pass every event
   (:mod:`cytopipe.gating.pregated`);
5. the data-driven gates placed (a reviewer's adjustment wins);
6. every gate's events found once, by the cascade.

:func:`gate_file` runs it and returns a :class:`GatedSample`: the sample as
gated, the FlowKit gates applied, the placement's record and every gate's
events, from which the counts, the stain check, the plots and the applied
GatingML are read. :meth:`GatedSample.regate` moves some gates and gates
again only what they change (the review station's recount).
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..fcs.lean import LeanSample, gates_exactly, read_for_gating
from ..fcs.read import default_sample_id, spillover_channels
from ..strategy.panel import resolve_panel
from .api import GateCount, gate_rows, gate_sample, gate_values
from .conform import ConformedSample, conform_sample, file_units_gatingml
from .engine import cascade_rows
from .placement import (
    FALLBACK_FLAG,
    REVIEW_FLAG,
    AutoGateResult,
    auto_gate_specs,
    data_driven_gates,
    placement_specs,
    sample_gatingml,
)
from .pregated import mark_pregated, needed_markers, pregated_flags, pregated_gating_strategy, pregated_paths

__all__ = ["GatedSample", "adjusted_gating_strategy", "gate_file", "gate_from_spec"]

Path = tuple[str, ...]
#: The reason a placed gate's record gives when a reviewer's adjustment replaces it (as placement writes it).
_REVIEWER_REASON = "a reviewer's adjustment of this gate is used"


def gate_from_spec(name: str, spec: Mapping[str, Any]):
    """The FlowKit gate of an adjustment spec (:func:`cytopipe.review.build_gate_spec`).

    Parameters
    ----------
    name
        The gate's id (the last part of its path).
    spec
        ``{"type": "RectangleGate" | "PolygonGate", "dimensions": [...], "vertices": [...]}``
        as ``review.jsonl`` holds it, in the gate's own units.

    Returns
    -------
    flowkit.gates.RectangleGate or flowkit.gates.PolygonGate
        FlowKit checks the geometry as it builds the gate (and raises for a bad one).
    """
    import flowkit as fk

    dims = [
        fk.Dimension(d["id"], compensation_ref=d["compensation_ref"], transformation_ref=d["transformation_ref"],
                     range_min=d.get("min"), range_max=d.get("max"))
        for d in spec["dimensions"]
    ]
    if spec["type"] == "RectangleGate":
        return fk.gates.RectangleGate(name, dims)
    return fk.gates.PolygonGate(name, dims, [list(v) for v in spec["vertices"]])


def adjusted_gating_strategy(strategy, sample_id: str, adjustments: Mapping[str, Mapping[str, Any]]):
    """A fresh FlowKit ``GatingStrategy`` with the adjustments as custom gates of ``sample_id``.

    Parameters
    ----------
    strategy : cytopipe.strategy.registry.Strategy
        The loaded strategy.
    sample_id
        The FlowKit sample id the custom gates apply to (``Sample.id``).
    adjustments
        Gate path (``root/.../Gate``) to its spec
        (:func:`cytopipe.review.decisions.gate_adjustments`).
    """
    gs = strategy.gating_strategy()
    for path, spec in adjustments.items():
        parts = tuple(path.split("/"))
        gs.add_gate(gate_from_spec(parts[-1], spec), parts[:-1], sample_id=sample_id)
    return gs


def _rows_or_none(sample, gs, strategy) -> dict[Path, np.ndarray | None] | None:
    """Every gate's events; the root's left as None (every event) instead of an index array of them.

    The cascade's own rows where it can: gate_rows spells the root out, 8 bytes an event more at the
    peak of a big file (glibc maps such an array afresh on top of the heap the cascade left). None
    when gating fails: :func:`~cytopipe.gating.api.gate_sample` gates again and names what is wrong.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rows = cascade_rows(sample, gs, strategy.gate_paths())
        if rows is None:  # a gate the cascade leaves to FlowKit
            rows = dict(gate_rows(sample, gs, strategy.gate_paths()))
    except Exception:  # noqa: BLE001 - gate_sample gates again and names what is wrong
        return None
    rows[("root",)] = None
    return rows


def _data_driven_paths(strategy) -> list[Path]:
    """The gates the strategy places from each sample's data (none for a fixed template)."""
    return [tuple(s.gate_path) for s in placement_specs(strategy)] + \
        [tuple(s.gate_path) for s in auto_gate_specs(strategy)]


def _parse_path(text: str) -> Path:
    parts = tuple(p for p in str(text).strip("/").split("/") if p)
    return parts if parts and parts[0] == "root" else ("root", *parts)


class GatedSample:
    """A file gated with a strategy: the sample, the gates applied, every gate's events.

    Made by :func:`gate_file` (or :meth:`regate`); not built by hand.

    Attributes
    ----------
    path
        The FCS file.
    strategy : cytopipe.strategy.registry.Strategy
        The strategy it was gated with.
    sample : flowkit.Sample, LeanSample or ConformedSample
        The sample as gated: in the strategy's terms (another instrument's
        file conformed; a file already in them as read).
    gating_strategy : flowkit.GatingStrategy
        The gates applied: the template, a reviewer's adjustments and the
        placed gates as custom gates of ``sample.id``, pre-gated gates passing every event.
    adjustments
        Gate path to a reviewer's adjustment spec, as applied.
    placement : AutoGateResult or None
        What placing the data-driven gates gave (records, flags); None when
        the strategy places none.
    pregated
        The gates a pre-gated export's start makes pass every event ([] for a whole file).
    panel_flags
        The panel's flags (``unlabelled:<$PnN>``) and a pre-gated file's.
    timings
        Seconds :func:`gate_file` spent reading the file (``read``; 0 when it was given read),
        conforming it (``conform``), placing the gates (``place``) and finding every gate's events
        (``rows``).
    """

    def __init__(self, *, path: str, strategy, sample, gating_strategy, adjustments: dict[str, dict[str, Any]],
                 placement: AutoGateResult | None, pregated: list[Path], panel_flags: list[str],
                 rows: dict[Path, np.ndarray | None] | None,
                 counts: dict[Path, GateCount] | None = None) -> None:
        self.path = str(path)
        self.strategy = strategy
        self.sample = sample
        self.gating_strategy = gating_strategy
        self.adjustments = adjustments
        self.placement = placement
        self.pregated = pregated
        self.panel_flags = panel_flags
        self._rows = rows
        self._counts = counts
        self.timings: dict[str, float] = {}

    # -- what the sample is ---------------------------------------------------------------------------

    @property
    def sample_id(self) -> str:
        """The FlowKit sample id the custom gates are keyed by."""
        return str(self.sample.id)

    @property
    def event_count(self) -> int:
        """Events in the file."""
        return int(self.sample.event_count)

    @property
    def conformed(self) -> bool:
        """True when the file was put in the strategy's terms (another instrument's names or range)."""
        return isinstance(self.sample, ConformedSample)

    @property
    def gate_paths(self) -> list[Path]:
        """Every gate's full path, parents first."""
        return self.strategy.gate_paths()

    def gate(self, path: Path, gating_strategy=None):
        """The FlowKit gate applied at ``path`` (a custom gate of this sample, or the template's)."""
        gs = gating_strategy if gating_strategy is not None else self.gating_strategy
        return gs.get_gate(path[-1], gate_path=path[:-1], sample_id=self.sample_id)

    def is_custom(self, path: Path) -> bool:
        """True when the gate at ``path`` is this sample's own (placed or a reviewer's), not the template's."""
        return bool(self.gating_strategy.is_custom_gate(self.sample_id, path[-1], path[:-1]))

    # -- every gate's events ------------------------------------------------------------------------------

    @property
    def has_rows(self) -> bool:
        """True while every gate's events are held (False after :meth:`free_rows`, or when the cascade failed)."""
        return self._rows is not None

    def all_rows(self) -> dict[Path, np.ndarray | None]:
        """Every gate's event indices, parents first; ``("root",)`` is None (every event).

        Found again (:func:`~cytopipe.gating.api.gate_rows`) when not held.

        Raises
        ------
        Exception
            Whatever FlowKit raises on a sample it cannot gate.
        """
        if self._rows is None:
            rows: dict[Path, np.ndarray | None] = dict(gate_rows(self.sample, self.gating_strategy, self.gate_paths))
            rows[("root",)] = None
            self._rows = rows
        return self._rows

    def rows(self, path: Path) -> np.ndarray:
        """The event indices inside the gate at ``path`` (``("root",)``: every event), ascending."""
        found = self.all_rows()[tuple(path)]
        return np.arange(self.event_count) if found is None else found

    def values(self, path: Path, rows: np.ndarray | None = None) -> np.ndarray:
        """``(n, n_dims)`` values in the gate's dimensions, as the gate sees them (compensated, transformed).

        Parameters
        ----------
        path
            The gate.
        rows
            The events (default: the gate's parent's, the events it is applied to).
        """
        path = tuple(path)
        idx = self.rows(path[:-1]) if rows is None else np.asarray(rows)
        return gate_values(self.sample, self.gating_strategy, self.gate(path), rows=idx)

    def free_rows(self) -> None:
        """Let go of every gate's events (the counts found so far are kept)."""
        self._rows = None

    # -- what is read from them -------------------------------------------------------------------------

    def counts(self) -> dict[Path, GateCount]:
        """Every gate's count and parent count (:func:`~cytopipe.gating.api.gate_sample`), parents first.

        Raises
        ------
        GatingError
            FlowKit cannot gate the sample; the message names it.
        """
        if self._counts is None:
            self._counts = gate_sample(self.sample, self.strategy, gating_strategy=self.gating_strategy,
                                       known_rows=self._rows)
        return self._counts

    def stain_flags(self) -> list[str]:
        """``needs_review`` flags of markers without a positive population (:func:`~.stain.stain_flags`)."""
        from .stain import stain_flags

        den = None if self._rows is None else self._rows.get(self.strategy.denominator)
        return stain_flags(self.sample, self.gating_strategy, self.strategy, rows=den)

    def gatingml(self) -> str:
        """GatingML 2.0 of the gates applied, in the file's own detectors and range.

        FlowKit alone gives the same counts with it on the file as written
        (:func:`~cytopipe.gating.conform.file_units_gatingml`).
        """
        text = self.placement.gatingml if self.placement is not None and self.placement.gatingml else \
            sample_gatingml(self.gating_strategy, self.sample_id)
        return file_units_gatingml(text, self.sample)

    def placement_record(self) -> dict[str, Any] | None:
        """The placement's record (:meth:`AutoGateResult.record`), its GatingML in the file's own terms."""
        if self.placement is None:
            return None
        return {**self.placement.record(), "gatingml": self.gatingml()}

    # -- moved gates ------------------------------------------------------------------------------------

    def regate(self, moved: Mapping[str, Mapping[str, Any]]) -> GatedSample:
        """This sample with the gates in ``moved`` replaced: what :func:`gate_file` would give with them.

        Only what a moved gate changes is done again: the moved gates and the
        gates below them are evaluated on the events their parents keep (the
        cascade), and the data-driven gates below a moved gate placed again.
        Every other gate keeps its events and its placed gate (placing is
        deterministic, so a fresh :func:`gate_file` places them the same).

        Parameters
        ----------
        moved
            Gate path (``root/.../Gate``) to adjustment spec
            (:func:`cytopipe.review.build_gate_spec`); they win over earlier adjustments of the same gates.

        Returns
        -------
        GatedSample
            Without held events (:attr:`has_rows` False) when a gate type the
            cascade leaves to FlowKit made FlowKit count.
        """
        adjustments = {**self.adjustments, **{k: dict(v) for k, v in moved.items()}}
        moved_paths = [_parse_path(p) for p in moved]

        def below(p: Path) -> bool:  # the moved gate itself or a gate under it
            return any(p[: len(m)] == m for m in moved_paths)

        gs = adjusted_gating_strategy(self.strategy, self.sample_id, adjustments)
        if self.pregated:
            gs = pregated_gating_strategy(gs, self.strategy, self.pregated, sample=self.sample,
                                          adjustments=adjustments)
        pregated = set(self.pregated)
        data_driven = _data_driven_paths(self.strategy)
        placed = [p for p in data_driven if "/".join(p) not in adjustments and p not in pregated]
        kept = [p for p in placed if not below(p)]  # placed above or beside the moved gates: as placed before
        for p in kept:
            if self.is_custom(p):
                gs.add_gate(copy.deepcopy(self.gate(p)), p[:-1], sample_id=self.sample_id)
        placement = self.placement
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if len(kept) < len(placed):  # placed below a moved gate: placed again on the events it now keeps
                skip = list(adjustments) + ["/".join(p) for p in self.pregated] + ["/".join(p) for p in kept]
                res = data_driven_gates(self.sample, self.strategy, gating_strategy=gs, skip=skip,
                                        fits=self.placement.fits if self.placement is not None else None)
                if res is not None:
                    gs = res.gating_strategy
                    mark_pregated(res, self.pregated)
                    placement = _merged_placement(self.placement, res, kept, self.gate_paths)
            elif placement is not None:  # nothing placed again: the moved placed gates recorded as a reviewer's
                placement = _reviewed_placement(placement, gs, [p for p in moved_paths if p in data_driven])
            if self._rows is None:  # no events held: every gate's found again
                rows = _rows_or_none(self.sample, gs, self.strategy)
            else:  # the gates outside the moved ones' subtrees keep their events
                rows = cascade_rows(self.sample, gs, self.gate_paths,
                                    known={p: r for p, r in self._rows.items() if not below(p)})
        counts = None
        if rows is None:  # a gate type the cascade leaves to FlowKit: FlowKit counts, as in a re-run
            counts = gate_sample(self.sample, self.strategy, gating_strategy=gs)
        else:
            rows[("root",)] = None
        return GatedSample(path=self.path, strategy=self.strategy, sample=self.sample, gating_strategy=gs,
                           adjustments=adjustments, placement=placement, pregated=list(self.pregated),
                           panel_flags=list(self.panel_flags), rows=rows, counts=counts)


def _review_gate(flag: str) -> str | None:
    """The gate a ``needs_review:<gate>:<reason>`` flag names (None for any other flag)."""
    parts = flag.split(":")
    return parts[1] if len(parts) > 2 and parts[0] == REVIEW_FLAG else None


def _with_fallback(flags: list[str], gates: list[dict[str, Any]]) -> list[str]:
    """``flags`` with ``auto_gate_fallback`` where (and only where) a gate still fell back."""
    flags = [f for f in flags if f != FALLBACK_FLAG]
    return flags + [FALLBACK_FLAG] if any(g.get("status") == "fallback" for g in gates) else flags


def _merged_placement(old: AutoGateResult | None, new: AutoGateResult, kept: list[Path],
                      paths: list[Path]) -> AutoGateResult:
    """``new`` (placed with the ``kept`` gates skipped) with their records and flags as ``old`` had them."""
    if old is None:
        return new
    names = {"/".join(p) for p in kept}
    before = {g.get("gate_path"): g for g in old.gates}
    gates = [copy.deepcopy(before[g["gate_path"]]) if g.get("gate_path") in names and g["gate_path"] in before
             else g for g in new.gates]
    kept_ids = {p[-1] for p in kept}
    order = {p[-1]: i for i, p in enumerate(paths)}
    flags = [f for f in old.qc_flags if _review_gate(f) in kept_ids] + \
        [f for f in new.qc_flags if _review_gate(f) not in kept_ids]
    flags.sort(key=lambda f: order.get(_review_gate(f) or "", len(order)))  # gate-tree order, as placed
    return AutoGateResult(gating_strategy=new.gating_strategy, gates=gates, qc_flags=_with_fallback(flags, gates),
                          gatingml=new.gatingml, fits={**old.fits, **new.fits})


def _reviewed_placement(old: AutoGateResult, gs, moved: list[Path]) -> AutoGateResult:
    """``old`` with the moved placed gates recorded as a reviewer's, as placing with them skipped records them."""
    names = {"/".join(p) for p in moved}
    gates = [{"gate_path": g["gate_path"], "status": "reviewer", "reason": _REVIEWER_REASON}
             if g.get("gate_path") in names else copy.deepcopy(g) for g in old.gates]
    ids = {p[-1] for p in moved}
    flags = [f for f in old.qc_flags if _review_gate(f) not in ids]
    # the GatingML is exported again from the new gates when asked for (GatedSample.gatingml)
    return AutoGateResult(gating_strategy=gs, gates=gates, qc_flags=_with_fallback(flags, gates), gatingml="",
                          fits=old.fits)


def gate_file(
    path: str,
    strategy,
    *,
    adjustments: Mapping[str, Mapping[str, Any]] | None = None,
    lab_panel: Mapping[str, str] | None = None,
    starts_at: str | None = None,
    sample=None,
    read: Callable[[str, Any], Any] | None = None,
) -> GatedSample:
    """Read (unless given), conform, place and gate one FCS file as ``strategy`` says.

    Parameters
    ----------
    path
        The FCS file.
    strategy : cytopipe.strategy.registry.Strategy
        The loaded strategy.
    adjustments
        A reviewer's gate adjustments: gate path to spec
        (:func:`cytopipe.review.decisions.gate_adjustments`), applied as custom gates.
    lab_panel
        The lab's panel (:func:`~cytopipe.strategy.panel.read_panel_file`):
        marker to this file's detector; it wins over ``$PnS``.
    starts_at
        The gate whose events the file holds (a pre-gated export, e.g.
        ``"CD4pos"``): the gates down to it pass every event.
    sample : LeanSample or flowkit.Sample, optional
        The file already read. A :class:`~cytopipe.fcs.lean.LeanSample` that
        cannot decide these gates exactly (a gate on Time) is dropped and the
        file read with ``read``.
    read
        ``read(path, gating_strategy) -> sample``: how the file is read for
        these gates (the template with the adjustments), when ``sample`` is
        not given or cannot be gated exactly. Default
        :func:`~cytopipe.fcs.lean.read_for_gating` (float32 where that gates
        exactly, else FlowKit's reader). The batch passes one that takes its
        hashed lean read, checks the worker's memory before FlowKit's reader
        and records the file's instrument.

    Returns
    -------
    GatedSample
        Its gates' events held (:attr:`GatedSample.has_rows`) unless the
        cascade and FlowKit both failed, in which case :meth:`GatedSample.counts` raises.

    Raises
    ------
    cytopipe.exceptions.CytopipeError
        The file cannot be read, a marker has no detector, or ``starts_at`` is no gate of the chain.

    Examples
    --------
    >>> strategy = load_strategy("treg_adaptive")  # doctest: +SKIP
    >>> gated = gate_file("sample_fcs/P01_D1.fcs", strategy)  # doctest: +SKIP
    >>> gated.counts()[strategy.numerator].count  # doctest: +SKIP
    """
    adjusted: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (adjustments or {}).items()}
    pregated = pregated_paths(strategy, starts_at)  # a wrong start is named before the file is read
    sample_id = str(sample.id) if sample is not None else default_sample_id(path)
    gs = adjusted_gating_strategy(strategy, sample_id, adjusted) if adjusted else strategy.gating_strategy()
    # float32 events only where that is exactly what FlowKit would gate (e.g. no gate on Time)
    if isinstance(sample, LeanSample) and not gates_exactly(sample, gs):
        sample = None  # its float32 copy freed before the file is read again
    t0 = time.perf_counter()
    if sample is None:
        sample = (read or read_for_gating)(path, gs)
    t_read = time.perf_counter()
    panel = resolve_panel(sample.pnn_labels, sample.pns_labels, strategy, source=path,
                          lab_panel=dict(lab_panel) if lab_panel else None,
                          needed=needed_markers(strategy, gs, pregated), compensated=spillover_channels(sample))
    panel_flags = list(panel.qc_flags)
    # another instrument's detector names and range, in the strategy's terms (the file as it is when it
    # already is); a pre-gated file's gates down to its start pass every event
    sample = conform_sample(sample, panel, strategy, gating_strategy=gs)
    if pregated:
        panel_flags += pregated_flags(sample, strategy, pregated)
        gs = pregated_gating_strategy(gs, strategy, pregated, sample=sample, adjustments=adjusted)
    # data-driven gates placed on this sample (a reviewer's adjustment wins); the placement gates its own
    # subsample of events, then one pass gates every event with the placed gates in place: cheaper than
    # handing upstream rows around (docs/performance.md)
    skip = list(adjusted) + ["/".join(p) for p in pregated]
    t_conform = time.perf_counter()
    placement = data_driven_gates(sample, strategy, gating_strategy=gs, skip=skip)
    if placement is not None:
        gs = placement.gating_strategy
        mark_pregated(placement, pregated)
    t_place = time.perf_counter()
    rows = _rows_or_none(sample, gs, strategy)
    gated = GatedSample(path=path, strategy=strategy, sample=sample, gating_strategy=gs, adjustments=adjusted,
                        placement=placement, pregated=pregated, panel_flags=panel_flags, rows=rows)
    gated.timings = {"read": t_read - t0, "conform": t_conform - t_read, "place": t_place - t_conform,
                     "rows": time.perf_counter() - t_place}
    return gated
