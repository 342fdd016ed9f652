"""The lab's reviewer registry: who may sign a review decision, and their keys.

A reviewer is enrolled once (``cytopipe reviewer add NAME``) into a registry
the lab keeps, a JSON file named by ``--registry PATH`` or the environment
variable ``CYTOPIPE_REVIEWERS``. Each entry holds:

- the reviewer's name, normalised (:func:`normalise_name`): the printed name
  their signatures carry, unique in the registry whatever its case;
- a Scrypt hash of their password (memory-hard, RFC 7914; salt and cost
  stored with it);
- their Ed25519 public key, and its private half as PKCS8 PEM encrypted with
  a key derived from the password by the same Scrypt call, so the file gives
  an attacker nothing faster to guess passwords on than Scrypt.

:meth:`ReviewerRegistry.change_password` re-encrypts the same key under a new
password (past signatures still verify); :meth:`ReviewerRegistry.revoke`
marks a reviewer revoked from a time on: they can sign nothing more, and a
decision signed with their key after that time fails verification, while
their earlier signatures still verify.

:meth:`ReviewerRegistry.unlock` checks a name and password and returns a
:class:`Signer`, which signs decision lines (:meth:`Signer.sign_decision`);
:func:`cytopipe.review.signatures.check_signatures` checks them against the
registry's public keys.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import json
import os
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..exceptions import ReviewError
from ..outputs.runfolder import Decision
from ..outputs.tables import write_json

__all__ = ["REGISTRY_ENV", "Reviewer", "ReviewerRegistry", "Signer", "name_key", "normalise_name",
           "registry_path"]

#: The environment variable naming the registry when no ``--registry`` is given.
REGISTRY_ENV = "CYTOPIPE_REVIEWERS"
_FORMAT = "cytopipe-reviewers/1"
# Scrypt at n=2**15, r=8: 32 MiB and ~0.1 s a try (RFC 7914's interactive-login figure, OWASP's minimum
# is n=2**17 r=8 p=1 at 128 MiB; 2**15 keeps a login and each test's enrolment quick on a lab PC).
_SCRYPT = {"n": 2**15, "r": 8, "p": 1}
_MAX_NAME = 100
_CONTROL_NAMES = {"\n": "LINE FEED (a new line)", "\r": "CARRIAGE RETURN", "\t": "TAB", "\x00": "NULL"}
# Letters and symbols that print nothing though their category is not Cf/Cc/Z*: fillers and blanks.
_INVISIBLE = {0x115F, 0x1160, 0x3164, 0xFFA0, 0x2800, 0x180E, 0x034F, 0x17B4, 0x17B5}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def normalise_name(name: str) -> str:
    """A reviewer's name as signatures print it: NFC, whitespace collapsed, nothing invisible.

    Parameters
    ----------
    name
        The name as typed.

    Returns
    -------
    str
        NFC-normalised, every run of spaces (any Unicode space) one ASCII
        space, no leading or trailing space.

    Raises
    ------
    ReviewError
        Empty, longer than 100 characters, or holding a control, format
        (zero-width, bidirectional override), private-use, unassigned,
        line-separator or other invisible character; the message names it
        and its position.

    Examples
    --------
    >>> normalise_name("  Ada   Lovelace ")
    'Ada Lovelace'
    """
    text = unicodedata.normalize("NFC", str(name))
    for pos, ch in enumerate(text, start=1):
        cat = unicodedata.category(ch)
        if cat in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp") or ord(ch) in _INVISIBLE:
            label = unicodedata.name(ch, "") or _CONTROL_NAMES.get(ch, "a control character")
            msg = (f"The reviewer name {name!r} holds an invisible or control character, U+{ord(ch):04X} "
                   f"{label} (character {pos}): a name must read the same to everyone. Type it again "
                   "with letters, spaces and punctuation only.")
            raise ReviewError(msg)
    text = " ".join(text.split())
    if not text:
        msg = "A reviewer name is needed (got only spaces): give the name as it should be printed on signatures."
        raise ReviewError(msg)
    if len(text) > _MAX_NAME:
        msg = f"The reviewer name {text[:40]!r}... is {len(text)} characters long; at most {_MAX_NAME}."
        raise ReviewError(msg)
    if unicodedata.category(text[0]).startswith("M"):
        msg = f"The reviewer name {text!r} starts with a combining mark; start it with a letter."
        raise ReviewError(msg)
    return text


def name_key(name: str) -> str:
    """The key two names must not share: :func:`normalise_name`, then NFKC and case folded.

    ``Ada Lovelace``, ``ADA LOVELACE`` and its full-width twin are one reviewer.
    """
    return unicodedata.normalize("NFKC", normalise_name(name)).casefold()


def registry_path(path: str | os.PathLike | None = None) -> Path | None:
    """The registry in use: ``path`` if given, else ``$CYTOPIPE_REVIEWERS``, else None (no registry)."""
    if path:
        return Path(path)
    env = os.environ.get(REGISTRY_ENV, "").strip()
    return Path(env) if env else None


def _derive(password: str, salt: bytes, cost: dict[str, int]) -> tuple[bytes, bytes]:
    """(the stored password hash, the private key's passphrase): the two halves of one Scrypt output."""
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    out = Scrypt(salt=salt, length=64, n=cost["n"], r=cost["r"], p=cost["p"]).derive(password.encode("utf-8"))
    return out[:32], out[32:]


@dataclasses.dataclass(frozen=True)
class Reviewer:
    """One enrolled reviewer, as the registry holds them.

    Attributes
    ----------
    name
        The normalised printed name (:func:`normalise_name`).
    public_key
        The Ed25519 public key, raw 32 bytes, base64.
    password_hash
        The first half of Scrypt(password), base64; ``kdf`` holds salt and cost.
    private_key
        The Ed25519 private key, PKCS8 PEM encrypted with the second half.
    kdf
        ``{"name": "scrypt", "salt": base64, "n": ..., "r": ..., "p": ...}``.
    enrolled
        ISO 8601 UTC time of enrolment.
    revoked
        ``{"time": ISO 8601 UTC, "reason": ...}`` once revoked, else None
        (absent in registries written before revocation existed).
    """

    name: str
    public_key: str
    password_hash: str
    private_key: str
    kdf: dict[str, Any]
    enrolled: str
    revoked: dict[str, str] | None = None

    @property
    def key(self) -> str:
        """The name's uniqueness key (:func:`name_key`)."""
        return name_key(self.name)


class Signer:
    """A reviewer's unlocked private key: signs decision lines in their name.

    Made by :meth:`ReviewerRegistry.unlock`; never written anywhere.
    """

    def __init__(self, name: str, private_key: Any) -> None:
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        self.name = name
        self._key = private_key
        self.public_key = _b64(private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))

    def __repr__(self) -> str:
        return f"Signer({self.name!r})"

    def sign_decision(self, decision: Decision) -> Decision:
        """The decision carrying this reviewer's key and signature over its content (its chain link included).

        Raises
        ------
        ReviewError
            The decision is in another reviewer's name.
        """
        if name_key(decision.reviewer) != name_key(self.name):
            msg = (f"A decision in the name of {decision.reviewer!r} cannot be signed with {self.name!r}'s key: "
                   "each reviewer signs their own decisions.")
            raise ReviewError(msg)
        keyed = dataclasses.replace(decision, signer_key=self.public_key, signature=None)
        return dataclasses.replace(keyed, signature=_b64(self._key.sign(keyed.signed_content())))


class ReviewerRegistry:
    """The lab's reviewer registry file: enrol, list, find by key, unlock.

    Parameters
    ----------
    path
        The JSON file; it need not exist until the first reviewer is enrolled.

    Examples
    --------
    >>> reg = ReviewerRegistry("lab/reviewers.json")  # doctest: +SKIP
    >>> reg.add("Ada Lovelace", "correct horse battery staple")  # doctest: +SKIP
    >>> signer = reg.unlock("ada lovelace", "correct horse battery staple")  # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"ReviewerRegistry({str(self.path)!r})"

    def reviewers(self) -> list[Reviewer]:
        """Every enrolled reviewer, in enrolment order (empty when the file does not exist yet).

        Raises
        ------
        ReviewError
            The file is not a cytopipe reviewer registry, or an entry is damaged.
        """
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            msg = f"{self.path}: not readable JSON ({e}); restore the reviewer registry from the lab's copy."
            raise ReviewError(msg) from e
        if not isinstance(data, dict) or data.get("format") != _FORMAT or not isinstance(data.get("reviewers"), list):
            msg = f"{self.path} is not a cytopipe reviewer registry (expected {{'format': {_FORMAT!r}, ...}})."
            raise ReviewError(msg)
        out = []
        fields = {f.name for f in dataclasses.fields(Reviewer)}
        for n, entry in enumerate(data["reviewers"], start=1):
            if not isinstance(entry, dict) or set(entry) not in (fields, fields - {"revoked"}):
                msg = f"{self.path}: reviewer {n} is damaged: expected the keys {sorted(fields)}."
                raise ReviewError(msg)
            out.append(Reviewer(**entry))
        return out

    def __iter__(self) -> Iterator[Reviewer]:
        return iter(self.reviewers())

    def get(self, name: str) -> Reviewer | None:
        """The reviewer enrolled under ``name`` (any case, spacing or normal form), or None."""
        key = name_key(name)
        return next((r for r in self.reviewers() if r.key == key), None)

    def require(self, name: str) -> Reviewer:
        """The reviewer enrolled under ``name``.

        Raises
        ------
        ReviewError
            ``name`` is not enrolled; the message says how to enrol or list.
        """
        reviewer = self.get(name)
        if reviewer is None:
            msg = (f"{normalise_name(name)!r} is not an enrolled reviewer in {self.path}: enrol them first "
                   "('cytopipe reviewer add NAME'), or give the name as enrolled ('cytopipe reviewer list'). "
                   "Nothing was recorded.")
            raise ReviewError(msg)
        return reviewer

    def by_public_key(self, public_key: str) -> Reviewer | None:
        """The reviewer whose Ed25519 public key (base64) this is, or None."""
        return next((r for r in self.reviewers() if r.public_key == public_key), None)

    def add(self, name: str, password: str, *, min_length: int = 8) -> Reviewer:
        """Enrol a reviewer: a new Ed25519 key, its private half encrypted with their password.

        Parameters
        ----------
        name
            The reviewer's name as it should be printed (normalised first).
        password
            Their password: at least ``min_length`` characters, not the name.
        min_length
            The shortest password accepted.

        Returns
        -------
        Reviewer
            The new entry, as written.

        Raises
        ------
        ReviewError
            An invalid name, a name already enrolled (in any case), or a password too short.
        """
        import fcntl

        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import (
            BestAvailableEncryption,
            Encoding,
            PrivateFormat,
            PublicFormat,
        )

        printed = normalise_name(name)
        if len(password) < min_length or name_key(password) == name_key(printed):
            msg = (f"The password for {printed!r} must have at least {min_length} characters and not be the "
                   "name; choose a longer one.")
            raise ReviewError(msg)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:  # two enrolments at once
            fcntl.flock(lock, fcntl.LOCK_EX)
            existing = self.reviewers()
            clash = next((r for r in existing if r.key == name_key(printed)), None)
            if clash is not None:
                msg = (f"{printed!r} is already enrolled in {self.path} as {clash.name!r} (names are unique "
                       "whatever their case): give the full name that tells the two reviewers apart.")
                raise ReviewError(msg)
            salt = os.urandom(16)
            check, passphrase = _derive(password, salt, _SCRYPT)
            key = Ed25519PrivateKey.generate()
            entry = Reviewer(
                name=printed,
                public_key=_b64(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)),
                password_hash=_b64(check),
                private_key=key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8,
                                              BestAvailableEncryption(passphrase)).decode("ascii"),
                kdf={"name": "scrypt", "salt": _b64(salt), **_SCRYPT},
                enrolled=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            )
            reviewers = [dataclasses.asdict(r) for r in existing] + [dataclasses.asdict(entry)]
            write_json({"format": _FORMAT, "reviewers": reviewers}, self.path)
        return entry

    def change_password(self, name: str, old: str, new: str, *, min_length: int = 8) -> Reviewer:
        """Re-encrypt a reviewer's key under a new password; the key, and so every past signature, stays.

        Raises
        ------
        ReviewError
            The name is not enrolled or is revoked, ``old`` is wrong, or ``new`` is too short or the name.
        """
        from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, Encoding, PrivateFormat

        def update(entry: Reviewer) -> Reviewer:
            if len(new) < min_length or name_key(new) == entry.key:
                msg = (f"The new password for {entry.name!r} must have at least {min_length} characters and not "
                       "be the name; nothing was changed.")
                raise ReviewError(msg)
            key = self.unlock(entry.name, old)._key  # noqa: SLF001 (this module's own class)
            salt = os.urandom(16)
            check, passphrase = _derive(new, salt, _SCRYPT)
            return dataclasses.replace(
                entry, password_hash=_b64(check), kdf={"name": "scrypt", "salt": _b64(salt), **_SCRYPT},
                private_key=key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8,
                                              BestAvailableEncryption(passphrase)).decode("ascii"))

        return self._rewrite(name, update)

    def revoke(self, name: str, *, reason: str, now: _dt.datetime | None = None) -> Reviewer:
        """Revoke a reviewer from ``now`` on (a person who left, a password that got out).

        They can no longer unlock their key. Their entry stays, so what they
        signed before still verifies; a decision signed with their key after
        the revocation time fails verification.

        Raises
        ------
        ReviewError
            The name is not enrolled, is revoked already, or no reason is given.
        """
        if not reason.strip():
            raise ReviewError(f"Give the reason {normalise_name(name)!r} is revoked (--reason); nothing was changed.")
        when = (now or _dt.datetime.now(_dt.UTC)).isoformat(timespec="milliseconds")
        return self._rewrite(name, lambda entry: dataclasses.replace(
            entry, revoked={"time": when, "reason": reason.strip()}))

    def _rewrite(self, name: str, update) -> Reviewer:
        """Replace the (unrevoked) entry of ``name`` by ``update(entry)`` under the registry's lock."""
        import fcntl

        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            entries = self.reviewers()
            entry = self.require(name)
            if entry.revoked:
                msg = (f"{entry.name!r} was revoked at {entry.revoked['time']} ({entry.revoked['reason']}); "
                       "nothing was changed. Enrol a new entry under a name that tells the two apart.")
                raise ReviewError(msg)
            new = update(entry)
            out = [dataclasses.asdict(new if r.key == entry.key else r) for r in entries]
            write_json({"format": _FORMAT, "reviewers": out}, self.path)
        return new

    def unlock(self, name: str, password: str) -> Signer:
        """Check a reviewer's name and password, and return their :class:`Signer`.

        Raises
        ------
        ReviewError
            The name is not enrolled or is revoked, or the password is wrong (the message
            does not say which of the two a wrong password was, only that
            it is wrong for that name).
        """
        import hmac

        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        reviewer = self.require(name)
        if reviewer.revoked:
            msg = (f"{reviewer.name!r} was revoked at {reviewer.revoked['time']} ({reviewer.revoked['reason']}): "
                   "nothing was signed or recorded.")
            raise ReviewError(msg)
        kdf = reviewer.kdf
        check, passphrase = _derive(password, _unb64(kdf["salt"]), {k: int(kdf[k]) for k in ("n", "r", "p")})
        if not hmac.compare_digest(check, _unb64(reviewer.password_hash)):
            msg = f"Wrong password for {reviewer.name!r}: nothing was signed or recorded."
            raise ReviewError(msg)
        key = load_pem_private_key(reviewer.private_key.encode("ascii"), password=passphrase)
        return Signer(reviewer.name, key)
