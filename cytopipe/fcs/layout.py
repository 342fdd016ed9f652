"""The declared layout of an FCS file, checked before any event is read.

``$TOT``, ``$PAR``, ``$DATATYPE``, ``$PnB`` and the DATA offsets must agree with
each other and with the file's size: :func:`check_layout` refuses a file whose
header cannot be right (a header that lies must not make a reader allocate),
naming the file, the keyword and how to fix it. Used by
:mod:`cytopipe.fcs.header` (batch scans), :mod:`cytopipe.fcs.read` and
:mod:`cytopipe.fcs.lean` (reads). Decoding the DATA segment itself is
:mod:`cytopipe.fcs.decode`.

The helpers here are public inside the ``fcs`` stage (the header scan and the
decoder use them) but not part of :mod:`cytopipe.fcs`'s API, hence the empty
``__all__``.
"""


from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cytopipe.exceptions import FCSReadError

__all__: list[str] = []

# FCS 3.1: integers take whole bytes; 64 bits is the widest numpy (and FlowCal, fireflow) holds
_INT_BITS = (8, 16, 24, 32, 40, 48, 56, 64)


def keyword(text: Mapping[str, str], key: str) -> str | None:
    """The TEXT keyword ``key`` stripped of surrounding blanks, or None when absent."""
    value = text.get(key)
    return None if value is None else str(value).strip()


def _int_keyword(path: Path, text: Mapping[str, str], key: str) -> int:
    value = keyword(text, key)
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as e:
        msg = (
            f"FCS file {str(path)!r} has {key}={text.get(key)!r}, expected a whole number. "
            f"The file is corrupted or non-compliant; re-export it."
        )
        raise FCSReadError(msg) from e


def pnn_list(text: Mapping[str, str], n_par: int) -> list[str]:
    """The ``$PnN`` channel names of channels 1 to ``n_par`` ('' where one is missing)."""
    # bounded by the keywords present: a $PAR of 10**12 must not build a huge list
    return [text.get(f"$P{i}N", "") for i in range(1, min(n_par, len(text)) + 1)]


def spill_key(text: Mapping[str, str]) -> str | None:
    """The keyword holding the spillover matrix (``$SPILLOVER``, ``SPILL``...), or None when there is none."""
    for key in ("$SPILLOVER", "SPILLOVER", "$SPILL", "SPILL"):
        if text.get(key, "").strip():
            return key
    return None


def _bytes_per_event(path: Path, text: Mapping[str, str], n_par: int) -> int | None:
    """Bytes one event takes in DATA, or None when it cannot be known (ASCII '*')."""
    datatype = (keyword(text, "$DATATYPE") or "").upper()
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
    widths = [keyword(text, f"$P{i}B") for i in range(1, n_par + 1)]
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
        bad = [i for i, b in enumerate(bits, 1) if b < 1]
        if bad:
            msg = (
                f"FCS file {str(path)!r} stores ASCII data with {found_keywords(text, 'B', bad)}; a fixed-width "
                f"ASCII value takes at least 1 character ($PnB), or '*' for delimited values. "
                f"The file is non-compliant; re-export it."
            )
            raise FCSReadError(msg)
        return sum(bits)
    bad = [i for i, b in enumerate(bits, 1) if b not in _INT_BITS]
    if bad:
        msg = (
            f"FCS file {str(path)!r} stores integers ($DATATYPE='I') with {found_keywords(text, 'B', bad)}; "
            f"FCS permits integer widths of whole bytes only: 8, 16, 24, 32, 40, 48, 56 or 64 bits. "
            f"The file is non-compliant; re-export it with byte-aligned $PnB or as float ($DATATYPE=F)."
        )
        raise FCSReadError(msg)
    return sum(bits) // 8


def found_keywords(text: Mapping[str, str], letter: str, channels: list[int]) -> str:
    """``$P2B='12', $P5B='12'`` for the first few bad channels, as a message shows them."""
    shown = ", ".join(f"$P{i}{letter}={text.get(f'$P{i}{letter}')!r}" for i in channels[:4])
    return shown + (f" and {len(channels) - 4} more" if len(channels) > 4 else "")


def _data_offsets(header: Mapping[str, Any], text: Mapping[str, str]) -> tuple[int, int]:
    """DATA start/stop as the reader will see them: TEXT for FCS 3.x when given."""
    start, stop = header["data_start"], header["data_stop"]
    if header["version"] != "2.0" or not start:
        try:
            t_start = int(keyword(text, "$BEGINDATA") or "")
            t_stop = int(keyword(text, "$ENDDATA") or "")
        except ValueError:
            pass
        else:
            if header["version"] != "2.0" or (t_start and t_stop):
                start, stop = t_start, t_stop
    return start or 0, stop or 0


def check_layout(path: Path, header: Mapping[str, Any], text: Mapping[str, str]) -> dict[str, Any]:
    """Refuse a file whose declared layout cannot be right, before reading DATA.

    Parameters
    ----------
    path
        The FCS file (for messages).
    header
        Its HEADER fields (``version``, ``data_start``, ``data_stop``, ``file_size``).
    text
        Its TEXT keywords, upper case.

    Returns
    -------
    dict
        ``n_events`` ($TOT), ``n_par`` ($PAR), ``pnn`` (channel names),
        ``declared_bytes`` ($TOT x bytes per event; None for delimited ASCII),
        ``data_start`` and ``data_stop`` (as the reader will use them).

    Raises
    ------
    FCSReadError
        A keyword that is missing or no number, a ``$PAR`` beyond the channels
        named, zero events, missing or duplicate ``$PnN``, a ``$DATATYPE`` or
        ``$PnB`` FCS does not permit, DATA outside the file, or more DATA
        declared than the file holds.
    """
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
    pnn = pnn_list(text, n_par)
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
