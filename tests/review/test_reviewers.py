"""The reviewer registry: names that read the same to everyone, unique; passwords Scrypt-hashed; keys encrypted."""

from __future__ import annotations

import base64
import json
import re

import pytest
from click.testing import CliRunner

from cytopipe.cli import cli
from cytopipe.exceptions import ReviewError
from cytopipe.outputs.runfolder import Decision
from cytopipe.review import ReviewerRegistry, name_key, normalise_name

PW = "correct horse battery"


@pytest.mark.parametrize("name, char", [
    ("Ada\u200bLovelace", "U+200B ZERO WIDTH SPACE"),
    ("Ada \u202eecalevoL", "U+202E RIGHT-TO-LEFT OVERRIDE"),
    ("Ada\nLovelace", "U+000A LINE FEED"),
    ("Ada\u2028Lovelace", "U+2028 LINE SEPARATOR"),
    ("\u3164", "U+3164 HANGUL FILLER"),
    ("Ada\ufeff", "U+FEFF ZERO WIDTH NO-BREAK SPACE"),
])
def test_invisible_and_control_characters_are_refused_naming_the_character(name, char):
    with pytest.raises(ReviewError, match=re.escape(char)):
        normalise_name(name)


def test_names_are_nfc_with_spaces_collapsed_and_unique_whatever_their_case():
    # "e" + combining acute is one "é" after NFC; a no-break space and a tab-free run of spaces collapse to one
    assert normalise_name("  Ame\u0301lie\u00a0  Poulain ") == "Am\u00e9lie Poulain"
    assert name_key("AM\u00c9LIE POULAIN") == name_key("ame\u0301lie poulain")
    assert name_key("\uff21da") == name_key("ada")  # full-width A is the same reviewer
    assert name_key("Ada") != name_key("Adam")
    with pytest.raises(ReviewError, match="only spaces"):
        normalise_name(" \u3000 ")


def test_enrolment_stores_a_scrypt_hash_and_an_encrypted_key_never_the_password(tmp_path):
    reg = ReviewerRegistry(tmp_path / "lab" / "reviewers.json")
    entry = reg.add(" Ada  Lovelace", PW)
    text = reg.path.read_text()
    assert PW not in text and "BEGIN ENCRYPTED PRIVATE KEY" in entry.private_key
    data = json.loads(text)["reviewers"][0]
    assert data["name"] == "Ada Lovelace" and data["kdf"]["name"] == "scrypt" and data["kdf"]["n"] >= 2**14
    assert len(base64.b64decode(data["public_key"])) == 32  # a raw Ed25519 public key
    with pytest.raises(ReviewError, match="already enrolled .* as 'Ada Lovelace'"):
        reg.add("ADA LOVELACE", "another password")
    with pytest.raises(ReviewError, match="at least 8"):
        reg.add("Grace Hopper", "short")
    assert [r.name for r in reg.reviewers()] == ["Ada Lovelace"]


def test_unlock_checks_the_password_and_the_key_signs_only_its_owners_decisions(tmp_path):
    reg = ReviewerRegistry(tmp_path / "reviewers.json")
    reg.add("Ada Lovelace", PW)
    reg.add("Grace Hopper", PW + "!")
    with pytest.raises(ReviewError, match="Wrong password for 'Ada Lovelace'"):
        reg.unlock("Ada Lovelace", PW + "!")  # Grace's password does not open Ada's key
    with pytest.raises(ReviewError, match="'Alan Turing' is not an enrolled reviewer"):
        reg.unlock("Alan  Turing", PW)
    ada = reg.unlock("ada lovelace", PW)
    assert ada.name == "Ada Lovelace" and ada.public_key == reg.get("Ada Lovelace").public_key
    d = Decision(time="2026-01-01T00:00:00.000+00:00", action="approve", reviewer="Ada Lovelace", reason="",
                 file="a.fcs", patient_id="P1", visit="D1", file_sha256="f" * 64, strategy="s",
                 strategy_version="1", strategy_sha256="s" * 64, prev_sha256="0" * 64)
    signed = ada.sign_decision(d)
    assert signed.signer_key == ada.public_key and len(base64.b64decode(signed.signature)) == 64
    with pytest.raises(ReviewError, match="cannot be signed with 'Ada Lovelace'"):
        ada.sign_decision(d.__class__(**{**d.to_dict(), "reviewer": "Grace Hopper"}))


def test_reviewer_add_and_list_on_the_command_line(tmp_path, monkeypatch):
    reg = tmp_path / "reviewers.json"
    monkeypatch.setenv("CYTOPIPE_REVIEWERS", str(reg))
    res = CliRunner().invoke(cli, ["reviewer", "add", "Ada Lovelace"], input=f"{PW}\n{PW}\n")
    assert res.exit_code == 0, res.output
    assert "enrolled 'Ada Lovelace'" in res.output and PW not in res.output  # the prompt hides what is typed
    res = CliRunner().invoke(cli, ["reviewer", "add", "Grace Hopper"], input=f"{PW}\nother typo\n")
    assert res.exit_code != 0 and "do not match" in res.output  # asked twice: a typo enrols nobody
    res = CliRunner().invoke(cli, ["reviewer", "add", "Ada\u200bEve"], input=f"{PW}\n{PW}\n")
    assert res.exit_code == 2 and "U+200B ZERO WIDTH SPACE" in res.output and "Password" not in res.output
    res = CliRunner().invoke(cli, ["reviewer", "add", "ada lovelace"], input=f"{PW}\n{PW}\n")
    assert res.exit_code == 2 and "already enrolled" in res.output
    res = CliRunner().invoke(cli, ["reviewer", "list"])
    assert res.exit_code == 0 and [line.split("  ")[0] for line in res.output.splitlines()] == ["Ada Lovelace"]
    monkeypatch.delenv("CYTOPIPE_REVIEWERS")
    res = CliRunner().invoke(cli, ["reviewer", "list"])
    assert res.exit_code == 2 and "--registry PATH" in res.output


def test_reviewer_passwd_and_revoke_on_the_command_line(tmp_path, monkeypatch):
    reg = tmp_path / "reviewers.json"
    monkeypatch.setenv("CYTOPIPE_REVIEWERS", str(reg))
    assert CliRunner().invoke(cli, ["reviewer", "add", "Ada Lovelace"], input=f"{PW}\n{PW}\n").exit_code == 0
    new = "a different passphrase"
    res = CliRunner().invoke(cli, ["reviewer", "passwd", "ada lovelace"], input=f"{PW}\n{new}\n{new}\n")
    assert res.exit_code == 0 and "changed the password of 'Ada Lovelace'" in res.output, res.output
    assert ReviewerRegistry(reg).unlock("Ada Lovelace", new).name == "Ada Lovelace"
    res = CliRunner().invoke(cli, ["reviewer", "passwd", "Ada Lovelace"], input=f"{PW}\n{new}\n{new}\n")
    assert res.exit_code != 0 and "Wrong password" in res.output  # the old one no longer works
    res = CliRunner().invoke(cli, ["reviewer", "revoke", "Ada Lovelace"])
    assert res.exit_code == 2 and "--reason" in res.output
    res = CliRunner().invoke(cli, ["reviewer", "revoke", "Ada Lovelace", "--reason", "left the lab"])
    assert res.exit_code == 0 and "revoked 'Ada Lovelace' at " in res.output
    res = CliRunner().invoke(cli, ["reviewer", "list"])
    assert "revoked" in res.output and "left the lab" in res.output
