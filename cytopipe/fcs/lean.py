"""Events for gating as the file stores them: float32, without FlowKit's float64 copy.

:func:`cytopipe.fcs.read.read_fcs` gives a :class:`flowkit.Sample`, whose reader
copies every event value into float64 (FlowIO reads the DATA segment into
an ``array.array``, then ``as_array`` widens it). For the files a lab's
cytometers write (list mode, ``$DATATYPE F``, 32-bit, no log amplification
``$PnE`` and no gain ``$PnG`` to apply) those float64 values are exactly the
float32 values widened, so gating the float32 matrix gives the same counts
while reading and moving half the bytes: a 1M-event, 12-channel file takes
48 MB instead of 96 MB (plus FlowIO's own 48 MB buffer), and one
``numpy.fromfile`` instead of two copies.

:func:`read_fcs_lean` reads such a file into a :class:`LeanSample`, which
offers the parts of :class:`flowkit.Sample` that :mod:`cytopipe.gating.api`,
:mod:`cytopipe.gating.placement` and :mod:`cytopipe.gating.qc` use. Every other file (other
data types or widths, gain or log scaling, any HEADER/TEXT quirk that
:func:`~cytopipe.fcs.read.read_fcs` tolerates, non-finite values, a short DATA
segment) gives None, and the caller reads it with ``read_fcs``, which also
names whatever is wrong. The one column that can differ from FlowKit's is
Time when ``$TIMESTEP`` scaling is not exact in float32; it is listed in
:attr:`LeanSample.inexact_channels`, its exact float64 values are kept for
the Time QC, and a gate on it is evaluated on FlowKit's reader.

The file is read in one pass, a megabyte at a time: each chunk is hashed
(``hash_file=True`` gives the file's SHA-256 from the same read, as
:func:`cytopipe.batch.task.process_sample` needs it), checked for non-finite
values, put in native byte order and its Time scaled while it is still in
the CPU cache, so each byte crosses memory once. The buffer it lands in is
kept per thread and reused by the next file once nothing holds a view of the
previous sample's events, which spares the kernel zeroing 48 MB of fresh
pages per 1M-event file; a sample that is still referenced is never
overwritten.
"""

from __future__ import annotations

import hashlib
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .header import PathLike
from .header import scan_text as _scan
from .layout import check_layout as _precheck
from .read import _fix_spillover, _read_flowdata, default_sample_id, read_fcs

__all__ = ["LeanSample", "gates_exactly", "read_fcs_lean", "read_for_gating"]

_BYTE_ORDERS = {"1,2,3,4": "<f4", "4,3,2,1": ">f4"}
_CHUNK_BYTES = 1 << 20  # read, hashed and checked at a time, while in the CPU cache
_KEEP_BYTES = 256 << 20  # a thread keeps its read buffer for the next file up to this size
_ALIGN = 64  # DATA starts on a cache line in the buffer
_buffers = threading.local()


class LeanSample:
    """A read FCS file's float32 events and channel metadata, shaped like :class:`flowkit.Sample`.

    Attributes follow FlowKit's names: ``id``, ``original_filename``,
    ``version``, ``event_count``, ``pnn_labels``, ``pns_labels``,
    ``fluoro_indices``, ``scatter_indices``, ``time_index``,
    ``null_channels``, ``metadata`` (TEXT keywords, lower case without ``$``)
    and ``cytopipe_notes``. ``inexact_channels`` names the channels whose
    float32 values are rounded from FlowKit's (Time only, when ``$TIMESTEP``
    scaling is not exact in float32). ``file_sha256`` is the whole file's
    SHA-256 when it was read with ``hash_file=True``, else None.
    """

    def __init__(self, path: Path, sample_id: str, flow_data: Any, *, events: np.ndarray,
                 time_values: np.ndarray | None, inexact: tuple[str, ...]) -> None:
        self.path = path
        self.id = sample_id
        self.current_filename = flow_data.name
        self.original_filename = flow_data.text.get("fil", flow_data.name)
        self.version = flow_data.version
        self.event_count = int(events.shape[0])
        self.pnn_labels = list(flow_data.pnn_labels)
        self.pns_labels = list(flow_data.pns_labels)
        self.fluoro_indices = list(flow_data.fluoro_indices)
        self.scatter_indices = list(flow_data.scatter_indices)
        self.time_index = flow_data.time_index
        self.null_channels = list(flow_data.null_channels)
        self.metadata = flow_data.text
        self.inexact_channels = inexact
        self.cytopipe_notes: tuple[str, ...] = ()
        self.file_sha256: str | None = None  # set by read_fcs_lean(hash_file=True)
        self._events = events
        self._time = time_values

    def get_events(self, source: str = "raw") -> np.ndarray:
        """The ``(event_count, channels)`` float32 matrix (``source="raw"`` only: nothing is compensated here)."""
        if source != "raw":
            msg = f"LeanSample holds raw events only, not {source!r}; call to_flowkit() for FlowKit's sources."
            raise ValueError(msg)
        return self._events

    def get_metadata(self) -> dict[str, str]:
        """The TEXT keywords, as :meth:`flowkit.Sample.get_metadata` gives them."""
        return self.metadata

    def time_values(self) -> np.ndarray | None:
        """The Time channel exactly as FlowKit scales it (float64), or None without one."""
        if self.time_index is None:
            return None
        return self._time if self._time is not None else self._events[:, self.time_index].astype(np.float64)

    def to_flowkit(self):
        """The same file read by :func:`cytopipe.fcs.read.read_fcs` (for FlowKit's own engine)."""
        return read_fcs(self.path, sample_id=self.id)


def _eligible(text: dict[str, str], n_par: int) -> str | None:
    """The numpy dtype of DATA when it can be read as float32 exactly as FlowKit would, else None."""
    if text.get("$DATATYPE", "").strip().upper() != "F" or text.get("$MODE", "L").strip().upper() != "L":
        return None
    if any(text.get(f"$P{i}B", "").strip() != "32" for i in range(1, n_par + 1)):
        return None
    return _BYTE_ORDERS.get(text.get("$BYTEORD", "").replace(" ", ""))


def _buffer(nbytes: int) -> np.ndarray:
    """A writable byte array of at least ``nbytes``: this thread's last one when no view of it is alive."""
    buf = getattr(_buffers, "buf", None)
    # 3 references: the thread's slot, ``buf`` and getrefcount's argument; any more is a
    # sample (or a view of its events) still in use, which must never be overwritten
    if buf is not None and buf.size >= nbytes and sys.getrefcount(buf) <= 3:
        return buf
    _buffers.buf = buf = None  # free the old one first: never two at a time
    buf = np.empty(nbytes, dtype=np.uint8)
    if nbytes <= _KEEP_BYTES:
        _buffers.buf = buf
    return buf


def _read_into(fh, view: memoryview, digest) -> bool:
    """Fill ``view`` from ``fh`` (and feed it to ``digest``); False when the file ends first."""
    pos = 0
    while pos < len(view):
        got = fh.readinto(view[pos:])
        if not got:
            return False
        pos += got
    if digest is not None:
        digest.update(view)
    return True


def read_fcs_lean(path: PathLike, *, sample_id: str | None = None, hash_file: bool = False) -> LeanSample | None:
    """Read an FCS file's events as float32 when that is exactly what FlowKit would gate, else None.

    Parameters
    ----------
    path
        The FCS file.
    sample_id
        The sample's id; defaults to the file name, as in :func:`~cytopipe.fcs.read.read_fcs`.
    hash_file
        Also compute the file's SHA-256 in the same pass (``LeanSample.file_sha256``),
        equal to :func:`~cytopipe.fcs.header.file_sha256`.

    Returns
    -------
    LeanSample or None
        None when the file needs FlowKit's reader: read it with
        :func:`~cytopipe.fcs.read.read_fcs`, which also reports what is wrong
        with a broken file.

    Raises
    ------
    FCSReadError
        From the HEADER/TEXT checks shared with ``read_fcs`` (a file that
        is not FCS, a lying ``$TOT`` or ``$PAR``, ...).
    """
    p = Path(path)
    header, text = _scan(p)
    info = _precheck(p, header, text)
    n, n_par = info["n_events"], info["n_par"]
    dtype = _eligible(text, n_par)
    if dtype is None or header["version"] not in ("3.0", "3.1") or text.get("$NEXTDATA", "0").strip() not in ("", "0"):
        return None  # several data sets, or a $NEXTDATA read_fcs must judge
    start, stop = info["data_start"], info["data_stop"]
    if (header["data_start"], header["data_stop"]) not in ((start, stop), (0, 0)) or stop - start + 1 != n * n_par * 4:
        return None  # offsets that disagree or an off-by-one: read_fcs knows those quirks
    notes: list[str] = []
    flow_data = _read_flowdata(p, header, info, notes, only_text=True)
    if notes or flow_data.channel_count != n_par or flow_data.event_count != n:
        return None
    for chan in flow_data.channels.values():
        decades, _ = chan["pne"]
        if decades > 0 or chan["png"] not in (1.0, 0.0):
            return None  # log amplification or gain: FlowKit scales in float64
    ti, step = flow_data.time_index, 1.0
    if ti is not None and "timestep" in flow_data.text:
        try:
            step = float(flow_data.text["timestep"])
        except ValueError:
            return None  # blank or non-numeric $TIMESTEP: read_fcs notes it
    scale = ti is not None and step != 1.0
    row_bytes = n_par * 4
    buf = _buffer(n * row_bytes + _ALIGN)
    pad = -buf.ctypes.data % _ALIGN  # DATA on a cache-line boundary
    view = buf.data[pad : pad + n * row_bytes]  # memoryview(buf), as numpy's stubs type it
    events = buf[pad : pad + n * row_bytes].view(np.float32).reshape(n, n_par)
    digest = hashlib.sha256() if hash_file else None
    time64 = np.empty(n) if scale else None
    exact = True
    block_rows = max(1, _CHUNK_BYTES // row_bytes)
    with open(p, "rb", buffering=0) as fh:
        if digest is None:
            fh.seek(start)
        else:  # HEADER, TEXT and whatever precedes DATA: hashed, not kept
            for ahead in range(0, start, _CHUNK_BYTES):
                if not _read_into(fh, memoryview(bytearray(min(_CHUNK_BYTES, start - ahead))), digest):
                    return None
        for r0 in range(0, n, block_rows):  # read, hash, check, byte-swap and scale Time while in cache
            r1 = min(n, r0 + block_rows)
            if not _read_into(fh, view[r0 * row_bytes : r1 * row_bytes], digest):
                return None  # DATA shorter than declared: read_fcs names it
            block = events[r0:r1]
            if dtype[0] == ">":  # to native order in place: no second copy
                block.byteswap(inplace=True)
            if not np.isfinite(block).all():
                return None  # read_fcs names the channels with NaN/inf
            if time64 is not None:  # scale
                t = block[:, ti].astype(np.float64) * step  # FlowKit's arithmetic
                time64[r0:r1] = t
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # an overflow to inf is caught just below
                    block[:, ti] = t
                if not np.isfinite(block[:, ti]).all():
                    return None
                exact = exact and np.array_equal(block[:, ti], t)
        if digest is not None:  # whatever follows DATA (ANALYSIS, other segments)
            for rest in iter(lambda: fh.read(_CHUNK_BYTES), b""):
                digest.update(rest)
    # kept only when the float32 column rounds it: otherwise time_values() widens the column itself
    inexact, time64 = ((), None) if exact else ((flow_data.pnn_labels[ti],), time64)
    sample_id = default_sample_id(p) if sample_id is None else sample_id
    sample = LeanSample(p, sample_id, flow_data, events=events, time_values=time64, inexact=inexact)
    _fix_spillover(sample, notes)
    sample.cytopipe_notes = tuple(notes)
    sample.file_sha256 = digest.hexdigest() if digest is not None else None
    return sample


def read_for_gating(path: PathLike, gating_strategy, *, sample_id: str | None = None):
    """Read a file for gating with ``gating_strategy``: float32 when that decides every gate exactly.

    Parameters
    ----------
    path
        The FCS file.
    gating_strategy : flowkit.GatingStrategy
        The gates to be applied, custom sample gates included.
    sample_id
        The sample's id (default: the file name).

    Returns
    -------
    LeanSample or flowkit.Sample
        A :class:`LeanSample` when :func:`read_fcs_lean` can read the file
        and no gate has a dimension on a channel it rounds (Time), else
        :func:`~cytopipe.fcs.read.read_fcs`'s Sample. Gating either gives the same
        counts.

    Raises
    ------
    FCSReadError
        As :func:`~cytopipe.fcs.read.read_fcs`.
    """
    sample = read_fcs_lean(path, sample_id=sample_id)
    if sample is not None and gates_exactly(sample, gating_strategy):
        return sample
    del sample  # a big file's float32 copy is freed before FlowKit's reader reads it again
    return read_fcs(path, sample_id=sample_id)


def gates_exactly(sample: LeanSample, gating_strategy) -> bool:
    """Whether gating ``sample`` with ``gating_strategy`` gives FlowKit's counts: no gate on a rounded channel.

    Parameters
    ----------
    sample
        A file read by :func:`read_fcs_lean`.
    gating_strategy : flowkit.GatingStrategy
        The gates to be applied, custom sample gates included.

    Returns
    -------
    bool
        False when a gate has a dimension on one of ``sample.inexact_channels``
        (Time, when ``$TIMESTEP`` scaling is not exact in float32): read the
        file with :func:`~cytopipe.fcs.read.read_fcs` for that strategy.
    """
    return not (sample.inexact_channels and _gates_use(gating_strategy, sample.inexact_channels, sample.id))


def _gates_use(gs, channels: tuple[str, ...], sample_id: str) -> bool:
    """Whether any gate of ``gs`` (custom sample gates included) has a dimension on ``channels``."""
    for name, parent in gs.get_gate_ids():
        gate = gs.get_gate(name, gate_path=parent, sample_id=sample_id)
        if any(getattr(dim, "id", None) in channels for dim in getattr(gate, "dimensions", [])):
            return True
    return False
