"""Tests for cytopipe.fcs.read: the real-file corpus, hand-built bad files, scans, hashing."""

from __future__ import annotations

import csv
import hashlib
import math
import time
import tracemalloc
from pathlib import Path

import flowkit as fk
import numpy as np
import pytest

from cytopipe.exceptions import CytopipeError, FCSReadError
from cytopipe.fcs.read import (
    ChannelInfo,
    channels,
    file_sha256,
    read_fcs,
    scan_header,
    scan_headers,
)

CORPUS = Path(__file__).parents[2].parent / "shared" / "fcs_corpus"
MANIFEST = CORPUS / "MANIFEST.tsv"


def _manifest() -> list[dict[str, str]]:
    if not MANIFEST.is_file():
        return []
    with open(MANIFEST, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


ROWS = _manifest()
READERS = ("flowio", "fcsparser", "flowkit_sample")
# the two corpus files nothing can read: random bytes, and a HEADER+TEXT without DATA
UNREADABLE = {
    "fcsparser/fcsparser__tests__data__FlowCytometers__corrupted__corrupted.fcs",
    "fcsparser/fcsparser__tests__data__FlowCytometers__cytek-nl-2000__sample_header.fcs",
}


def _skip_without_corpus() -> None:
    if not MANIFEST.is_file():
        pytest.skip(f"../shared/fcs_corpus not present: {CORPUS} has no MANIFEST.tsv")


def _some_reader_ok(row: dict[str, str]) -> bool:
    return any(row[r] == "ok" for r in READERS)


# --------------------------------------------------------------------------
# a minimal FCS 3.1 writer, so bad files are built byte by byte
# --------------------------------------------------------------------------
def write_fcs(
    path: Path,
    data: np.ndarray,
    names: list[str],
    *,
    tot: int | None = None,
    extra: dict[str, str] | None = None,
    truncate_to: int | None = None,
    blank_header_data: bool = False,
) -> Path:
    """Write float32 little-endian list-mode FCS 3.1; options corrupt it on purpose."""
    data = np.asarray(data, dtype="<f4")
    n_events, n_par = data.shape
    body = data.tobytes()
    kw: dict[str, str] = {
        "$BEGINANALYSIS": "0",
        "$ENDANALYSIS": "0",
        "$BEGINSTEXT": "0",
        "$ENDSTEXT": "0",
        "$BYTEORD": "1,2,3,4",
        "$DATATYPE": "F",
        "$MODE": "L",
        "$NEXTDATA": "0",
        "$PAR": str(n_par),
        "$TOT": str(n_events if tot is None else tot),
    }
    for i, name in enumerate(names, 1):
        kw[f"$P{i}N"] = name
        kw[f"$P{i}B"] = "32"
        kw[f"$P{i}E"] = "0,0"
        kw[f"$P{i}R"] = "262144"
    kw.update(extra or {})
    text_start = 58

    def text_for(begin: int, end: int) -> bytes:
        items = {**kw, "$BEGINDATA": f"{begin:020d}", "$ENDDATA": f"{end:020d}"}
        return ("|" + "".join(f"{k}|{v}|" for k, v in items.items())).encode()

    text_len = len(text_for(0, 0))  # fixed-width offsets: length does not change
    data_start = text_start + text_len
    data_end = data_start + len(body) - 1 if body else data_start
    text = text_for(data_start, data_end)
    offsets = [text_start, text_start + text_len - 1, data_start, data_end, 0, 0]
    fields = [f"{o:>8d}" for o in offsets]
    if blank_header_data:
        fields[2] = fields[3] = " " * 8
    header = ("FCS3.1    " + "".join(fields)).encode()
    assert len(header) == 58
    raw = header + text + body
    if truncate_to is not None:
        raw = raw[:truncate_to]
    path.write_bytes(raw)
    return path


def _events(n: int = 200, n_par: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1000, size=(n, n_par)).astype("f4")


NAMES = ["FSC-A", "SSC-A", "FL1-A"]


def _assert_read_error(path: Path, *, contains: str = "") -> FCSReadError:
    with pytest.raises(FCSReadError) as info:
        read_fcs(path)
    message = str(info.value)
    assert path.name in message
    assert "\n" not in message
    assert contains in message
    assert isinstance(info.value, CytopipeError) and isinstance(info.value, ValueError)
    return info.value


# --------------------------------------------------------------------------
# 1. the real-file corpus
# --------------------------------------------------------------------------
_NO_CORPUS = pytest.param(None, marks=pytest.mark.skip(
    reason=f"../shared/fcs_corpus not present: {CORPUS} has no MANIFEST.tsv"), id="no-corpus")


@pytest.mark.parametrize("row", ROWS or [_NO_CORPUS], ids=[r["relpath"] for r in ROWS] or None)
def test_corpus_file_reads_or_fails_clearly(row: dict[str, str]) -> None:
    _skip_without_corpus()
    path = CORPUS / row["relpath"]
    try:
        sample = read_fcs(path)
    except FCSReadError as e:
        message = str(e)
        assert path.name in message and "\n" not in message
        assert not _some_reader_ok(row), f"a reader handles {path.name}, we refused: {message}"
        return
    assert isinstance(sample, fk.Sample)
    assert sample.event_count == int(row["n_events"])
    assert sample.get_events(source="raw").shape == (int(row["n_events"]), int(row["n_params"]))
    assert len(sample.pnn_labels) == int(row["n_params"])
    assert np.isfinite(sample.get_events(source="raw")).all()
    assert sample.id == path.name
    meta = sample.metadata
    has_spill = "spillover" in meta or "spill" in meta
    assert has_spill == (row["spillover"] == "yes")
    assert [c.pnn for c in channels(sample)] == list(sample.pnn_labels)
    if has_spill and not any("spillover" in n for n in sample.cytopipe_notes):
        # a well-formed spillover: FlowKit's Matrix parses it against the $PnN it names
        spill = meta.get("spillover") or meta["spill"]
        n = int(spill.split(",")[0])
        names = [s.strip() for s in spill.split(",")[1 : n + 1]]
        assert set(names) <= set(sample.pnn_labels)
        assert fk.Matrix(spill, names).matrix.shape == (n, n)


def test_corpus_summary(capsys: pytest.CaptureFixture[str]) -> None:
    """Every file some reader handles must read; print what happened to each."""
    _skip_without_corpus()
    lines, refused = [], {}
    for row in ROWS:
        path = CORPUS / row["relpath"]
        try:
            sample = read_fcs(path)
            lines.append(f"read    {path.name}: {sample.event_count} x {len(sample.pnn_labels)}"
                         f" {'; '.join(sample.cytopipe_notes)}")
        except FCSReadError as e:
            refused[row["relpath"]] = str(e)
            lines.append(f"refused {path.name}: {e}")
    with capsys.disabled():
        print("\nFCS corpus:\n  " + "\n  ".join(lines))
    handled_by_someone = {r["relpath"] for r in ROWS if _some_reader_ok(r)}
    assert not handled_by_someone & set(refused), refused
    assert set(refused) == UNREADABLE


def test_corpus_quirky_files_give_the_same_events_as_their_clean_twins() -> None:
    """The noncompliant S1400EXi files and the fake-large Fortessa hold known data."""
    _skip_without_corpus()
    clean = read_fcs(CORPUS / "FlowIO/data__fcs_files__variable_int_example.fcs")
    for name in ("start", "stop"):
        rel = f"FlowKit/data__noncompliant__data_{name}_offset_discrepancy_example.fcs"
        odd = read_fcs(CORPUS / rel)
        np.testing.assert_array_equal(odd.get_events(source="raw"), clean.get_events(source="raw"))
        assert any("offsets disagree" in n for n in odd.cytopipe_notes)
    # the bad $TIMESTEP is kept in the metadata and the Time channel left unscaled
    assert clean.metadata["timestep"] == "xxxxxxxxx"
    assert any("TIMESTEP" in n for n in clean.cytopipe_notes)
    fortessa = (
        "fcsparser/fcsparser__tests__data__FlowCytometers__Fortessa__"
        "FCS_3.0_Fortessa_PBS_Specimen_001_A1_A01.fcs"
    )
    fake = "fcsparser/fcsparser__tests__data__FlowCytometers__fake_large_fcs__fake_large_fcs.fcs"
    np.testing.assert_array_equal(
        read_fcs(CORPUS / fake).get_events(source="raw"),
        read_fcs(CORPUS / fortessa).get_events(source="raw"),
    )
    lmd = read_fcs(CORPUS / "FlowKit/data__multi_dataset_fcs__coulter.lmd")
    assert any("several data sets" in n for n in lmd.cytopipe_notes)


def test_corpus_scan_headers_agrees_with_manifest() -> None:
    _skip_without_corpus()
    df = scan_headers([CORPUS / r["relpath"] for r in ROWS])
    assert len(df) == len(ROWS)
    for row, (_, got) in zip(ROWS, df.iterrows()):
        if row["n_events"]:
            assert got["n_events"] == int(row["n_events"])
            assert got["n_channels"] == int(row["n_params"])
            assert got["fcs_version"] == row["version"].removeprefix("FCS")
            assert got["spillover"] == (row["spillover"] == "yes")
            assert got["$TOT"] == row["n_events"]
            assert len(got["pnn"].split(",")) == int(row["n_params"]) or "," in got["pnn"]
        assert "\n" not in got["error"]
        assert (got["error"] == "") == (row["relpath"] not in UNREADABLE), got["error"]


# --------------------------------------------------------------------------
# 2. bad files built by hand
# --------------------------------------------------------------------------
def test_good_hand_built_file_reads(tmp_path: Path) -> None:
    data = _events()
    path = write_fcs(tmp_path / "good.fcs", data, NAMES, extra={"$P3S": "CD4"})
    sample = read_fcs(path, sample_id="P001-V1")
    assert sample.id == "P001-V1"
    assert sample.cytopipe_notes == ()
    np.testing.assert_array_equal(sample.get_events(source="raw"), data.astype("f8"))
    assert channels(sample) == [
        ChannelInfo(1, "FSC-A", ""),
        ChannelInfo(2, "SSC-A", ""),
        ChannelInfo(3, "FL1-A", "CD4"),
    ]
    assert channels(scan_header(path)) == channels(sample)


def test_blank_header_offsets_read_from_text(tmp_path: Path) -> None:
    data = _events()
    path = write_fcs(tmp_path / "blank.fcs", data, NAMES, blank_header_data=True)
    sample = read_fcs(path)
    np.testing.assert_array_equal(sample.get_events(source="raw"), data.astype("f8"))


def test_truncated_file(tmp_path: Path) -> None:
    good = write_fcs(tmp_path / "full.fcs", _events(), NAMES)
    size = good.stat().st_size
    path = write_fcs(tmp_path / "truncated.fcs", _events(), NAMES, truncate_to=size - 100)
    _assert_read_error(path, contains="truncated")
    header_only = write_fcs(tmp_path / "header_only.fcs", _events(), NAMES, truncate_to=30)
    _assert_read_error(header_only, contains="truncated")


def test_huge_tot_refused_quickly_without_allocating(tmp_path: Path) -> None:
    path = write_fcs(tmp_path / "huge_tot.fcs", _events(), NAMES, tot=10**12)
    read_fcs(write_fcs(tmp_path / "warm.fcs", _events(), NAMES))  # import/warm caches first
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        err = _assert_read_error(path, contains=f"$TOT={10**12} events")
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 1.0
    assert peak < 5 * 2**20, f"peak {peak} bytes"
    assert "$TOT" in str(err)


def test_zero_events(tmp_path: Path) -> None:
    path = write_fcs(tmp_path / "empty.fcs", np.zeros((0, 3)), NAMES)
    _assert_read_error(path, contains="zero events")


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values(tmp_path: Path, bad: float) -> None:
    data = _events()
    data[[3, 7, 11], 2] = bad
    data[5, 0] = bad
    path = write_fcs(tmp_path / "nan.fcs", data, NAMES)
    err = _assert_read_error(path, contains="4 non-finite")
    assert "'FL1-A': 3" in str(err) and "'FSC-A': 1" in str(err)


def test_duplicate_pnn(tmp_path: Path) -> None:
    path = write_fcs(tmp_path / "dupes.fcs", _events(), ["FSC-A", "FL1-A", "FL1-A"])
    _assert_read_error(path, contains="duplicate")


def test_not_an_fcs_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.fcs"
    path.write_text("patient 001, visit 1: re-run tomorrow\n" * 5)
    _assert_read_error(path, contains="not an FCS file")
    with pytest.raises(FCSReadError, match="notes.fcs"):
        scan_header(path)


def test_missing_file(tmp_path: Path) -> None:
    _assert_read_error(tmp_path / "nowhere.fcs")


def test_spillover_by_channel_number_is_translated(tmp_path: Path) -> None:
    names = ["FSC-A", "SSC-A", "FL1-A", "FL2-A"]
    spill = "2,3,4,1,0.1,0.05,1"
    path = write_fcs(tmp_path / "spill.fcs", _events(n_par=4), names, extra={"$SPILLOVER": spill})
    sample = read_fcs(path)
    assert sample.metadata["spillover"] == "2,FL1-A,FL2-A,1,0.1,0.05,1"
    assert any("by number" in n for n in sample.cytopipe_notes)
    matrix = fk.Matrix(sample.metadata["spillover"], ["FL1-A", "FL2-A"])
    np.testing.assert_allclose(matrix.matrix, [[1, 0.1], [0.05, 1]])


# --------------------------------------------------------------------------
# 3. scan_headers on a mix
# --------------------------------------------------------------------------
def test_scan_headers_mix(tmp_path: Path) -> None:
    good = write_fcs(tmp_path / "good.fcs", _events(), NAMES, extra={"$CYT": "Aurora"})
    text = tmp_path / "text.fcs"
    text.write_text("not an fcs file")
    huge = write_fcs(tmp_path / "huge.fcs", _events(), NAMES, tot=10**12)
    df = scan_headers([good, text, huge, tmp_path / "missing.fcs"])
    assert list(df["path"]) == [str(good), str(text), str(huge), str(tmp_path / "missing.fcs")]
    assert list(df.columns[:7]) == [
        "path", "fcs_version", "n_events", "n_channels", "pnn", "spillover", "error",
    ]
    first = df.iloc[0]
    assert first["error"] == "" and first["n_events"] == 200 and first["n_channels"] == 3
    assert first["pnn"] == "FSC-A,SSC-A,FL1-A" and first["$CYT"] == "Aurora"
    assert first["fcs_version"] == "3.1" and not first["spillover"]
    for i, name in [(1, "text.fcs"), (2, "huge.fcs"), (3, "missing.fcs")]:
        assert name in df.iloc[i]["error"] and "\n" not in df.iloc[i]["error"]
    assert df.iloc[2]["n_events"] == 10**12  # the header value is still reported


# --------------------------------------------------------------------------
# 4. hashing
# --------------------------------------------------------------------------
def test_file_sha256(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    payload = np.random.default_rng(1).bytes(3 * 2**20 + 17)
    path.write_bytes(payload)
    assert file_sha256(path) == hashlib.sha256(payload).hexdigest()
    assert file_sha256(path, chunk_size=1000) == hashlib.sha256(payload).hexdigest()
    with pytest.raises(FCSReadError, match="nope.bin"):
        file_sha256(tmp_path / "nope.bin")


def test_file_over_99_999_999_bytes_with_zero_header_offsets(tmp_path: Path) -> None:
    """FCS 3.1: DATA beyond byte 99,999,999 puts 0 in the HEADER; TEXT has the offsets."""
    n_events = 100_000_000 // 8 + 10  # 2 float32 channels: DATA ends past the HEADER limit
    small = write_fcs(tmp_path / "small.fcs", np.zeros((1, 2)), ["FSC-A", "SSC-A"], tot=n_events)
    raw = bytearray(small.read_bytes()[:-8])  # HEADER + TEXT of a file with n_events events
    data_start = len(raw)
    text = raw[58:].decode()
    data_end = data_start + 8 * n_events - 1
    text = text.replace(f"$ENDDATA|{data_start + 7:020d}", f"$ENDDATA|{data_end:020d}")
    assert f"{data_end:020d}" in text
    raw[58:] = text.encode()
    raw[26:42] = b"       0       0"
    path = tmp_path / "large.fcs"
    with open(path, "wb") as fh:
        fh.write(raw)
        fh.seek(data_start + 8 * n_events - 4)
        fh.write(np.float32(7.0).tobytes())  # sparse: only the last value is written
    assert path.stat().st_size > 99_999_999
    sample = read_fcs(path)
    events = sample.get_events(source="raw")
    assert events.shape == (n_events, 2)
    assert events[-1, 1] == 7.0 and events[0, 0] == 0.0
    assert scan_headers([path]).iloc[0]["error"] == ""
