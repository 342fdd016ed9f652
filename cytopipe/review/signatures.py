"""Check the signatures of a run's review log against the lab's reviewer registry.

Each signed line of ``review.jsonl`` carries its signer's Ed25519 public key
and a signature over the line's content and its link to the line before
(:meth:`cytopipe.outputs.Decision.signed_content`). A line holds only if its
key is an enrolled reviewer's (:class:`cytopipe.review.ReviewerRegistry`),
the signature verifies under that key, and the line's ``reviewer`` is that
key's owner. :func:`signature_report` names every line that fails, and why:

- unsigned (when a registry is given: every decision must be signed);
- signed by a key no enrolled reviewer holds;
- a signature copied from another line (it verifies there, not here);
- a signature that does not match the line (altered after signing, or forged);
- a line in one reviewer's name signed with another's key;
- a line signed at or after its signer was revoked (its own time; the hash chain keeps the lines in order).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import os

from ..exceptions import CytopipeError
from ..outputs.runfolder import Decision, RunFolder
from .reviewers import ReviewerRegistry, name_key

__all__ = ["SignatureReport", "signature_report"]


@dataclasses.dataclass(frozen=True)
class SignatureReport:
    """What :func:`signature_report` found.

    Attributes
    ----------
    problems
        One line per line of the log that does not hold, naming the file, the
        line and why; empty when every signature holds.
    signed, unsigned
        How many decisions carry a signature, and how many do not.
    """

    problems: tuple[str, ...]
    signed: int
    unsigned: int


def _valid(public_key: str, signature: str, content: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key, validate=True))
        key.verify(base64.b64decode(signature, validate=True), content)
    except (InvalidSignature, ValueError, binascii.Error):
        return False
    return True


def signature_report(run_dir: str | os.PathLike, registry: ReviewerRegistry | None) -> SignatureReport:
    """Check every signature of ``run_dir/review.jsonl`` against ``registry``.

    Parameters
    ----------
    run_dir
        The output folder of ``cytopipe run``.
    registry
        The lab's reviewer registry. None: unsigned lines are allowed (a lab
        that keeps no registry), and any signed line is reported as one that
        cannot be checked.

    Returns
    -------
    SignatureReport
        The problems, and the counts of signed and unsigned decisions. Lines
        that are not decisions are left to the chain check
        (:meth:`cytopipe.outputs.RunFolder.verify_chain`), which names them.

    Examples
    --------
    >>> signature_report("runs/week12", ReviewerRegistry("lab/reviewers.json")).problems  # doctest: +SKIP
    ()
    """
    folder = RunFolder(run_dir)
    path = folder.review_path
    decisions: list[tuple[int, Decision]] = []
    for n, line in folder.numbered_lines():
        try:
            decisions.append((n, Decision.from_dict(json.loads(line), f"{path}: line {n}")))
        except (ValueError, CytopipeError):
            continue
    problems: list[str] = []
    signed = [(n, d) for n, d in decisions if d.signature is not None or d.signer_key is not None]
    unsigned = len(decisions) - len(signed)
    if registry is None:
        if signed:
            problems.append(f"{path}: {len(signed)} signed decision(s) cannot be checked: no reviewer registry was "
                            f"given (--registry PATH or CYTOPIPE_REVIEWERS)")
        return SignatureReport(tuple(problems), len(signed), unsigned)
    try:
        registry.reviewers()
    except CytopipeError as e:
        return SignatureReport((f"{e} No signature could be checked.",), len(signed), unsigned)
    for n, d in decisions:
        what = f"{path}: line {n} ({d.action} {d.file} by {d.reviewer!r})"
        if d.signature is None and d.signer_key is None:
            problems.append(f"{what} is unsigned; with a reviewer registry every decision must be signed by an "
                            f"enrolled reviewer")
            continue
        if d.signature is None or d.signer_key is None:
            problems.append(f"{what} carries a key without a signature or a signature without a key")
            continue
        owner = registry.by_public_key(d.signer_key)
        if owner is None:
            problems.append(f"{what} is signed by a key no enrolled reviewer of {registry.path} holds "
                            f"({d.signer_key[:12]}...)")
            continue
        if not _valid(d.signer_key, d.signature, d.signed_content()):
            source = next((m for m, other in signed if m != n and other.signature == d.signature), None)
            if source is not None:
                problems.append(f"{what}: its signature is copied from line {source}; it does not sign this line")
            else:
                problems.append(f"{what}: its signature does not match the line: altered after signing, or forged")
            continue
        if owner.revoked and _after(d.time, owner.revoked["time"]):
            problems.append(f"{what} is signed at {d.time}, after {owner.name!r} was revoked at "
                            f"{owner.revoked['time']} ({owner.revoked['reason']})")
        if name_key(d.reviewer) != owner.key:
            problems.append(f"{what} is in the name of {d.reviewer!r} but signed with the key of {owner.name!r}")
        if not d.meaning:
            problems.append(f"{what} is signed without the meaning of its signature (21 CFR 11.50)")
    return SignatureReport(tuple(problems), len(signed), unsigned)


def _after(when: str, revoked: str) -> bool:
    """Whether the decision time ``when`` is at or after the revocation time (an unreadable time counts as after)."""
    import datetime as _dt

    try:
        return _dt.datetime.fromisoformat(when) >= _dt.datetime.fromisoformat(revoked)
    except (TypeError, ValueError):
        return True
