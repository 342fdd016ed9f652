"""Every DATA layout FCS permits, checked value for value against a plain decoding written here.

Files are written byte by byte by this module: integers of 8 to 64 bits
(uniform and per channel), both byte orders and the 3-byte orders of older
writers, ``$PnR`` masks that cut high bits, float32, float64 and ASCII. The
expected values come from ``int.from_bytes`` / ``struct`` per value, never
from the code under test. FlowIO keeps reading what it reads; the rest goes
through cytopipe's own decoder (``cytopipe.fcs.decode.decode_data``).
"""

from __future__ import annotations

import csv
import random
import re
import struct
from pathlib import Path

import flowkit as fk
import numpy as np
import pytest

from cytopipe.exceptions import CytopipeError, FCSReadError
from cytopipe.fcs import read_fcs, read_fcs_lean, read_for_gating, scan_header, scan_headers
from cytopipe.fcs.decode import flowio_cannot_read

CORPUS = Path(__file__).parents[2].parent / "shared" / "fcs_corpus"
MANIFEST = CORPUS / "MANIFEST.tsv"
NAMES = ["FSC-A", "SSC-A", "FL1-A", "FL2-A"]


# --------------------------------------------------------------------------
# a writer of any layout, and the plain decoding the reader is checked against
# --------------------------------------------------------------------------
def _keywords(names, widths, ranges, *, datatype="I", byteord="1,2,3,4", tot, extra=None) -> dict[str, str]:
    kw = {
        "$BYTEORD": byteord,
        "$DATATYPE": datatype,
        "$MODE": "L",
        "$NEXTDATA": "0",
        "$PAR": str(len(names)),
        "$TOT": str(tot),
    }
    for i, (name, width, rng) in enumerate(zip(names, widths, ranges), 1):
        kw.update({f"$P{i}N": name, f"$P{i}B": str(width), f"$P{i}E": "0,0", f"$P{i}R": str(rng)})
    kw.update(extra or {})
    return kw


def _write(path: Path, kw: dict[str, str], body: bytes, *, version: str = "3.1", end_shift: int = 0) -> Path:
    """HEADER + TEXT (fixed-width offsets) + DATA; ``end_shift`` moves $ENDDATA past the data on purpose."""

    def text_for(begin: int, end: int) -> bytes:
        items = {**kw, "$BEGINDATA": f"{begin:020d}", "$ENDDATA": f"{end:020d}"}
        return ("|" + "".join(f"{k}|{v}|" for k, v in items.items())).encode("latin-1")

    text_len = len(text_for(0, 0))
    data_start = 58 + text_len
    data_end = data_start + len(body) - 1 + end_shift
    offsets = [58, 58 + text_len - 1, data_start, data_end, 0, 0]
    header = f"FCS{version}    ".encode() + b"".join(f"{o:>8d}".encode() for o in offsets)
    path.write_bytes(header + text_for(data_start, data_end) + body + b" " * max(0, end_shift))
    return path


def _stored_to_int(chunk: bytes, byteord: str) -> int:
    """One stored integer, decoded plainly: the j-th stored byte is byte number byteord[j] (1 = least)."""
    order = [int(b) for b in byteord.split(",")]
    if len(chunk) == 1:
        return chunk[0]
    if len(order) == len(chunk):
        return sum(b << 8 * (order[j] - 1) for j, b in enumerate(chunk))
    return int.from_bytes(chunk, "little" if order[0] < order[-1] else "big")


def _spec_mask(pnr: int) -> int:
    """The FCS 3.1 rule, as written: AND with 2**ceil(log2(PnR)) - 1.

    ceil(log2(PnR)) is counted by doubling: ``math.log2(2**55 + 1)`` is 55.0 in
    floating point, one bit short.
    """
    bits = 0
    while 2**bits < pnr:
        bits += 1
    return 2**bits - 1


def _expected_ints(body: bytes, n: int, widths: list[int], ranges: list[int], byteord: str) -> np.ndarray:
    rows, pos = [], 0
    for _ in range(n):
        row = []
        for bits, pnr in zip(widths, ranges):
            value = _stored_to_int(body[pos : pos + bits // 8], byteord)
            pos += bits // 8
            row.append(float(value & _spec_mask(pnr)))
        rows.append(row)
    return np.array(rows)


def _raw(path: Path) -> np.ndarray:
    return read_fcs(path).get_events(source="raw")


def _reader(path: Path) -> str:
    text = scan_header(path)
    return "flowio" if flowio_cannot_read(text, int(text["$PAR"])) is None else "own"


def _assert_refused(path: Path, *parts: str) -> str:
    with pytest.raises(FCSReadError) as info:
        read_fcs(path)
    message = str(info.value)
    assert path.name in message and "\n" not in message, message
    for part in parts:
        assert part in message, message
    assert isinstance(info.value, CytopipeError) and isinstance(info.value, ValueError)
    return message


# --------------------------------------------------------------------------
# 1. integers: every width, both byte orders, masks
# --------------------------------------------------------------------------
UNIFORM = [
    # bits, $BYTEORD, FCS version, who decodes it
    (8, "1,2,3,4", "3.1", "flowio"),
    (16, "1,2,3,4", "3.1", "flowio"),
    (16, "4,3,2,1", "3.1", "flowio"),
    (16, "2,1", "2.0", "flowio"),
    (24, "1,2,3,4", "3.1", "own"),
    (24, "4,3,2,1", "3.1", "own"),
    (24, "1,2,3", "3.0", "own"),  # the 3-byte orders of older Cytek/FACScan writers
    (24, "3,2,1", "2.0", "own"),
    (32, "1,2,3,4", "3.1", "flowio"),
    (32, "4,3,2,1", "3.1", "flowio"),
    (32, "3,4,1,2", "3.0", "own"),  # a mixed order FCS 3.0 allowed
    (40, "1,2,3,4", "3.1", "own"),
    (48, "4,3,2,1", "3.1", "own"),
    (56, "1,2,3,4", "3.1", "own"),
    (64, "1,2,3,4", "3.1", "own"),
    (64, "4,3,2,1", "3.1", "own"),
    (64, "8,7,6,5,4,3,2,1", "3.0", "own"),
]


@pytest.mark.parametrize(("bits", "byteord", "version", "reader"), UNIFORM)
def test_integer_widths_and_byte_orders_decode_value_for_value(tmp_path, bits, byteord, version, reader):
    n = 64
    # the full range; 3 bits cut; a range that is no power of two (keeps 10 or 7 bits); one bit short of nothing
    ranges = [2**bits, 2 ** (bits - 3), 1000 if bits > 8 else 100, 2 ** (bits - 1) + 1]
    body = random.Random(bits * 7 + len(byteord)).randbytes(n * 4 * bits // 8)  # garbage in every bit
    kw = _keywords(NAMES, [bits] * 4, ranges, byteord=byteord, tot=n)
    path = _write(tmp_path / f"i{bits}.fcs", kw, body, version=version)
    assert _reader(path) == reader
    got = _raw(path)
    np.testing.assert_array_equal(got, _expected_ints(body, n, [bits] * 4, ranges, byteord))
    assert (got[:, 1] < 2 ** (bits - 3)).all() and (got[:, 2] < (1024 if bits > 8 else 128)).all()


MIXED = [
    ([8, 16, 32, 16], "1,2,3,4", "flowio"),
    ([32, 8, 16, 8], "4,3,2,1", "flowio"),
    ([8, 24, 40, 64], "1,2,3,4", "own"),
    ([24, 16, 56, 32], "4,3,2,1", "own"),
]


@pytest.mark.parametrize(("widths", "byteord", "reader"), MIXED)
def test_per_channel_widths_decode_value_for_value(tmp_path, widths, byteord, reader):
    n = 50
    ranges = [2 ** (b - 2) + 1 if k % 2 == 0 else 2**b for k, b in enumerate(widths)]  # even channels cut 1 bit
    body = random.Random(sum(widths)).randbytes(n * sum(widths) // 8)
    path = _write(tmp_path / "mixed.fcs", _keywords(NAMES, widths, ranges, byteord=byteord, tot=n), body)
    assert _reader(path) == reader
    np.testing.assert_array_equal(_raw(path), _expected_ints(body, n, widths, ranges, byteord))


def test_pnr_mask_keeps_the_low_bits_the_standard_says(tmp_path):
    """$PnR=1024 in 16 bits keeps 10 bits; $PnR=1000 rounds up to 1024; 2**20 in 24 bits keeps 20."""
    values16 = [0xFFFF, 0xFC00 + 517, 1023, 1024]
    body = b"".join(v.to_bytes(2, "little") for v in values16)
    kw = _keywords(["FL1-A"], [16], [1024], tot=4)
    assert _raw(_write(tmp_path / "m16.fcs", kw, body))[:, 0].tolist() == [1023, 517, 1023, 0]

    values24 = [(0xABCDEF, 0xABCDEF, 0xABCDEF), (0xFFFFFF, 1000, 2**20)]
    body = b"".join(v.to_bytes(3, "big") for row in values24 for v in row)
    kw = _keywords(["FL1-A", "FL2-A", "FL3-A"], [24] * 3, [1024, 1000, 2**20], byteord="3,2,1", tot=2)
    got = _raw(_write(tmp_path / "m24.fcs", kw, body, version="3.0"))
    assert got.tolist() == [[0x1EF, 0x1EF, 0x0BCDEF], [1023, 1000, 0]]

    # a range written as a decimal ("1024.0", which FlowIO's int() refuses) is the same range
    kw = _keywords(["FL1-A"], [16], ["1024.0"], tot=4)
    body = b"".join(v.to_bytes(2, "little") for v in values16)
    assert _raw(_write(tmp_path / "f16.fcs", kw, body))[:, 0].tolist() == [1023, 517, 1023, 0]


def test_a_range_beyond_the_storage_next_to_a_cutting_one(tmp_path):
    """FlowIO's one mask array overflows here (262144 > 2**16 next to 1024); ours masks per channel."""
    body = random.Random(3).randbytes(20 * 2 * 2)
    kw = _keywords(["FSC-A", "FL1-A"], [16, 16], [262144, 1024], tot=20)
    path = _write(tmp_path / "wide.fcs", kw, body)
    assert _reader(path) == "own"
    np.testing.assert_array_equal(_raw(path), _expected_ints(body, 20, [16, 16], [2**16, 1024], "1,2,3,4"))


# --------------------------------------------------------------------------
# 2. float, double, ASCII
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("datatype", "byteord", "reader"),
    [
        ("F", "1,2,3,4", "flowio"),
        ("F", "4,3,2,1", "flowio"),
        ("F", "3,4,1,2", "own"),
        ("D", "1,2,3,4", "flowio"),
        ("D", "4,3,2,1", "flowio"),
        ("D", "1,2,3,4,5,6,7,8", "own"),
        ("D", "8,7,6,5,4,3,2,1", "own"),
    ],
)
def test_float_and_double_decode_value_for_value(tmp_path, datatype, byteord, reader):
    n, size = 40, 4 if datatype == "F" else 8
    rnd = random.Random(size + len(byteord))
    fmt = "f" if datatype == "F" else "d"
    order = [int(b) for b in byteord.split(",")]
    body, expected = b"", []
    for _ in range(n * 4):
        little = struct.pack("<" + fmt, rnd.uniform(-1e6, 1e6))
        if len(order) == size:  # store byte number order[j] (1 = least significant) at position j
            stored = bytes(little[b - 1] for b in order)
        else:
            stored = little if order[0] == 1 else little[::-1]
        body += stored
        expected.append(struct.unpack("<" + fmt, little)[0])
    kw = _keywords(NAMES, [8 * size] * 4, [262144] * 4, datatype=datatype, byteord=byteord, tot=n)
    path = _write(tmp_path / f"{datatype}.fcs", kw, body, version="3.0")
    assert _reader(path) == reader
    np.testing.assert_array_equal(_raw(path), np.array(expected).reshape(n, 4))


def test_fixed_width_ascii_decodes_value_for_value(tmp_path):
    widths, n = [3, 5, 8, 4], 30
    rnd = random.Random(5)
    cells = [[rnd.randrange(10**w) for w in widths] for _ in range(n)]
    # space- and zero-padded numbers both occur; ASCII has no byte order
    body = "".join(
        str(v).rjust(w) if k % 2 else str(v).zfill(w) for row in cells for k, (v, w) in enumerate(zip(row, widths))
    ).encode()
    # ranges smaller than some values: the $PnR bit mask is for binary integers, decimal digits are kept
    kw = _keywords(NAMES, widths, [100, 1024, 10**8, 10**4], datatype="A", byteord="4,3,2,1", tot=n)
    path = _write(tmp_path / "a.fcs", kw, body, version="3.0")
    assert _reader(path) == "own"
    got = _raw(path)
    np.testing.assert_array_equal(got, np.array(cells, dtype=float))
    assert got[:, 0].max() > 100  # above its $PnR, kept


def test_delimited_ascii_decodes_value_for_value(tmp_path):
    n, rnd = 25, random.Random(6)
    cells = [[rnd.randrange(100000) for _ in range(4)] for _ in range(n)]
    separators = [" ", ",", "\t", "\r\n", "  "]
    body = "".join(f"{v}{separators[(r + k) % 5]}" for r, row in enumerate(cells) for k, v in enumerate(row)).encode()
    kw = _keywords(NAMES, ["*"] * 4, [100000] * 4, datatype="A", tot=n)
    path = _write(tmp_path / "star.fcs", kw, body, version="3.0")
    np.testing.assert_array_equal(_raw(path), np.array(cells, dtype=float))


# --------------------------------------------------------------------------
# 3. a 24-bit file through the whole pipeline
# --------------------------------------------------------------------------
def test_24_bit_file_reads_and_gates_like_the_same_events_in_float32(tmp_path):
    from cytopipe.gating.api import gate_sample
    from cytopipe.sim.sample import SampleSpec, write_fcs
    from cytopipe.strategy.registry import load_strategy

    sim = tmp_path / "sim.fcs"  # a generated file: its $PnS, SPILL and $TIMESTEP are what the strategy needs
    write_fcs(sim, SampleSpec(n_events=6000, seed=21, fcs_version="3.0"))
    text = scan_header(sim)
    n, n_par = int(text["$TOT"]), int(text["$PAR"])
    start = int(text["$BEGINDATA"])
    dtype = "<f4" if text["$BYTEORD"] == "1,2,3,4" else ">f4"
    floats = np.frombuffer(sim.read_bytes()[start : start + 4 * n * n_par], dtype=dtype).reshape(n, n_par)
    ints = np.clip(np.rint(floats), 0, 262143).astype(np.int64)  # unsigned, within $PnR=262144
    keep = {k: v for k, v in text.items() if k not in ("$BEGINDATA", "$ENDDATA", "$BYTEORD", "$DATATYPE")}
    keep = {k: v for k, v in keep.items() if not re.fullmatch(r"\$P\d+B", k)}
    widths = {f"$P{i}B": "24" for i in range(1, n_par + 1)}
    body24 = b"".join(int(v).to_bytes(3, "big") for v in ints.ravel())
    p24 = _write(tmp_path / "xp5.fcs", {**keep, **widths, "$DATATYPE": "I", "$BYTEORD": "3,2,1"}, body24, version="3.0")
    widths32 = {f"$P{i}B": "32" for i in range(1, n_par + 1)}
    body32 = ints.astype("<f4").tobytes()  # exact: every value is below 2**24
    p32 = _write(
        tmp_path / "f32.fcs", {**keep, **widths32, "$DATATYPE": "F", "$BYTEORD": "1,2,3,4"}, body32, version="3.0"
    )

    s24, s32 = read_fcs(p24), read_fcs(p32)
    assert _reader(p24) == "own" and _reader(p32) == "flowio"
    assert s24.cytopipe_notes == ()
    np.testing.assert_array_equal(s24.get_events(source="raw"), s32.get_events(source="raw"))
    time = s24.time_index
    assert time is not None  # Time scaled by $TIMESTEP as FlowKit scales it for any file
    np.testing.assert_array_equal(s24.get_events(source="raw")[:, time], ints[:, time] * float(text["$TIMESTEP"]))
    assert s24.metadata["spill"] == s32.metadata["spill"] and s24.metadata["datatype"] == "I"
    assert scan_headers([p24])["error"].tolist() == [""]

    strategy = load_strategy("treg@1.0.0")
    counts24 = {p: c.count for p, c in gate_sample(s24, strategy).items()}
    counts32 = {p: c.count for p, c in gate_sample(s32, strategy).items()}
    assert counts24 == counts32
    assert counts24[strategy.denominator] > 0
    # the lean float32 reader declines it, and reading for gating falls back to FlowKit's Sample
    assert read_fcs_lean(p24) is None
    assert isinstance(read_for_gating(p24, strategy.gating_strategy()), fk.Sample)


def test_lean_reader_keeps_declining_integer_files(tmp_path):
    for bits in (16, 24):
        body = random.Random(bits).randbytes(10 * 4 * bits // 8)
        path = _write(tmp_path / f"l{bits}.fcs", _keywords(NAMES, [bits] * 4, [2**bits] * 4, tot=10), body)
        assert read_fcs_lean(path) is None
        assert read_fcs(path).event_count == 10


# --------------------------------------------------------------------------
# 4. what FCS does not permit is refused, clearly
# --------------------------------------------------------------------------
def _int_file(tmp_path: Path, name: str, *, widths=(24, 24), byteord="1,2,3,4", body=None, n=10, **kwargs) -> Path:
    widths = list(widths)
    body = random.Random(1).randbytes(n * sum(w for w in widths if isinstance(w, int)) // 8) if body is None else body
    extra = kwargs.pop("extra", None)
    kw = _keywords(NAMES[: len(widths)], widths, [2**20] * len(widths), byteord=byteord, tot=n, extra=extra)
    return _write(tmp_path / name, kw, body, **kwargs)


def test_integer_widths_fcs_does_not_permit_are_refused(tmp_path):
    msg = _assert_refused(_int_file(tmp_path, "b12.fcs", widths=(16, 12), body=b"\0" * 35), "$P2B='12'", "re-export")
    assert "8, 16, 24, 32, 40, 48, 56 or 64" in msg
    _assert_refused(_int_file(tmp_path, "b72.fcs", widths=(72, 8), body=b"\0" * 100), "$P1B='72'")
    # and the batch scan reports the same, without raising
    assert "$P2B='12'" in scan_headers([tmp_path / "b12.fcs"])["error"][0]


def test_data_size_that_disagrees_with_tot_and_pnb_is_refused(tmp_path):
    # 3 bytes more in DATA than 10 events x 6 bytes: not the one-byte quirk
    path = _int_file(tmp_path, "long.fcs", body=random.Random(2).randbytes(63))
    _assert_refused(path, "$TOT='10'", "6 bytes per event", "60 bytes", "63 bytes", "$ENDDATA")
    # $ENDDATA one byte too far, a quirk real writers have: read, and noted
    sample = read_fcs(_int_file(tmp_path, "off1.fcs", end_shift=1))
    assert sample.event_count == 10 and any("off by one" in n for n in sample.cytopipe_notes)


def test_byte_orders_that_do_not_fit_are_refused(tmp_path):
    _assert_refused(_int_file(tmp_path, "dup.fcs", byteord="1,2,2"), "$BYTEORD='1,2,2'", "1,2,3,4")
    _assert_refused(_int_file(tmp_path, "pdp.fcs", byteord="3,4,1,2"), "$BYTEORD='3,4,1,2'", "$P1B='24'")


def test_ranges_and_modes_that_cannot_be_are_refused(tmp_path):
    _assert_refused(_int_file(tmp_path, "r0.fcs", extra={"$P2R": "0"}), "$P2R='0'", "at least 1")
    _assert_refused(_int_file(tmp_path, "hist.fcs", extra={"$MODE": "C"}), "$MODE='C'", "list mode")


def test_ascii_that_is_no_number_is_refused(tmp_path):
    kw = _keywords(NAMES[:2], [3, 3], [1000, 1000], datatype="A", tot=2)
    # events "001","123" and "0x5","678": the third cell is event 2 of the first channel
    _assert_refused(_write(tmp_path / "a.fcs", kw, b"0011230x5678"), "'0x5' as event 2", "'FSC-A'", "$P1B='3'")
    kw = _keywords(NAMES[:2], ["*", "*"], [1000, 1000], datatype="A", tot=3)
    _assert_refused(_write(tmp_path / "s.fcs", kw, b"1 2 3 4 5"), "5 delimited", "$TOT='3'", "needs 6")
    kw = _keywords(NAMES[:2], ["*", "4"], [1000, 1000], datatype="A", tot=1)
    _assert_refused(_write(tmp_path / "m.fcs", kw, b"1 2 3 4 5"), "$P2B='4'")


# --------------------------------------------------------------------------
# 5. our decoder against FlowIO, on the real files FlowIO reads
# --------------------------------------------------------------------------
def _corpus_rows() -> list[dict[str, str]]:
    if not MANIFEST.is_file():
        return []
    with open(MANIFEST, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def test_own_decoder_gives_flowios_events_on_the_real_files(monkeypatch):
    """Forced through our decoder, every corpus file that reads gives FlowIO's events and metadata exactly."""
    rows = _corpus_rows()
    if not rows:
        pytest.skip(f"../shared/fcs_corpus not present: {CORPUS} has no MANIFEST.tsv")
    import cytopipe.fcs.read as read_module

    compared = []
    for row in rows:
        path = CORPUS / row["relpath"]
        try:
            flowio_sample = read_fcs(path)
        except FCSReadError:
            continue  # the two files nothing reads (tests/fcs/test_read.py checks which)
        with monkeypatch.context() as m:
            m.setattr(read_module, "_flowio_cannot_read", lambda text, n_par: "forced for the test")
            own = read_fcs(path)
        np.testing.assert_array_equal(own.get_events(source="raw"), flowio_sample.get_events(source="raw"))
        assert own.metadata == flowio_sample.metadata and own.pnn_labels == flowio_sample.pnn_labels
        compared.append(row["datatype"])
    assert compared.count("I") >= 6 and compared.count("F") >= 10, compared
