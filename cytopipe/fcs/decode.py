"""Decoding an FCS file's DATA segment where FlowIO cannot: 24-bit and other integer widths, odd byte orders, ASCII.

FlowIO decodes the DATA segment of most files; :func:`flowio_cannot_read`
says when it cannot (integers of 24, 40, 48, 56 or 64 bits, ASCII, a
``$BYTEORD`` it does not know such as the 3-byte ``1,2,3``), and
:func:`decode_data` then decodes the segment exactly, with numpy: integers of
any whole-byte width, per channel, in any byte order, masked by ``$PnR`` as
the FCS standard says; float32, float64; fixed-width and delimited ASCII.
The layout it decodes has been checked first by
:func:`cytopipe.fcs.layout.check_layout`.

Public inside the ``fcs`` stage (:mod:`cytopipe.fcs.read` uses it), not part
of :mod:`cytopipe.fcs`'s API, hence the empty ``__all__``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from cytopipe.exceptions import FCSReadError
from cytopipe.fcs.layout import found_keywords, keyword

__all__: list[str] = []

# what FlowIO 1.4 decodes (flowdata.py, __parse_int_data and __parse_data)
_FLOWIO_INT_BITS = (8, 16, 32)
_FLOWIO_BYTEORDS = ("1,2,3,4", "1,2", "4,3,2,1", "2,1")
# FCS 3.1: delimited ASCII ($PnB=*) separates values by space, tab, comma, CR or LF
_ASCII_SEPARATORS = bytes.maketrans(b",\t\r\n", b"    ")


def flowio_cannot_read(text: Mapping[str, str], n_par: int) -> str | None:
    """Why FlowIO 1.4 cannot decode this DATA segment, or None when it can (and then still does).

    Mirrors FlowIO's own code paths (``flowdata.py``): it warns and returns
    nothing for integer widths other than 8, 16 and 32 and for a ``$BYTEORD``
    other than 1,2,3,4 / 1,2 / 4,3,2,1 / 2,1; ``struct`` has no ASCII format;
    ``int()`` fails on a ``$PnR`` like ``1024.0``; and with one width for all
    channels its mask array overflows when one channel needs a mask and
    another's range is beyond the storage width. Files it reads are left to
    it, so their events stay exactly what they were.
    """
    datatype = (keyword(text, "$DATATYPE") or "").upper()
    if datatype == "A":
        return "ASCII data ($DATATYPE=A)"
    if text.get("$BYTEORD") not in _FLOWIO_BYTEORDS:
        return f"$BYTEORD={text.get('$BYTEORD')!r}"
    if datatype != "I":
        return None
    bits = [int(keyword(text, f"$P{i}B") or "") for i in range(1, n_par + 1)]  # checked by check_layout
    if any(b not in _FLOWIO_INT_BITS for b in bits):
        return f"integer widths $PnB {sorted(set(bits))!r}"
    try:
        ranges = [int(text.get(f"$P{i}R", "")) for i in range(1, n_par + 1)]
    except ValueError:
        return "a $PnR that is not a whole number"
    if len(set(bits)) == 1:
        storage = 2 ** bits[0]
        # FlowIO's _next_power_of_2: 1 for 0, else 2 ** (x - 1).bit_length()
        rounded = [2 ** (r - 1).bit_length() if r else 1 for r in ranges]
        if any(storage > r for r in rounded) and any(r > storage for r in rounded):
            return "a $PnR mask wider than $PnB next to one that cuts bits"
    return None


def _byte_order(path: Path, text: Mapping[str, str]) -> list[int]:
    """``$BYTEORD`` as byte numbers in storage order (1 = least significant)."""
    raw = text.get("$BYTEORD", "")
    try:
        order = [int(b) for b in raw.replace(" ", "").split(",")]
    except ValueError:
        order = []
    if not order or sorted(order) != list(range(1, len(order) + 1)):
        msg = (
            f"FCS file {str(path)!r} has $BYTEORD={raw!r}, expected the byte numbers 1 to n in the order "
            f"they are stored, e.g. '1,2,3,4' (little endian) or '4,3,2,1' (big endian). "
            f"The file is non-compliant; re-export it."
        )
        raise FCSReadError(msg)
    return order


def _significance(path: Path, text: Mapping[str, str], order: list[int], i: int, nbytes: int) -> list[int]:
    """For each stored byte of channel ``i``'s values, its significance (0 = least)."""
    if nbytes == 1:
        return [0]
    if len(order) == nbytes:  # FCS 2.0/3.0: the order of exactly these bytes, e.g. '3,2,1' for 24 bits
        return [b - 1 for b in order]
    # FCS 3.1: '1,2,3,4' and '4,3,2,1' say little or big endian whatever $PnB is
    if len(order) > 1 and order == sorted(order):
        return list(range(nbytes))
    if len(order) > 1 and order == sorted(order, reverse=True):
        return list(range(nbytes - 1, -1, -1))
    msg = (
        f"FCS file {str(path)!r} has $BYTEORD={text.get('$BYTEORD')!r}, which orders {len(order)} bytes, "
        f"but $P{i}B={text.get(f'$P{i}B')!r} stores {nbytes}: the byte order of its values is unknown. "
        f"Re-export the file with $BYTEORD '1,2,3,4' or '4,3,2,1'."
    )
    raise FCSReadError(msg)


def _range_mask(path: Path, text: Mapping[str, str], i: int, bits: int) -> int | None:
    """The ``$PnR`` bit mask of an integer channel stored in ``bits`` bits, or None when it cuts nothing.

    FCS 3.1: bits above the range are ignored, the value ANDed with
    ``2**ceil(log2(PnR)) - 1`` (FlowIO: the next power of 2 minus one;
    FlowCal: ``ceil(log2(PnR))`` bits kept). ``(r - 1).bit_length()`` is that
    ceiling in exact integer arithmetic, also for ranges beyond 2**53.
    """
    key = f"$P{i}R"
    raw = str(text.get(key, "")).strip()
    try:
        r = int(raw)
    except ValueError:
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        r = math.ceil(value) if math.isfinite(value) else 0  # e.g. '1024.0'
    if r < 1:
        msg = (
            f"FCS file {str(path)!r} has {key}={text.get(key)!r}, expected the channel's range, a whole "
            f"number of at least 1 (its values run from 0 to $PnR - 1). The file is non-compliant; re-export it."
        )
        raise FCSReadError(msg)
    used = (r - 1).bit_length()
    return None if used >= bits else (1 << used) - 1


def _ascii_column(path: Path, text: Mapping[str, str], i: int, cells: np.ndarray) -> np.ndarray:
    """Fixed-width ASCII numbers of channel ``i`` (an events x characters byte block) as float64."""
    strings = np.ascontiguousarray(cells).view(f"S{cells.shape[1]}")[:, 0]
    try:
        return strings.astype(np.float64)
    except ValueError:
        pass
    row, s = next(((r, v) for r, v in enumerate(strings) if not _is_number(v)), (0, strings[0]))  # to name it
    msg = (
        f"FCS file {str(path)!r} has {s.decode('latin-1')!r} as event {row + 1} of channel {text.get(f'$P{i}N')!r} "
        f"(ASCII, $P{i}B={text.get(f'$P{i}B')!r} characters), expected a number. "
        f"The file is corrupted or its $PnB is wrong; re-export it."
    )
    raise FCSReadError(msg)


def _read_delimited_ascii(
    path: Path, text: Mapping[str, str], n_events: int, n_par: int, start: int, stop: int
) -> np.ndarray:
    """DATA of ``$DATATYPE=A`` with ``$PnB=*``: $TOT x $PAR numbers between separators."""
    widths = [keyword(text, f"$P{i}B") for i in range(1, n_par + 1)]
    fixed = [i for i, w in enumerate(widths, 1) if w != "*"]
    if fixed:
        msg = (
            f"FCS file {str(path)!r} stores delimited ASCII ($PnB='*') but also {found_keywords(text, 'B', fixed)}: "
            f"FCS writes either every value delimited or every value fixed-width. Re-export the file."
        )
        raise FCSReadError(msg)
    with open(path, "rb") as fh:
        fh.seek(start)
        raw = fh.read(max(0, stop - start + 1))
    tokens = raw.translate(_ASCII_SEPARATORS).split()
    if len(tokens) != n_events * n_par:
        msg = (
            f"FCS file {str(path)!r} holds {len(tokens)} delimited ASCII values in DATA (bytes {start} to "
            f"{stop}), but $TOT={text.get('$TOT')!r} x $PAR={text.get('$PAR')!r} needs {n_events * n_par}. "
            f"The file is truncated or $TOT is wrong; re-copy or re-export it."
        )
        raise FCSReadError(msg)
    try:
        values = np.array(tokens).astype(np.float64)
    except ValueError:
        bad = next((t for t in tokens if not _is_number(t)), tokens[0]).decode("latin-1")
        msg = (
            f"FCS file {str(path)!r} has {bad!r} among its delimited ASCII values, expected numbers. "
            f"The file is corrupted; re-export it."
        )
        raise FCSReadError(msg) from None
    return values.reshape(n_events, n_par)


def _is_number(token: bytes) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def decode_data(
    path: Path, text: Mapping[str, str], n_events: int, n_par: int, start: int, stop: int
) -> tuple[np.ndarray, list[str]]:
    """Decode the DATA segment (bytes ``start`` to ``stop``) exactly, for the layouts FlowIO cannot read.

    Parameters
    ----------
    path
        The FCS file.
    text
        Its TEXT keywords (upper case, as :func:`cytopipe.fcs.header.scan_text` gives them).
    n_events, n_par
        ``$TOT`` and ``$PAR``, checked by :func:`cytopipe.fcs.layout.check_layout`.
    start, stop
        The DATA offsets FlowIO would use for this file, last byte included.

    Returns
    -------
    events : numpy.ndarray
        ``(n_events, n_par)`` float64, the values as stored: integers with
        their ``$PnR`` mask applied, floats, ASCII numbers. FlowKit applies
        ``$PnE``, ``$PnG`` and ``$TIMESTEP`` to them as for any file.
    notes : list of str
        Quirks tolerated (``$ENDDATA`` one byte too far), one line each.

    Raises
    ------
    FCSReadError
        A mode other than list mode, a DATA size that disagrees with ``$TOT``
        x the bytes per event of ``$PnB``, a ``$BYTEORD`` that does not fit
        the widths, a ``$PnR`` that is no range, or an ASCII value that is no
        number; the message names the file, the keyword and its value.
    """
    datatype = (keyword(text, "$DATATYPE") or "").upper()
    mode = (keyword(text, "$MODE") or "L").upper()  # FCS 3.2 drops $MODE: list mode
    if mode != "L":
        msg = (
            f"FCS file {str(path)!r} has $MODE={text.get('$MODE')!r}, a histogram; only list mode "
            f"($MODE=L) holds events to gate. Re-export the file in list mode."
        )
        raise FCSReadError(msg)
    widths = [keyword(text, f"$P{i}B") or "" for i in range(1, n_par + 1)]
    if datatype == "A" and "*" in widths:
        return _read_delimited_ascii(path, text, n_events, n_par, start, stop), []
    if datatype in ("F", "D"):
        nbytes = [4 if datatype == "F" else 8] * n_par  # as FlowIO and check_layout: $PnB is implied
    elif datatype == "I":
        nbytes = [int(w) // 8 for w in widths]  # whole bytes: check_layout refused anything else
    else:
        nbytes = [int(w) for w in widths]  # ASCII: $PnB counts characters
    row = sum(nbytes)
    declared = n_events * row
    size = stop - start + 1
    notes: list[str] = []
    if size == declared + 1:  # as FlowIO's ignore_offset_error, which read_fcs accepts too
        notes.append("$ENDDATA off by one byte: read $TOT x bytes per event")
    elif size != declared:
        msg = (
            f"FCS file {str(path)!r} has a DATA segment of {size} bytes ($BEGINDATA={start}, "
            f"$ENDDATA={stop}), but $TOT={text.get('$TOT')!r} events x {row} bytes per event "
            f"($DATATYPE={text.get('$DATATYPE')!r}, $PnB {widths!r}) is {declared} bytes. "
            f"The file is corrupted or $TOT/$PnB is wrong; re-export it."
        )
        raise FCSReadError(msg)
    with open(path, "rb") as fh:
        fh.seek(start)
        raw = fh.read(declared)
    if len(raw) != declared:  # pragma: no cover - check_layout compares $TOT with the file size
        msg = f"FCS file {str(path)!r} ends inside its DATA segment; re-copy it."
        raise FCSReadError(msg)
    data = np.frombuffer(raw, dtype=np.uint8).reshape(n_events, row)
    events = np.empty((n_events, n_par))
    order = _byte_order(path, text) if datatype != "A" and max(nbytes) > 1 else []
    col = 0
    for i, w in enumerate(nbytes, 1):
        cells = data[:, col : col + w]
        col += w
        if datatype == "A":
            events[:, i - 1] = _ascii_column(path, text, i, cells)
            continue  # decimal digits: the $PnR bit mask is for binary integers
        # each stored byte goes to its place in a little-endian word numpy can view:
        # one vectorised copy per byte, any width and any byte order
        width = next(k for k in (1, 2, 4, 8) if k >= w)
        word = np.zeros((n_events, width), dtype=np.uint8)
        for j, place in enumerate(_significance(path, text, order, i, w)):
            word[:, place] = cells[:, j]
        values = word.view(f"<{'u' if datatype == 'I' else 'f'}{width}")[:, 0]
        if datatype == "I":
            mask = _range_mask(path, text, i, 8 * w)
            if mask is not None:
                values = values & values.dtype.type(mask)
        events[:, i - 1] = values
    return events, notes
