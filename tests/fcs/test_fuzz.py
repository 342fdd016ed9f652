"""Fuzzing the FCS reader: every mutated file ends in success or a CytopipeError.

Mutations of valid generated files (both versions, both byte orders):
truncation, flipped bytes in HEADER and TEXT, rewritten keywords ($PAR,
$TOT, offsets past the end, non-numeric values, duplicate $PnN, a $TOT of
10^12, zero events) and NaN / infinite events. Each case must finish within
a time bound, raise nothing but CytopipeError, and allocate nothing near the
size a lying header declares.
"""

from __future__ import annotations

import random
import re
import signal
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cytopipe.exceptions import CytopipeError
from cytopipe.fcs.lean import read_fcs_lean
from cytopipe.fcs.read import read_fcs
from cytopipe.sim.sample import SampleSpec, write_fcs

pytestmark = pytest.mark.slow

N_EVENTS = 300
TIME_LIMIT_S = 10
PEAK_LIMIT = 50 * 2**20  # bytes traced while reading a ~15 kB file


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("fuzz-src")
    out = []
    for i, (version, order) in enumerate([("3.1", "little"), ("3.0", "big"), ("3.1", "big"), ("3.0", "little")]):
        path = folder / f"{i}.fcs"
        write_fcs(path, SampleSpec(n_events=N_EVENTS, seed=i, fcs_version=version, byteorder=order))
        out.append(path)
    return out


def _text_bounds(data: bytes) -> tuple[int, int]:
    return int(data[10:18]), int(data[18:26])


def _set_keyword(data: bytes, key: str, value: str) -> bytes:
    """Rewrite one TEXT keyword's value in place (lengths may change: offsets then lie too)."""
    start, end = _text_bounds(data)
    text = data[start : end + 1].decode("latin-1")
    delim = text[0]
    pattern = re.compile(re.escape(delim + key + delim) + r"[^" + re.escape(delim) + r"]*")
    new_text, n = pattern.subn(lambda m: delim + key + delim + value, text, count=1)
    if n == 0:
        new_text = text[:-1] + delim + key + delim + value + delim if text.endswith(delim) else text
    return data[:start] + new_text.encode("latin-1") + data[end + 1 :]


def _put_events(data: bytes, values: list[float]) -> bytes:
    start, end = _text_bounds(data)
    text = data[start : end + 1].decode("latin-1")
    begin = int(re.search(r"\$BEGINDATA.(\d+)", text).group(1))
    dtype = ">f4" if "4,3,2,1" in text else "<f4"
    blob = bytearray(data)
    for i, v in enumerate(values):
        blob[begin + 4 * i : begin + 4 * i + 4] = np.array([v], dtype=dtype).tobytes()
    return bytes(blob)


KEYS = ["$PAR", "$TOT", "$BEGINDATA", "$ENDDATA", "$P1N", "$P2N", "$BYTEORD", "$DATATYPE", "$P3B",
        "$SPILLOVER", "SPILL", "$TIMESTEP", "$NEXTDATA", "$P4R", "$MODE"]
VALUES = ["0", "-1", "1", "13", "999999999999", str(10**12), "abc", "", "NaN", "4,3,2,1", "D", "I", "FSC-A",
          "2,FSC-A,SSC-A,1,0,0,1", "1e400", "12.5", "99999999"]


@st.composite
def mutation(draw):
    kind = draw(st.sampled_from(["truncate", "flip_header", "flip_text", "flip_any", "keyword", "events",
                                 "dup_pnn", "keywords2"]))
    return kind, draw(st.integers(0, 3)), random.Random(draw(st.integers(0, 2**32 - 1)))


def _mutate(data: bytes, kind: str, rnd) -> bytes:
    _mutate.last = kind
    blob = bytearray(data)
    start, end = _text_bounds(data)
    if kind == "truncate":
        return bytes(blob[: rnd.randrange(0, len(blob))])
    if kind in ("flip_header", "flip_text", "flip_any"):
        lo, hi = {"flip_header": (0, 58), "flip_text": (start, end + 1), "flip_any": (0, len(blob))}[kind]
        for _ in range(rnd.randint(1, 8)):
            i = rnd.randrange(lo, hi)
            blob[i] = rnd.randrange(256)
        return bytes(blob)
    if kind == "keyword":
        key, value = rnd.choice(KEYS), rnd.choice(VALUES)
        _mutate.last = f"{key}={value!r}"
        return _set_keyword(data, key, value)
    if kind == "keywords2":
        tot, key, value = rnd.choice(["0", str(10**12), "1", str(N_EVENTS * 2)]), rnd.choice(KEYS), rnd.choice(VALUES)
        _mutate.last = f"$TOT={tot} {key}={value!r}"
        return _set_keyword(_set_keyword(data, "$TOT", tot), key, value)
    if kind == "dup_pnn":
        return _set_keyword(data, f"$P{rnd.randint(2, 12)}N", "FSC-A")
    values = [rnd.choice([float("nan"), float("inf"), -float("inf"), 1e38, -0.0]) for _ in range(rnd.randint(1, 5))]
    return _put_events(data, values)


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout


@settings(max_examples=1100, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=mutation())
def test_mutated_files_end_in_success_or_cytopipe_error(originals, tmp_path, case):
    kind, which, rnd = case
    path = Path(tmp_path) / "m.fcs"
    path.write_bytes(_mutate(originals[which].read_bytes(), kind, rnd))
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(TIME_LIMIT_S)
    tracemalloc.start()
    sample = lean = None
    try:
        try:
            sample = read_fcs(path)
        except CytopipeError as e:
            assert str(path) in str(e) or path.name in str(e), str(e)
            assert "\n" not in str(e)
        else:
            assert sample.event_count >= 1
            assert np.isfinite(sample.get_events(source="raw")).all()
        try:  # the float32 reader: refuses what read_fcs refuses, reads what it reads, or leaves it to it
            lean = read_fcs_lean(path)
        except CytopipeError as e:
            assert sample is None, f"read_fcs reads it, read_fcs_lean refused: {e}"
        if lean is not None:
            assert sample is not None, f"read_fcs_lean read a file read_fcs refuses ({kind})"
            keep = [i for i, n in enumerate(sample.pnn_labels) if n not in lean.inexact_channels]
            np.testing.assert_array_equal(lean.get_events()[:, keep], sample.get_events(source="raw")[:, keep])
    except _Timeout:
        pytest.fail(f"a reader hung on a {kind} mutation")
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert peak < PEAK_LIMIT, f"{kind} {getattr(_mutate, 'last', '')}: {peak / 2**20:.0f} MiB traced"


def test_declared_terabyte_is_refused_without_allocating(originals, tmp_path):
    path = tmp_path / "huge.fcs"
    path.write_bytes(_set_keyword(originals[0].read_bytes(), "$TOT", str(10**12)))
    tracemalloc.start()
    with pytest.raises(CytopipeError, match="huge.fcs"):
        read_fcs(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < PEAK_LIMIT


def test_header_scan_of_a_lying_par_is_a_row_with_an_error(originals, tmp_path):
    """A batch scan records the bad file and goes on, without building 10^12 channels."""
    from cytopipe.fcs.read import scan_headers

    bad = tmp_path / "par.fcs"
    bad.write_bytes(_set_keyword(originals[1].read_bytes(), "$PAR", "999999999999"))
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(TIME_LIMIT_S)
    try:
        table = scan_headers([bad, originals[0]])
    finally:
        signal.alarm(0)
    assert "names only 12" in table["error"].iloc[0]
    assert table["error"].iloc[1] == "" and table["n_events"].iloc[1] == N_EVENTS
