"""Read and check one FCS file: with :mod:`cytopipe.fcs.lean`, the one place cytopipe reads event data.

:func:`read_fcs` reads with FlowIO/FlowKit and retries with their options
when a file has one of the known quirks of real instruments (offset
discrepancies, an off-by-one ``$ENDDATA``, several data sets, a bad
``$TIMESTEP``, blank HEADER offsets). Before any event is read, the HEADER
and TEXT are checked (:mod:`cytopipe.fcs.header`), so a header that lies
cannot make us allocate. A DATA layout FlowIO cannot decode (24-bit and
other integer widths, ASCII, 3-byte ``$BYTEORD``) is decoded by
:func:`cytopipe.fcs.decode.decode_data` and handed to FlowKit inside FlowIO's
own parse of the TEXT, so the Sample is built as for any file. The header
scans are re-exported here.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import flowio
import numpy as np
from flowio.exceptions import (
    DataOffsetDiscrepancyError,
    FCSParsingError,
    MultipleDataSetsError,
)

from cytopipe.exceptions import FCSReadError, one_line
from cytopipe.fcs.decode import decode_data as _read_data
from cytopipe.fcs.decode import flowio_cannot_read as _flowio_cannot_read
from cytopipe.fcs.header import (
    _HEADER_OFFSET_MAX,
    ChannelInfo,
    PathLike,
    channels,
    file_sha256,
    scan_header,
    scan_headers,
)
from cytopipe.fcs.header import (
    scan_text as _scan,
)
from cytopipe.fcs.layout import check_layout as _precheck

if TYPE_CHECKING:
    import flowkit as fk

__all__ = [
    "ChannelInfo",
    "channels",
    "default_sample_id",
    "file_sha256",
    "read_fcs",
    "scan_header",
    "scan_headers",
    "spillover_channels",
    "spillover_names",
]


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
        f"Cannot read FCS file {str(path)!r}: {what}: {type(e).__name__}: {one_line(e)}. "
        f"The file is corrupted or non-compliant; re-export it from the instrument."
    )
    return FCSReadError(msg)


def _read_flowdata(
    path: Path, header: dict[str, Any], info: dict[str, Any], notes: list[str], *, only_text: bool = False
) -> flowio.FlowData:
    return _open_flowdata(path, header, info, notes, only_text=only_text)[0]


def _open_flowdata(
    path: Path, header: dict[str, Any], info: dict[str, Any], notes: list[str], *, only_text: bool = False
) -> tuple[flowio.FlowData, dict[str, Any]]:
    """FlowIO's parse of the file, and the options its quirks needed."""
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
                flow_data = flowio.FlowData(fh, only_text=only_text, **opts)
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
            text = one_line(w.message)
            if "reported incorrect data offset" in text and opts.get("ignore_offset_error"):
                continue  # the off-by-one we chose to accept, already noted
            msg = (
                f"FCS file {str(path)!r} read with a FlowIO warning that makes its events "
                f"untrustworthy: {text!r}. Re-export the file."
            )
            raise FCSReadError(msg)
        flow_data.name = path.name
        return flow_data, opts
    assert last_error is not None
    raise _fail(path, "too many read problems", last_error) from last_error


def _read_own(
    path: Path, header: dict[str, Any], text: Mapping[str, str], info: dict[str, Any], notes: list[str]
) -> flowio.FlowData:
    """FlowIO's parse of TEXT with the DATA decoded by our reader, for the layouts FlowIO cannot read.

    FlowKit builds its Sample from the FlowData as from any other (channels,
    metadata, ``$PnE``/``$PnG`` and ``$TIMESTEP`` scaling in ``as_array``),
    so only the decoding of the bytes differs.
    """
    flow_data, opts = _open_flowdata(path, header, info, notes, only_text=True)
    # the offsets FlowIO settled on: HEADER's when its quirks needed them, else TEXT's (HEADER's for FCS 2.0)
    if opts.get("use_header_offsets") and header["data_start"] and header["data_stop"]:
        start, stop = header["data_start"], header["data_stop"]
    else:
        start, stop = info["data_start"], info["data_stop"]
    events, more = _read_data(path, text, info["n_events"], info["n_par"], start, stop)
    notes.extend(more)
    flow_data.events = events.ravel()  # as_array reshapes it to (events, channels) in float64
    return flow_data


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
    import flowkit as fk  # here: ~1.5 s to import, and header scans and hashes (the driver's) need none of it

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
        notes.append(f"FlowKit warning: {one_line(w.message)}")
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
    if key is None and str(meta.get("comp", "")).strip():
        # $COMP (an older keyword some instruments still write) holds the same matrix: FlowKit reads only
        # $SPILLOVER/SPILL, so it is given under the standard name
        meta["spillover"] = meta["comp"]
        notes.append("spillover read from $COMP")
        key = "spillover"
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


def spillover_names(text: str, pnn: Sequence[str] = ()) -> list[str]:
    """The channels a spillover keyword's matrix names ([] when it is empty or malformed).

    Parameters
    ----------
    text
        The keyword's value (``n,name1,...,namen,coefficients...``).
    pnn
        The file's ``$PnN``: channel numbers (1-based, as some instruments
        write them) are translated to these names.

    Examples
    --------
    >>> spillover_names("2,3,4,1,0.1,0.02,1", ["FSC-A", "SSC-A", "BL1-H", "YL4-H"])
    ['BL1-H', 'YL4-H']
    """
    parts = [p.strip() for p in str(text or "").split(",")]
    try:
        n = int(parts[0])
    except ValueError:
        return []
    names = parts[1 : n + 1]
    if pnn and all(x.isdigit() and 1 <= int(x) <= len(pnn) for x in names) and not set(names) <= set(pnn):
        names = [pnn[int(x) - 1] for x in names]
    return names


def spillover_channels(sample) -> list[str]:
    """The ``$PnN`` the sample's spillover matrix compensates ([] without one).

    Parameters
    ----------
    sample : flowkit.Sample or LeanSample
        As read (channel numbers in the matrix already translated to ``$PnN``).
    """
    meta = sample.metadata
    return spillover_names(next((str(meta[k]) for k in ("spillover", "spill") if str(meta.get(k, "")).strip()), ""))


def default_sample_id(path: PathLike) -> str:
    """The id a sample read from ``path`` gets unless one is given: its file name.

    Custom sample gates (a reviewer's adjustments, fitted auto gates) are
    keyed by it, so a strategy made before reading must use the same id.
    """
    return Path(path).name


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

    The DATA layouts FlowIO decodes (float32, float64, integers of 8, 16 or
    32 bits in little or big endian order) are read by FlowIO, as always.
    The others FCS permits are decoded exactly by cytopipe: integers of any
    whole-byte width up to 64 bits (24-bit Cytek xP3/xP5 files), per channel
    widths, 3-byte orders like ``$BYTEORD=1,2,3`` or ``3,2,1``, and fixed
    width or delimited ASCII. Integers are masked by ``$PnR`` as the FCS
    standard says, keeping the low ``ceil(log2(PnR))`` bits (``$PnR=1024``
    in 16 bits keeps 10), as FlowIO does for the files it reads.

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
        event values, an integer ``$PnB`` that is not a whole number of bytes
        from 8 to 64, a DATA size other than ``$TOT`` x the bytes per event,
        or cannot be read by FlowIO/FlowKit for another reason.
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
    if _flowio_cannot_read(text, info["n_par"]) is None:
        flow_data = _read_flowdata(p, header, info, notes)
    else:
        flow_data = _read_own(p, header, text, info, notes)
    sample = _build_sample(p, flow_data, default_sample_id(p) if sample_id is None else sample_id, notes)
    _check_events(p, sample, info)
    _fix_spillover(sample, notes)
    sample.cytopipe_notes = tuple(notes)
    return sample
