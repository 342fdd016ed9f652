"""Signed review lines: each kind of forgery in a hash-chained log is named by the signature check."""

from __future__ import annotations

import base64
import dataclasses
import json

import pytest

from cytopipe.outputs.runfolder import Decision, RunFolder
from cytopipe.review import ReviewerRegistry, Signer, signature_report

PW = "correct horse battery"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """The lab's registry with Dr A and Dr B, and a rogue registry holding another "Dr A" key."""
    base = tmp_path_factory.mktemp("lab")
    reg = ReviewerRegistry(base / "reviewers.json")
    reg.add("Dr A", PW)
    reg.add("Dr B", PW)
    rogue = ReviewerRegistry(base / "rogue.json")
    rogue.add("Dr A", PW)
    return reg, reg.unlock("Dr A", PW), reg.unlock("Dr B", PW), rogue.unlock("Dr A", PW)


def _decision(reviewer: str, file: str, action: str = "approve") -> Decision:
    return Decision(time="2026-03-01T10:00:00.000+00:00", action=action, reviewer=reviewer,
                    reason="clog" if action == "reject" else "", file=file, patient_id="P01", visit=file[:-4],
                    file_sha256="a" * 64, strategy="treg_adaptive", strategy_version="1.3.0",
                    strategy_sha256="b" * 64, meaning=f"reviewed and {action}d")


def _problems(run_dir, reg):
    return [p.split(": ", 1)[1] for p in signature_report(run_dir, reg).problems]


def test_a_log_signed_by_enrolled_reviewers_in_their_own_names_holds(tmp_path, lab):
    reg, a, b, _ = lab
    run = RunFolder(tmp_path)
    run.append_decision(_decision("Dr A", "D1.fcs"), a.sign_decision)
    run.append_decision(_decision("Dr B", "D8.fcs", "reject"), b.sign_decision)
    report = signature_report(tmp_path, reg)
    assert (report.problems, report.signed, report.unsigned) == ((), 2, 0)
    assert run.verify_chain() == []
    # without the registry nothing can be said of the signatures, and that is what is reported
    assert _problems(tmp_path, None) == ["2 signed decision(s) cannot be checked: no reviewer registry was given "
                                         "(--registry PATH or CYTOPIPE_REVIEWERS)"]


def test_a_line_signed_by_a_key_not_in_the_registry_is_caught(tmp_path, lab):
    reg, a, _, rogue = lab
    run = RunFolder(tmp_path)
    run.append_decision(_decision("Dr A", "D1.fcs"), a.sign_decision)
    run.append_decision(_decision("Dr A", "D8.fcs"), rogue.sign_decision)  # a valid signature, by a stranger
    assert run.verify_chain() == []
    (problem,) = _problems(tmp_path, reg)
    assert problem.startswith("line 2 (approve D8.fcs by 'Dr A') is signed by a key no enrolled reviewer of ")
    assert rogue.public_key[:12] in problem


def test_a_forged_signature_and_a_line_edited_after_signing_are_caught(tmp_path, lab):
    reg, a, _, _ = lab

    def forge(d):  # Dr A's key named, 64 bytes that are no signature of hers
        return dataclasses.replace(d, signer_key=a.public_key, signature=base64.b64encode(bytes(64)).decode())

    def edit(d):  # signed, then the reason changed before the line was written
        return dataclasses.replace(a.sign_decision(d), reason="never said this")

    run = RunFolder(tmp_path)
    run.append_decision(_decision("Dr A", "D1.fcs"), forge)
    run.append_decision(_decision("Dr A", "D8.fcs", "reject"), edit)
    assert run.verify_chain() == []  # the chain holds: only the signatures show it
    assert _problems(tmp_path, reg) == [
        "line 1 (approve D1.fcs by 'Dr A'): its signature does not match the line: altered after signing, or forged",
        "line 2 (reject D8.fcs by 'Dr A'): its signature does not match the line: altered after signing, or forged"]


def test_a_signature_copied_from_another_line_is_caught(tmp_path, lab):
    reg, a, _, _ = lab
    run = RunFolder(tmp_path)
    first = run.append_decision(_decision("Dr A", "D1.fcs"), a.sign_decision)

    def copy(d):  # Dr A approved D1; her signature pasted onto an approval of D60 she never made
        return dataclasses.replace(d, signer_key=first.signer_key, signature=first.signature)

    run.append_decision(_decision("Dr A", "D60.fcs"), copy)
    assert _problems(tmp_path, reg) == [
        "line 2 (approve D60.fcs by 'Dr A'): its signature is copied from line 1; it does not sign this line"]


def test_a_line_re_signed_in_another_reviewers_name_is_caught(tmp_path, lab):
    reg, a, b, _ = lab
    run = RunFolder(tmp_path)
    run.append_decision(_decision("Dr A", "D1.fcs"), a.sign_decision)
    # Dr B signs, with his own valid key, a line that says Dr A approved
    posing = Signer("Dr A", b._key)
    run.append_decision(_decision("Dr A", "D8.fcs"), posing.sign_decision)
    assert _problems(tmp_path, reg) == [
        "line 2 (approve D8.fcs by 'Dr A') is in the name of 'Dr A' but signed with the key of 'Dr B'"]


def test_the_signature_covers_the_link_to_the_line_before(tmp_path, lab):
    reg, a, _, _ = lab
    run = RunFolder(tmp_path)
    run.append_decision(_decision("Dr A", "D1.fcs"), a.sign_decision)
    run.append_decision(_decision("Dr A", "D8.fcs"), a.sign_decision)
    lines = run.review_path.read_text().splitlines()
    # line 2, moved to the head of another log with its link rewritten: a chain that holds, a signature that does not
    moved = {**json.loads(lines[1]), "prev_sha256": "0" * 64}
    other = tmp_path / "other"
    other.mkdir()
    (other / "review.jsonl").write_text(json.dumps(moved) + "\n")
    assert RunFolder(other).verify_chain() == []
    assert _problems(other, reg) == [
        "line 1 (approve D8.fcs by 'Dr A'): its signature does not match the line: altered after signing, or forged"]


def test_with_a_registry_every_line_must_be_signed(tmp_path, lab):
    reg, a, _, _ = lab
    run = RunFolder(tmp_path)
    run.append_decision(_decision("Dr A", "D1.fcs"))
    run.append_decision(_decision("Dr A", "D8.fcs"), a.sign_decision)
    report = signature_report(tmp_path, reg)
    assert (report.signed, report.unsigned) == (1, 1)
    assert _problems(tmp_path, reg) == ["line 1 (approve D1.fcs by 'Dr A') is unsigned; with a reviewer registry "
                                        "every decision must be signed by an enrolled reviewer"]
    assert signature_report(tmp_path, None).unsigned == 1


def test_a_revoked_reviewer_signs_nothing_more_and_a_line_signed_after_revocation_is_caught(tmp_path):
    """Revocation (a reviewer who left): their earlier signatures still verify, a later one does not, and the
    registry no longer unlocks their key."""
    import datetime as dt

    from cytopipe.exceptions import ReviewError

    reg = ReviewerRegistry(tmp_path / "reviewers.json")
    reg.add("Dr A", PW)
    a = reg.unlock("Dr A", PW)  # a key unlocked before the revocation (a session left open, a copied key)
    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    run.append_decision(_decision("Dr A", "D1.fcs"), a.sign_decision)  # 2026-03-01T10:00
    reg.revoke("Dr A", reason="left the lab", now=dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC))
    assert signature_report(run.path, reg).problems == ()  # signed before: still holds
    later = dataclasses.replace(_decision("Dr A", "D8.fcs"), time="2026-03-02T09:00:00.000+00:00")
    run.append_decision(later, a.sign_decision)
    (problem,) = _problems(run.path, reg)
    assert problem == ("line 2 (approve D8.fcs by 'Dr A') is signed at 2026-03-02T09:00:00.000+00:00, after "
                       "'Dr A' was revoked at 2026-03-01T12:00:00.000+00:00 (left the lab)")
    with pytest.raises(ReviewError, match="'Dr A' was revoked at 2026-03-01T12:00:00.000"):
        reg.unlock("Dr A", PW)
    with pytest.raises(ReviewError, match="revoked"):
        reg.change_password("Dr A", PW, PW + "2")
    with pytest.raises(ReviewError, match="reason"):
        ReviewerRegistry(tmp_path / "other.json").revoke("Dr A", reason=" ")


def test_a_new_password_keeps_the_key_so_past_signatures_still_verify(tmp_path):
    from cytopipe.exceptions import ReviewError

    reg = ReviewerRegistry(tmp_path / "reviewers.json")
    before = reg.add("Dr A", PW)
    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    run.append_decision(_decision("Dr A", "D1.fcs"), reg.unlock("Dr A", PW).sign_decision)
    with pytest.raises(ReviewError, match="Wrong password"):
        reg.change_password("Dr A", PW + "x", "a new passphrase")
    with pytest.raises(ReviewError, match="at least 8 characters"):
        reg.change_password("Dr A", PW, "short")
    after = reg.change_password("Dr A", PW, "a new passphrase")
    assert after.public_key == before.public_key and after.kdf["salt"] != before.kdf["salt"]
    assert after.private_key != before.private_key  # re-encrypted under the new password
    with pytest.raises(ReviewError, match="Wrong password"):
        reg.unlock("Dr A", PW)
    signer = reg.unlock("Dr A", "a new passphrase")
    run.append_decision(_decision("Dr A", "D8.fcs"), signer.sign_decision)
    assert signature_report(run.path, reg).problems == ()  # both, the old signature and the new
