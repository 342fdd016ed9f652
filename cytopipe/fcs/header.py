"""The HEADER and TEXT segments of FCS files: fast scans of a whole batch, and the TEXT parse the readers share.

:func:`scan_header` and :func:`scan_headers` read the TEXT segment only,
with fcsparser, and are meant for checking a whole batch before gating.
:mod:`cytopipe.fcs.layout` refuses, before any event is read, a file whose
declared layout cannot be right (``$TOT`` x bytes per event against the file
size, ``$PAR`` against the channels named), so a header that lies cannot make
us allocate.
:mod:`cytopipe.fcs.read` reads the events.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import fcsparser.api
import pandas as pd

from cytopipe.exceptions import FCSReadError, one_line
from cytopipe.fcs.layout import check_layout, keyword, pnn_list, spill_key

if TYPE_CHECKING:  # FlowKit (~1.5 s to import) is loaded by the readers, not by a header scan
    import flowkit

__all__ = ["ChannelInfo", "channels", "file_sha256", "scan_header", "scan_headers"]

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
        msg = f"Cannot open FCS file {str(path)!r}: {one_line(e)}. Check the path and permissions."
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

    def _extract_text_dict(self, raw_text: str) -> dict[str, str]:
        text = {k.upper(): v for k, v in super()._extract_text_dict(raw_text).items()}
        # fcsparser builds a list per declared channel: a $PAR of 10**12 would never end.
        # Cap it at the channels actually named; check_layout refuses the lie with the real value.
        self.declared_par = text.get("$PAR")
        n_named = sum(1 for k in text if re.fullmatch(r"\$P\d+N", k))
        try:
            if int(str(text.get("$PAR", "")).strip()) > n_named:
                text["$PAR"] = str(n_named)
        except ValueError:
            pass
        self.injected_nextdata = "$NEXTDATA" not in text
        text.setdefault("$NEXTDATA", "0")
        # fcsparser makes every $PnB an int, but delimited ASCII writes '*'; scan_text puts it back
        self.star_widths = {k: v for k, v in text.items() if re.fullmatch(r"\$P\d+B", k) and v.strip() == "*"}
        text.update(dict.fromkeys(self.star_widths, "0"))
        return text


def scan_text(path: PathLike) -> tuple[dict[str, Any], dict[str, str]]:
    """Return (HEADER fields, TEXT keywords) of the first data set.

    The one TEXT parse the readers share (:mod:`cytopipe.fcs.read`,
    :mod:`cytopipe.fcs.lean`); public inside the ``fcs`` stage, not in its
    ``__all__``. Raises :class:`~cytopipe.exceptions.FCSReadError` when the
    HEADER or TEXT cannot be parsed.
    """
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
            f"Cannot parse the TEXT segment of FCS file {str(p)!r}: {kind}: {one_line(e)}. "
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
    text.update(getattr(parser, "star_widths", {}))
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
    return scan_text(path)[1]


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
            header, text = scan_text(p)
            row["fcs_version"] = header["version"]
            row["spillover"] = spill_key(text) is not None
            for k in keys:
                row[k] = text.get(k.upper())
            try:
                row["n_events"] = int(keyword(text, "$TOT") or "")
                row["n_channels"] = int(keyword(text, "$PAR") or "")
                row["pnn"] = ",".join(pnn_list(text, row["n_channels"]))
            except ValueError:
                pass
            check_layout(p, header, text)
        except FCSReadError as e:
            row["error"] = one_line(e)
        except Exception as e:  # a scan must record, not raise
            row["error"] = one_line(f"Cannot scan FCS file {str(p)!r}: {type(e).__name__}: {e}")
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


def channels(sample_or_header: flowkit.Sample | Mapping[str, str]) -> list[ChannelInfo]:
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
    fk = sys.modules.get("flowkit")  # a Sample exists only once FlowKit is loaded: a header needs no import
    if fk is not None and isinstance(sample_or_header, fk.Sample):
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
