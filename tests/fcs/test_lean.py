"""Tests for cytopipe.fcs.lean: float32 events that gate exactly as FlowKit's reader."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from cytopipe.exceptions import FCSReadError
from cytopipe.fcs import lean as fcs_lean
from cytopipe.fcs.lean import LeanSample, _gates_use, read_fcs_lean, read_for_gating
from cytopipe.fcs.read import read_fcs
from cytopipe.gating.api import gate_cascade, gate_rows, gate_sample
from cytopipe.gating.qc import sample_time_qc
from cytopipe.sim.sample import SampleSpec, write_fcs
from cytopipe.strategy.registry import load_strategy

from ..conftest import shared_dir
from ..fcs.test_read import NAMES, _events
from ..fcs.test_read import write_fcs as write_raw_fcs


def _same_events(lean: LeanSample, full) -> None:
    """Every value equal to FlowKit's float64, but the channels the lean sample says it rounds."""
    a = lean.get_events(source="raw").astype(np.float64)
    b = full.get_events(source="raw")
    assert a.shape == b.shape
    keep = [i for i, n in enumerate(full.pnn_labels) if n not in lean.inexact_channels]
    np.testing.assert_array_equal(a[:, keep], b[:, keep])
    if lean.time_index is not None:
        np.testing.assert_array_equal(lean.time_values(), b[:, lean.time_index])


@pytest.mark.parametrize("version", ["3.0", "3.1"])
@pytest.mark.parametrize("byteorder", ["little", "big"])
def test_generated_files_read_lean_with_flowkits_values(tmp_path, version, byteorder):
    path = tmp_path / "s.fcs"
    write_fcs(path, SampleSpec(n_events=5_000, seed=3, fcs_version=version, byteorder=byteorder))
    lean, full = read_fcs_lean(path), read_fcs(path)
    assert isinstance(lean, LeanSample)
    assert lean.get_events().dtype == np.float32 and lean.get_events().flags.c_contiguous
    _same_events(lean, full)
    for attr in ("id", "event_count", "pnn_labels", "pns_labels", "fluoro_indices", "scatter_indices",
                 "time_index", "null_channels", "original_filename", "cytopipe_notes"):
        assert getattr(lean, attr) == getattr(full, attr), attr
    assert lean.get_metadata() == full.get_metadata()  # spillover included
    # $TIMESTEP 0.01 times integer ticks is not a float32: Time is the one rounded channel
    assert lean.inexact_channels == ("Time",)
    ti = lean.time_index
    assert not np.array_equal(lean.get_events()[:, ti].astype(np.float64), full.get_events(source="raw")[:, ti])
    assert sample_time_qc(lean) == sample_time_qc(full)


@pytest.mark.parametrize("ref", ["treg@1.0.0", "treg_cd127lo@1.0.0"])
def test_counts_and_memberships_equal_flowkits_reader(tmp_path, ref):
    strategy = load_strategy(ref)
    rng = np.random.default_rng(11)
    for i in range(4):
        path = tmp_path / f"{i}.fcs"
        write_fcs(path, SampleSpec(n_events=int(rng.integers(5_000, 30_000)), seed=int(rng.integers(2**31)),
                                   hard=bool(i % 2), byteorder=("big", "little")[i % 2]))
        lean, full = read_fcs_lean(path), read_fcs(path)
        fast = gate_sample(lean, strategy)
        assert {p: c.count for p, c in fast.items()} == {
            p: c.count for p, c in gate_sample(full, strategy, engine="flowkit").items()}
        gs = strategy.gating_strategy()
        rows_lean, rows_full = gate_rows(lean, gs, strategy.gate_paths()), gate_rows(full, gs, strategy.gate_paths())
        for p in rows_full:
            np.testing.assert_array_equal(rows_lean[p], rows_full[p])


def test_a_gate_on_time_is_decided_on_flowkits_reader(tmp_path, monkeypatch):
    """Time is rounded in float32 when $TIMESTEP scales it: a Time gate re-reads with FlowKit."""
    from flowkit import Dimension, gates

    strategy = load_strategy("treg@1.0.0")
    path = tmp_path / "t.fcs"
    write_fcs(path, SampleSpec(n_events=20_000, seed=8))
    lean, full = read_fcs_lean(path), read_fcs(path)
    time = full.get_events(source="raw")[:, full.time_index]
    cut = float(time[len(time) // 2])  # an event's own Time value: the bound itself is decided
    gs = strategy.gating_strategy()
    gs.add_gate(gates.RectangleGate("Stable", [Dimension("Time", range_min=cut)]), ("root",))
    paths = [*strategy.gate_paths(), ("root", "Stable")]
    assert _gates_use(gs, ("Time",), lean.id) and not _gates_use(strategy.gating_strategy(), ("Time",), lean.id)
    assert not isinstance(read_for_gating(path, gs), LeanSample)  # the Time gate needs FlowKit's values
    assert isinstance(read_for_gating(path, strategy.gating_strategy()), LeanSample)
    assert gate_cascade(lean, gs, paths) is None  # the cascade declines the rounded column
    reread = []
    monkeypatch.setattr(LeanSample, "to_flowkit", lambda self: reread.append(1) or read_fcs(self.path))
    rows = gate_rows(lean, gs, paths)
    assert reread
    expected = gate_rows(full, gs, paths)
    for p in paths:
        np.testing.assert_array_equal(rows[p], expected[p])
    assert rows[("root", "Stable")].size == int((time >= cut).sum())
    assert gate_cascade(full, gs, paths)[("root", "Stable")] == rows[("root", "Stable")].size


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ({"$P2G": "2.0"}, "gain"),
        ({"$P3E": "4,1"}, "log amplification"),
        ({"$TIMESTEP": " "}, "blank $TIMESTEP"),
        ({"$MODE": "C"}, "not list mode"),
    ],
)
def test_files_needing_flowkits_scaling_are_left_to_read_fcs(tmp_path, extra, why):
    path = write_raw_fcs(tmp_path / "x.fcs", _events(), ["FSC-A", "SSC-A", "Time"], extra=extra)
    assert read_fcs_lean(path) is None, why


def test_integer_data_and_quirky_offsets_are_left_to_read_fcs(tmp_path):
    ints = write_raw_fcs(tmp_path / "i.fcs", _events(), NAMES, extra={"$DATATYPE": "I"})
    assert read_fcs_lean(ints) is None
    blank = write_raw_fcs(tmp_path / "b.fcs", _events(), NAMES, blank_header_data=True)
    assert read_fcs_lean(blank) is None  # read_fcs notes the patched HEADER
    nan = _events()
    nan[5, 1] = np.nan
    assert read_fcs_lean(write_raw_fcs(tmp_path / "n.fcs", nan, NAMES)) is None
    clean = read_fcs_lean(write_raw_fcs(tmp_path / "c.fcs", _events(), NAMES))
    assert clean is not None and clean.inexact_channels == ()
    np.testing.assert_array_equal(clean.get_events(), _events())


def test_header_lies_are_refused_as_read_fcs_refuses_them(tmp_path):
    path = write_raw_fcs(tmp_path / "huge.fcs", _events(), NAMES, tot=10**12)
    with pytest.raises(FCSReadError, match="huge.fcs"):
        read_fcs_lean(path)
    short = write_raw_fcs(tmp_path / "short.fcs", _events(), NAMES, truncate_to=400)
    with pytest.raises(FCSReadError, match="short.fcs"):
        read_fcs_lean(short)


def test_lean_sample_has_raw_events_only(tmp_path):
    path = tmp_path / "s.fcs"
    write_fcs(path, SampleSpec(n_events=2_000, seed=1))
    with pytest.raises(ValueError, match="to_flowkit"):
        read_fcs_lean(path).get_events(source="xform")


def _corpus_files() -> list:
    """Every file of ../shared/fcs_corpus (the test skips with its reason when it is absent)."""
    import csv

    corpus = shared_dir("fcs_corpus")
    with open(corpus / "MANIFEST.tsv", newline="", encoding="utf-8") as fh:
        return [corpus / row["relpath"] for row in csv.DictReader(fh, delimiter="\t")]


def test_corpus_files_read_lean_equal_flowkits_or_are_left_to_it():
    """Every real file: the same values as read_fcs, or None (never a different answer)."""
    lean_read = 0
    for path in _corpus_files():
        try:
            full = read_fcs(path)
        except FCSReadError:
            with contextlib.suppress(FCSReadError):
                assert read_fcs_lean(path) is None, path.name
            continue
        lean = read_fcs_lean(path)
        if lean is None:
            continue
        lean_read += 1
        _same_events(lean, full)
        assert lean.get_metadata() == full.get_metadata(), path.name
        assert lean.cytopipe_notes == full.cytopipe_notes, path.name
    assert lean_read >= 3, "the corpus has float32 list-mode files; none took the lean path"


def test_module_reads_with_numpy_not_flowio_events(tmp_path, monkeypatch):
    """The lean path asks FlowIO for TEXT only (its events would be the copy we avoid)."""
    calls = []
    real = fcs_lean._read_flowdata
    monkeypatch.setattr(fcs_lean, "_read_flowdata", lambda *a, **k: calls.append(k) or real(*a, **k))
    path = tmp_path / "s.fcs"
    write_fcs(path, SampleSpec(n_events=2_000, seed=1))
    assert read_fcs_lean(path) is not None
    assert calls == [{"only_text": True}]


@pytest.mark.parametrize("version", ["3.0", "3.1"])
@pytest.mark.parametrize("byteorder", ["little", "big"])
def test_hash_from_the_same_read_is_the_files_sha256(tmp_path, version, byteorder):
    from cytopipe.fcs.header import file_sha256

    path = tmp_path / "s.fcs"
    write_fcs(path, SampleSpec(n_events=30_000, seed=4, fcs_version=version, byteorder=byteorder))
    with open(path, "ab") as fh:  # bytes after DATA (an ANALYSIS segment, padding) are hashed too
        fh.write(b"trailing bytes after DATA")
    lean = read_fcs_lean(path, hash_file=True)
    assert lean.file_sha256 == file_sha256(path)
    assert read_fcs_lean(path).file_sha256 is None  # not asked, not computed
    _same_events(lean, read_fcs(path))


def test_corpus_hashes_from_the_lean_read_equal_file_sha256():
    from cytopipe.fcs.header import file_sha256

    hashed = 0
    for path in _corpus_files():
        try:
            lean = read_fcs_lean(path, hash_file=True)
        except FCSReadError:
            continue
        if lean is not None:
            assert lean.file_sha256 == file_sha256(path), path.name
            hashed += 1
    assert hashed >= 3


def test_read_buffer_is_reused_only_when_no_sample_holds_it(tmp_path):
    """The per-thread buffer spares fresh pages per file, but never overwrites events still in use."""
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.fcs")
        write_fcs(paths[-1], SampleSpec(n_events=20_000, seed=20 + i))
    first = read_fcs_lean(paths[0])
    kept = first.get_events().copy()
    second = read_fcs_lean(paths[1])  # ``first`` is alive: a new buffer
    assert not np.shares_memory(first.get_events(), second.get_events())
    np.testing.assert_array_equal(first.get_events(), kept)
    column = second.get_events()[:, 3]  # a view of the events keeps them just as well
    column_values = column.copy()
    del first, second
    third = read_fcs_lean(paths[2])
    assert not np.shares_memory(third.get_events(), column)
    np.testing.assert_array_equal(column, column_values)
    address = third.get_events().ctypes.data
    del third, column
    again = read_fcs_lean(paths[0])  # nothing refers to the last buffer: it is read into again
    assert again.get_events().ctypes.data == address
    np.testing.assert_array_equal(again.get_events(), kept)
