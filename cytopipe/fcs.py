"""Read and check one FCS file; scan the headers of a batch quickly.

:func:`read_fcs` is the one place cytopipe reads event data. It reads with
FlowIO/FlowKit and retries with their options when a file has one of the
known quirks of real instruments (offset discrepancies, an off-by-one
``$ENDDATA``, several data sets, a bad ``$TIMESTEP``, blank HEADER offsets).
Before any event is read, the declared ``$TOT`` x bytes per event is checked
against the file size, so a header that lies cannot make us allocate.

:func:`scan_header` and :func:`scan_headers` read the TEXT segment only,
with fcsparser, and are meant for checking a whole batch before gating.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import fcsparser.api
import flowio
import flowkit as fk
import numpy as np
import pandas as pd
from flowio.exceptions import (
    DataOffsetDiscrepancyError,
    FCSParsingError,
    MultipleDataSetsError,
)

from cytopipe.exceptions import FCSReadError

__all__ = [
    "ChannelInfo",
    "channels",
    "file_sha256",
    "read_fcs",
    "scan_header",
    "scan_headers",
]

PathLike = Union[str, "os.PathLike[str]"]

_HEADER_LEN = 58
_VERSIONS = ("FCS2.0", "FCS3.0", "FCS3.1", "FCS3.2")
# The FCS 3.1 spec: HEADER offsets above this are written as 0.
_HEADER_OFFSET_MAX = 99_999_999
_SCAN_COLUMNS = (
    "path",
    "fcs_version",
    "n_events",
    "n_channels",
    "pnn",
    "spillover",
    "error",
)


# --------------------------------------------------------------------------
# hashing
# --------------------------------------------------------------------------
def file_sha256(path: PathLike, *, chunk_size: int = 1 << 20) -> str:
    """Return the hex SHA-256 of a file, read in chunks.

    Parameters
    ----------
    path
        The file.
    chunk_size
        Bytes read at a time; memory use stays at about this much.

    Returns
    -------
    str
        64 lower-case hex digits.

    Raises
    ------
    FCSReadError
        If the file cannot be opened or read.

    Examples
    --------
    >>> file_sha256("sample.fcs")  # doctest: +SKIP
    'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'
    """
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(chunk_size), b""):
                digest.update(chunk)
    except OSError as e:
        msg = f"Cannot read {os.fspath(path)!r} to hash it: {e}. Check the path and permissions."
        raise FCSReadError(msg) from e
    return digest.hexdigest()


# --------------------------------------------------------------------------
# HEADER and TEXT
# --------------------------------------------------------------------------
def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _fix_encoding(s: str) -> str:
    # TEXT is decoded as Latin-1 (never fails, one char per byte); recover
    # UTF-8 where the bytes are valid UTF-8, as FlowIO does for the whole TEXT.
    try:
        return s.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return s


def _read_header(path: Path) -> dict[str, Any]:
    """Parse the 58-byte HEADER; offsets that are blank come back as None."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            raw = fh.read(_HEADER_LEN)
    except OSError as e:
        msg = f"Cannot open FCS file {str(path)!r}: {_one_line(e)}. Check the path and permissions."
        raise FCSReadError(msg) from e
    version = raw[:6].decode("latin-1")
    if version not in _VERSIONS:
        msg = (
            f"{str(path)!r} is not an FCS file: it starts with {raw[:10]!r}, expected one of "
            f"{', '.join(_VERSIONS)}. Check that the path points at an FCS file."
        )
        raise FCSReadError(msg)
    if len(raw) < _HEADER_LEN:
        msg = (
            f"FCS file {str(path)!r} is truncated: {len(raw)} bytes, shorter than the "
            f"{_HEADER_LEN}-byte HEADER. Re-export or re-copy the file."
        )
        raise FCSReadError(msg)
    fields: dict[str, int | None] = {}
    names = (
        "text_start", "text_stop", "data_start", "data_stop", "analysis_start", "analysis_stop"
    )
    for i, name in enumerate(names):
        chunk = raw[10 + 8 * i : 18 + 8 * i].strip()
        fields[name] = int(chunk) if chunk.isdigit() else None
    return {"version": version[3:], "raw": raw, "file_size": size, **fields}


class _TextParser(fcsparser.api.FCSParser):
    """fcsparser's TEXT reader with upper-case keys and an optional $NEXTDATA.

    fcsparser looks keywords up by exact upper-case name, but FCS keywords are
    case-insensitive, and $NEXTDATA is optional from FCS 3.2 on.
    """

    def _extract_text_dict(self, raw_text: str) -> dict[str, str]:  # type: ignore[override]
        text = {k.upper(): v for k, v in super()._extract_text_dict(raw_text).items()}
        # fcsparser builds a list per declared channel: a $PAR of 10**12 would never end.
        # Cap it at the channels actually named; _precheck refuses the lie with the real value.
        self.declared_par = text.get("$PAR")
        n_named = sum(1 for k in text if re.fullmatch(r"\$P\d+N", k))
        try:
            if int(str(text.get("$PAR", "")).strip()) > n_named:
                text["$PAR"] = str(n_named)
        except ValueError:
            pass
        self.injected_nextdata = "$NEXTDATA" not in text
        text.setdefault("$NEXTDATA", "0")
        return text


def _scan(path: PathLike) -> tuple[dict[str, Any], dict[str, str]]:
    """Return (HEADER fields, TEXT keywords) of the first data set."""
    p = Path(path)
    header = _read_header(p)
    try:
        with warnings.catch_warnings():
            # fcsparser warns about delimiter heuristics and ANALYSIS segments,
            # neither of which matters for reading TEXT keywords.
            warnings.simplefilter("ignore")
            parser = _TextParser(str(p), read_data=False, encoding="latin-1")
    except Exception as e:  # fcsparser raises bare ValueError/KeyError/IndexError
        kind = type(e).__name__
        msg = (
            f"Cannot parse the TEXT segment of FCS file {str(p)!r}: {kind}: {_one_line(e)}. "
            f"The file is corrupted or not a valid FCS file; re-export it from the instrument."
        )
        raise FCSReadError(msg) from e
    text: dict[str, str] = {}
    for key, value in parser.annotation.items():
        if key == "__header__":
            continue
        if key == "$NEXTDATA" and getattr(parser, "injected_nextdata", False):
            continue
        text[_fix_encoding(str(key))] = _fix_encoding(str(value))
    if getattr(parser, "declared_par", None) is not None:
        text["$PAR"] = _fix_encoding(str(parser.declared_par))
    return header, text


def scan_header(path: PathLike) -> dict[str, str]:
    """Return the TEXT keywords of an FCS file without reading events.

    Keys are the keyword names upper-cased (FCS keywords are
    case-insensitive), with a leading ``$`` kept as written, e.g. ``'$TOT'``,
    ``'$P1N'``, ``'SPILL'``. Values are strings as written. For a file with
    several data sets, the first data set's keywords are returned.

    Parameters
    ----------
    path
        The FCS file.

    Returns
    -------
    dict of str to str
        The TEXT keywords.

    Raises
    ------
    FCSReadError
        If the file is missing, not an FCS file, or its TEXT cannot be parsed.

    Examples
    --------
    >>> scan_header("sample.fcs")["$TOT"]  # doctest: +SKIP
    '10000'
    """
    return _scan(path)[1]


def _get(text: Mapping[str, str], key: str) -> str | None:
    value = text.get(key)
    return None if value is None else str(value).strip()


def _int_keyword(path: Path, text: Mapping[str, str], key: str) -> int:
    value = _get(text, key)
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as e:
        msg = (
            f"FCS file {str(path)!r} has {key}={text.get(key)!r}, expected a whole number. "
            f"The file is corrupted or non-compliant; re-export it."
        )
        raise FCSReadError(msg) from e


def _pnn_list(text: Mapping[str, str], n_par: int) -> list[str]:
    return [text.get(f"$P{i}N", "") for i in range(1, n_par + 1)]


def _spill_key(text: Mapping[str, str]) -> str | None:
    for key in ("$SPILLOVER", "SPILLOVER", "$SPILL", "SPILL"):
        if text.get(key, "").strip():
            return key
    return None


def _bytes_per_event(path: Path, text: Mapping[str, str], n_par: int) -> int | None:
    """Bytes one event takes in DATA, or None when it cannot be known (ASCII '*')."""
    datatype = (_get(text, "$DATATYPE") or "").upper()
    if datatype == "F":
        return 4 * n_par
    if datatype == "D":
        return 8 * n_par
    if datatype not in ("I", "A"):
        msg = (
            f"FCS file {str(path)!r} has $DATATYPE={text.get('$DATATYPE')!r}, expected 'I', 'F', "
            f"'D' or 'A'. The file is non-compliant; re-export it."
        )
        raise FCSReadError(msg)
    widths = [_get(text, f"$P{i}B") for i in range(1, n_par + 1)]
    if datatype == "A" and "*" in widths:
        return None
    try:
        bits = [int(w) for w in widths]  # type: ignore[arg-type]
    except (TypeError, ValueError) as e:
        msg = (
            f"FCS file {str(path)!r} has $PnB values {widths!r}, expected whole numbers. "
            f"The file is corrupted; re-export it."
        )
        raise FCSReadError(msg) from e
    if datatype == "A":
        return sum(bits)
    bad = sorted({b for b in bits if b not in (8, 16, 32)})
    if bad:
        msg = (
            f"FCS file {str(path)!r} stores integers with $PnB bit widths {bad!r}; FlowIO reads "
            f"only 8, 16 and 32. Re-export the file as float ($DATATYPE=F)."
        )
        raise FCSReadError(msg)
    return sum(bits) // 8


def _data_offsets(header: Mapping[str, Any], text: Mapping[str, str]) -> tuple[int, int]:
    """DATA start/stop as the reader will see them: TEXT for FCS 3.x when given."""
    start, stop = header["data_start"], header["data_stop"]
    if header["version"] != "2.0" or not start:
        try:
            t_start = int(_get(text, "$BEGINDATA") or "")
            t_stop = int(_get(text, "$ENDDATA") or "")
        except ValueError:
            pass
        else:
            if header["version"] != "2.0" or (t_start and t_stop):
                start, stop = t_start, t_stop
    return start or 0, stop or 0


def _precheck(path: Path, header: dict[str, Any], text: dict[str, str]) -> dict[str, Any]:
    """Refuse files whose declared layout cannot be right, before reading DATA."""
    n_events = _int_keyword(path, text, "$TOT")
    n_par = _int_keyword(path, text, "$PAR")
    if n_par < 1:
        msg = f"FCS file {str(path)!r} declares $PAR={n_par!r} channels, expected at least 1."
        raise FCSReadError(msg)
    n_named = sum(1 for k in text if re.fullmatch(r"\$P\d+N", k))
    if n_par > n_named:
        # checked before building anything per channel: a lying $PAR must not allocate
        msg = (
            f"FCS file {str(path)!r} declares $PAR={n_par} channels but names only {n_named} "
            f"($PnN keywords). The file is non-compliant; re-export it."
        )
        raise FCSReadError(msg)
    if n_events < 1:
        msg = (
            f"FCS file {str(path)!r} has zero events ($TOT={text.get('$TOT')!r}); nothing to gate. "
            f"Check the acquisition or drop the file from the sample sheet."
        )
        raise FCSReadError(msg)
    pnn = _pnn_list(text, n_par)
    missing = [f"$P{i}N" for i, name in enumerate(pnn, 1) if not name.strip()]
    if missing:
        msg = (
            f"FCS file {str(path)!r} has no channel name for {', '.join(missing)} "
            f"($PAR={n_par}). The file is non-compliant; re-export it."
        )
        raise FCSReadError(msg)
    dupes = sorted(name for name, n in Counter(pnn).items() if n > 1)
    if dupes:
        msg = (
            f"FCS file {str(path)!r} has duplicate channel names $PnN {dupes!r} among {pnn!r}; "
            f"channels must be addressable by name. Rename the detectors and re-export."
        )
        raise FCSReadError(msg)

    file_size = header["file_size"]
    data_start, data_stop = _data_offsets(header, text)
    bpe = _bytes_per_event(path, text, n_par)
    if data_start <= 0 or data_start >= file_size:
        msg = (
            f"FCS file {str(path)!r} puts its DATA segment at byte {data_start!r}, but the file "
            f"has {file_size} bytes: it holds a header without data or is truncated. Re-copy it."
        )
        raise FCSReadError(msg)
    if bpe is not None:
        declared = n_events * bpe  # Python int: no overflow for absurd $TOT
        available = file_size - data_start
        if declared > available:
            msg = (
                f"FCS file {str(path)!r} declares $TOT={n_events} events x {bpe} bytes = "
                f"{declared} bytes of DATA, but only {available} bytes follow byte {data_start}: "
                f"the file is truncated or $TOT is wrong. Re-copy or re-export it."
            )
            raise FCSReadError(msg)
    else:
        declared = None
    return {
        "n_events": n_events,
        "n_par": n_par,
        "pnn": pnn,
        "declared_bytes": declared,
        "data_start": data_start,
        "data_stop": data_stop,
    }


# --------------------------------------------------------------------------
# reading events
# --------------------------------------------------------------------------
class _PatchedHeaderFile(io.RawIOBase):
    """A read-only file whose first 58 bytes are replaced (blank HEADER offsets)."""

    def __init__(self, path: Path, header: bytes) -> None:
        super().__init__()
        self._fh = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._header = header
        self.name = str(path)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def readinto(self, buffer: Any) -> int:
        pos = self._fh.tell()
        n = self._fh.readinto(buffer)
        if n and pos < len(self._header):
            k = min(n, len(self._header) - pos)
            memoryview(buffer)[:k] = self._header[pos : pos + k]
        return n

    def close(self) -> None:
        self._fh.close()
        super().close()


def _patched_header(header: dict[str, Any], info: dict[str, Any]) -> bytes | None:
    """HEADER bytes with blank DATA offsets filled in, or None if none are blank."""
    if header["data_start"] is not None and header["data_stop"] is not None:
        return None
    start, stop = info["data_start"], info["data_stop"]
    if stop > _HEADER_OFFSET_MAX:
        start = stop = 0  # what the spec writes for large files
    raw = bytearray(header["raw"])
    raw[26:34] = f"{start:>8d}".encode()
    raw[34:42] = f"{stop:>8d}".encode()
    return bytes(raw)


def _fail(path: Path, what: str, e: BaseException) -> FCSReadError:
    msg = (
        f"Cannot read FCS file {str(path)!r}: {what}: {type(e).__name__}: {_one_line(e)}. "
        f"The file is corrupted or non-compliant; re-export it from the instrument."
    )
    return FCSReadError(msg)


def _read_flowdata(
    path: Path, header: dict[str, Any], info: dict[str, Any], notes: list[str]
) -> flowio.FlowData:
    patched = _patched_header(header, info)
    if patched is not None:
        notes.append("blank HEADER DATA offsets: used $BEGINDATA/$ENDDATA from TEXT")
    opts: dict[str, Any] = {}
    last_error: BaseException | None = None
    for _ in range(5):  # each known quirk adds one option; never loops forever
        fh: Any = _PatchedHeaderFile(path, patched) if patched else open(path, "rb")  # noqa: SIM115
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                flow_data = flowio.FlowData(fh, **opts)
        except MultipleDataSetsError as e:
            if "nextdata_offset" in opts:
                raise _fail(path, "several data sets", e) from e
            opts["nextdata_offset"] = 0  # 0, not None: read the first data set
            notes.append("several data sets ($NEXTDATA): read the first")
            last_error = e
            continue
        except DataOffsetDiscrepancyError as e:
            if "ignore_offset_discrepancy" in opts or "use_header_offsets" in opts:
                raise _fail(path, "HEADER and TEXT DATA offsets disagree", e) from e
            opts.update(_discrepancy_option(header, info))
            notes.append(f"HEADER/TEXT DATA offsets disagree: read with {_opt_str(opts)}")
            last_error = e
            continue
        except FCSParsingError as e:
            if "off by 1" in str(e) and not opts.get("ignore_offset_error"):
                opts["ignore_offset_error"] = True
                notes.append("$ENDDATA off by one byte: read with ignore_offset_error=True")
                last_error = e
                continue
            raise _fail(path, "FlowIO could not parse it", e) from e
        except Exception as e:  # FlowIO raises bare ValueError/EOFError on bad bytes
            raise _fail(path, "FlowIO could not parse it", e) from e
        finally:
            fh.close()
        for w in caught:
            if issubclass(w.category, ResourceWarning) or "flowio" not in str(w.filename):
                continue  # only FlowIO's own warnings speak about this file (not another thread's)
            text = _one_line(w.message)
            if "reported incorrect data offset" in text and opts.get("ignore_offset_error"):
                continue  # the off-by-one we chose to accept, already noted
            msg = (
                f"FCS file {str(path)!r} read with a FlowIO warning that makes its events "
                f"untrustworthy: {text!r}. Re-export the file."
            )
            raise FCSReadError(msg)
        flow_data.name = path.name
        return flow_data
    assert last_error is not None
    raise _fail(path, "too many read problems", last_error) from last_error


def _opt_str(opts: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in opts.items())


def _discrepancy_option(header: Mapping[str, Any], info: Mapping[str, Any]) -> dict[str, bool]:
    """Pick the DATA offsets (TEXT or HEADER) whose size fits $TOT x bytes per event."""
    declared = info["declared_bytes"]
    if declared is not None and header["data_start"] is not None and header["data_stop"]:
        text_size = info["data_stop"] - info["data_start"] + 1
        header_size = header["data_stop"] - header["data_start"] + 1
        if text_size not in (declared, declared + 1) and header_size in (declared, declared + 1):
            return {"use_header_offsets": True}
    return {"ignore_offset_discrepancy": True}


def _build_sample(
    path: Path, flow_data: flowio.FlowData, sample_id: str, notes: list[str]
) -> fk.Sample:
    text = flow_data.text
    original_timestep = text.get("timestep")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                sample = fk.Sample(flow_data, sample_id=sample_id)
            except ValueError as e:
                if "Timestep value" not in str(e):
                    raise
                # FlowIO treats a blank $TIMESTEP as 1.0: read Time unscaled,
                # then put the original value back into the metadata.
                text["timestep"] = ""
                sample = fk.Sample(flow_data, sample_id=sample_id)
                text["timestep"] = original_timestep
                notes.append(
                    f"bad $TIMESTEP {original_timestep!r}: Time channel left unscaled"
                )
    except Exception as e:
        raise _fail(path, "FlowKit could not build a Sample", e) from e
    for w in caught:
        notes.append(f"FlowKit warning: {_one_line(w.message)}")
    return sample


def _check_events(path: Path, sample: fk.Sample, info: Mapping[str, Any]) -> None:
    events = sample.get_events(source="raw")
    if events.shape != (info["n_events"], info["n_par"]):
        msg = (
            f"FCS file {str(path)!r} declares $TOT={info['n_events']} events x "
            f"$PAR={info['n_par']} channels, but its DATA segment holds "
            f"{events.shape[0]} x {events.shape[1]}. The file is corrupted; re-export it."
        )
        raise FCSReadError(msg)
    bad = ~np.isfinite(events)
    if bad.any():
        per_channel = {
            name: int(n) for name, n in zip(sample.pnn_labels, bad.sum(axis=0)) if n
        }
        msg = (
            f"FCS file {str(path)!r} has {int(bad.sum())} non-finite (NaN/inf) event values, "
            f"by channel {per_channel!r}. Re-export the file or remove those events upstream."
        )
        raise FCSReadError(msg)
    if events.shape[0] == 0:  # pragma: no cover - caught by the $TOT pre-check
        msg = f"FCS file {str(path)!r} has zero events."
        raise FCSReadError(msg)


def _fix_spillover(sample: fk.Sample, notes: list[str]) -> None:
    """Make the spillover usable as FlowKit expects, or note why it is not.

    FlowKit reads ``metadata['spillover']`` then ``metadata['spill']`` and
    matches the matrix header to $PnN names. Some writers put channel numbers
    there instead; those are translated to $PnN names.
    """
    meta = sample.metadata
    key = next((k for k in ("spillover", "spill") if str(meta.get(k, "")).strip()), None)
    if key is None:
        return
    parts = [p.strip() for p in str(meta[key]).split(",")]
    try:
        n = int(parts[0])
        names = parts[1 : n + 1]
        values = [float(v) for v in parts[n + 1 :]]
    except (ValueError, IndexError):
        notes.append(f"spillover in ${key.upper()} is malformed: {str(meta[key])[:60]!r}")
        return
    if len(names) != n or len(values) != n * n:
        notes.append(
            f"spillover in ${key.upper()} is malformed: {n} channels but "
            f"{len(values)} coefficients (expected {n * n})"
        )
        return
    pnn = list(sample.pnn_labels)
    if all(name.isdigit() and 1 <= int(name) <= len(pnn) for name in names) and not set(
        names
    ) <= set(pnn):
        names = [pnn[int(name) - 1] for name in names]
        meta[key] = ",".join([str(n), *names, *parts[n + 1 :]])
        notes.append(f"spillover in ${key.upper()} named channels by number: translated to $PnN")
    unknown = [name for name in names if name not in pnn]
    if unknown:
        notes.append(f"spillover in ${key.upper()} names channels not in $PnN: {unknown!r}")


def read_fcs(path: PathLike, *, sample_id: str | None = None) -> fk.Sample:
    """Read one FCS file into a :class:`flowkit.Sample`, checked.

    Before any event is read, the HEADER and TEXT are parsed and the declared
    ``$TOT`` x bytes per event is compared with the bytes the file holds, so
    a file declaring 10**12 events is refused without allocating. The file
    is then read with FlowIO, retrying with its options for the quirks real
    instruments write:

    - HEADER and TEXT DATA offsets disagree: the pair whose size fits
      ``$TOT`` is used (``ignore_offset_discrepancy`` or
      ``use_header_offsets``);
    - ``$ENDDATA`` one byte too far (``ignore_offset_error``);
    - several data sets (Beckman LMD): the first is read;
    - blank HEADER DATA offsets: ``$BEGINDATA``/``$ENDDATA`` are used; files
      over 99,999,999 bytes with 0 in the HEADER are handled by FlowIO;
    - a non-numeric ``$TIMESTEP``: the Time channel is left unscaled.

    Every quirk accepted is recorded in ``sample.cytopipe_notes``.

    Parameters
    ----------
    path
        The FCS file.
    sample_id
        The Sample's id; defaults to the file name (``$FIL`` is often
        reused across files).

    Returns
    -------
    flowkit.Sample
        Raw events as FlowKit reads them (float64, gain/log/time scaling
        applied). The spillover, if any, is in ``sample.metadata['spillover']``
        or ``['spill']`` with $PnN names. ``sample.cytopipe_notes`` is a tuple
        of one-line strings naming each quirk tolerated (empty for a clean file).

    Raises
    ------
    FCSReadError
        If the file is missing, not FCS, truncated, declares more data than
        it holds, has zero events, duplicate or missing $PnN, non-finite
        event values, or cannot be read by FlowIO/FlowKit for another reason.
        The message names the file and the cause, on one line.

    Examples
    --------
    >>> sample = read_fcs("sample_fcs/P001_V1.fcs")  # doctest: +SKIP
    >>> sample.event_count, sample.pnn_labels[:2]  # doctest: +SKIP
    (50000, ['FSC-A', 'SSC-A'])
    """
    p = Path(path)
    header, text = _scan(p)
    info = _precheck(p, header, text)
    notes: list[str] = []
    flow_data = _read_flowdata(p, header, info, notes)
    sample = _build_sample(p, flow_data, p.name if sample_id is None else sample_id, notes)
    _check_events(p, sample, info)
    _fix_spillover(sample, notes)
    sample.cytopipe_notes = tuple(notes)
    return sample


# --------------------------------------------------------------------------
# batch scans and channels
# --------------------------------------------------------------------------
def scan_headers(
    paths: Iterable[PathLike],
    *,
    keywords: Iterable[str] = ("$TOT", "$PAR", "$CYT", "$FIL", "$DATE"),
) -> pd.DataFrame:
    """Scan the TEXT of many FCS files into one table; never raises for a bad file.

    Parameters
    ----------
    paths
        FCS files.
    keywords
        TEXT keywords to add as columns (looked up case-insensitively);
        ``None`` where a file lacks one.

    Returns
    -------
    pandas.DataFrame
        One row per path, in order, with columns ``path``, ``fcs_version``
        (e.g. ``'3.1'``), ``n_events`` and ``n_channels`` (nullable Int64),
        ``pnn`` ($PnN names joined by ``','``), ``spillover`` (bool: a
        $SPILLOVER/SPILL keyword is present), ``error`` (one line, ``''`` when
        the header is fine), then one column per keyword. A file whose header
        reads but fails the pre-read checks of :func:`read_fcs` (zero events,
        declared size, duplicate $PnN) gets the values it has and the error.

    Examples
    --------
    >>> scan_headers(["a.fcs", "missing.fcs"])[["path", "error"]]  # doctest: +SKIP
    """
    keys = [str(k) for k in keywords]
    rows = []
    for path in paths:
        p = Path(path)
        row: dict[str, Any] = {
            "path": str(p),
            "fcs_version": None,
            "n_events": None,
            "n_channels": None,
            "pnn": None,
            "spillover": False,
            "error": "",
        }
        row.update({k: None for k in keys})
        try:
            header, text = _scan(p)
            row["fcs_version"] = header["version"]
            row["spillover"] = _spill_key(text) is not None
            for k in keys:
                row[k] = text.get(k.upper())
            try:
                row["n_events"] = int(_get(text, "$TOT") or "")
                row["n_channels"] = int(_get(text, "$PAR") or "")
                row["pnn"] = ",".join(_pnn_list(text, row["n_channels"]))
            except ValueError:
                pass
            _precheck(p, header, text)
        except FCSReadError as e:
            row["error"] = _one_line(e)
        except Exception as e:  # a scan must record, not raise
            row["error"] = _one_line(f"Cannot scan FCS file {str(p)!r}: {type(e).__name__}: {e}")
        rows.append(row)
    df = pd.DataFrame(rows, columns=[*_SCAN_COLUMNS, *[k for k in keys if k not in _SCAN_COLUMNS]])
    df["n_events"] = df["n_events"].astype("Int64")
    df["n_channels"] = df["n_channels"].astype("Int64")
    df["spillover"] = df["spillover"].astype(bool)
    return df


@dataclass(frozen=True)
class ChannelInfo:
    """One channel: 1-based number, detector name ($PnN), marker label ($PnS).

    Attributes
    ----------
    index
        Channel number as in the file, starting at 1.
    pnn
        ``$PnN``, the detector name.
    pns
        ``$PnS``, the stain/marker label; ``''`` when absent.
    """

    index: int
    pnn: str
    pns: str


def channels(sample_or_header: fk.Sample | Mapping[str, str]) -> list[ChannelInfo]:
    """Return the ($PnN, $PnS) pairs of a Sample or of a :func:`scan_header` dict.

    Parameters
    ----------
    sample_or_header
        A :class:`flowkit.Sample` (e.g. from :func:`read_fcs`) or the TEXT
        keywords from :func:`scan_header`.

    Returns
    -------
    list of ChannelInfo
        In file order.

    Raises
    ------
    FCSReadError
        If a header dict has no valid ``$PAR``.
    TypeError
        If given anything else.

    Examples
    --------
    >>> [c.pnn for c in channels(scan_header("sample.fcs"))][:2]  # doctest: +SKIP
    ['FSC-A', 'SSC-A']
    """
    if isinstance(sample_or_header, fk.Sample):
        pns = sample_or_header.pns_labels
        return [
            ChannelInfo(index=i, pnn=str(name), pns=str(pns[i - 1] or ""))
            for i, name in enumerate(sample_or_header.pnn_labels, 1)
        ]
    if isinstance(sample_or_header, Mapping):
        text = {str(k).upper(): str(v) for k, v in sample_or_header.items()}
        try:
            n_par = int(text["$PAR"].strip())
        except (KeyError, ValueError) as e:
            msg = (
                f"Header has $PAR={text.get('$PAR')!r}, expected a whole number; pass the dict "
                f"returned by scan_header()."
            )
            raise FCSReadError(msg) from e
        return [
            ChannelInfo(index=i, pnn=text.get(f"$P{i}N", ""), pns=text.get(f"$P{i}S", ""))
            for i in range(1, n_par + 1)
        ]
    msg = (
        f"channels() takes a flowkit.Sample or a scan_header() dict, got "
        f"{type(sample_or_header).__name__!r}."
    )
    raise TypeError(msg)
