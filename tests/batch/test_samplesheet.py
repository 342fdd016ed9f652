from __future__ import annotations

import pytest

from cytopipe.batch.samplesheet import read_sample_sheet
from cytopipe.exceptions import SampleSheetError


def _files(tmp_path, *names):
    for n in names:
        (tmp_path / n).write_bytes(b"x")


def test_reads_bom_crlf_empty_lines_and_extra_columns(tmp_path):
    _files(tmp_path, "a.fcs", "b.fcs")
    sheet = tmp_path / "s.csv"
    sheet.write_bytes(
        "\ufefffile,patient_id,visit,day,site\r\na.fcs,P01,D1,1,Paris\r\n\r\nb.fcs,P01,D60,60,Paris\r\n".encode()
    )
    df = read_sample_sheet(sheet)
    assert list(df["file"]) == ["a.fcs", "b.fcs"]
    assert list(df["day"]) == [1, 60]
    assert list(df["line"]) == [2, 4]
    assert list(df["site"]) == ["Paris", "Paris"]
    assert df["path"].iloc[0] == str((tmp_path / "a.fcs").resolve())


def test_every_problem_is_listed_at_once(tmp_path):
    _files(tmp_path, "a.fcs")
    (tmp_path.parent / "outside.fcs").write_bytes(b"x")
    sheet = tmp_path / "s.csv"
    sheet.write_text(
        "file,patient_id,visit,day\n"
        "a.fcs,P01,D1,1\n"
        "missing.fcs,P02,D1,1\n"
        "a.fcs,P01,D1,1\n"
        "../outside.fcs,P03,D1,one\n"
        ",P04,D1,1\n"
    )
    with pytest.raises(SampleSheetError) as e:
        read_sample_sheet(sheet)
    msg = str(e.value)
    assert "line 3: file 'missing.fcs' not found" in msg
    assert "line 4: patient 'P01' visit 'D1' already on line 2" in msg
    assert "line 5: file '../outside.fcs' is outside" in msg
    assert "line 5: day 'one' is not a whole number" in msg
    assert "line 6: empty 'file'" in msg
    assert "\n" not in msg


def test_outside_paths_accepted_on_request(tmp_path):
    sub = tmp_path / "sheet"
    sub.mkdir()
    (tmp_path / "o.fcs").write_bytes(b"x")
    sheet = sub / "s.csv"
    sheet.write_text("file,patient_id,visit\n../o.fcs,P01,D1\n")
    with pytest.raises(SampleSheetError, match="--allow-outside"):
        read_sample_sheet(sheet)
    assert read_sample_sheet(sheet, allow_outside=True)["day"].isna().all()


def test_missing_column(tmp_path):
    sheet = tmp_path / "s.csv"
    sheet.write_text("file,patient\na.fcs,P01\n")
    with pytest.raises(SampleSheetError, match=r"missing column\(s\) \['patient_id', 'visit'\]"):
        read_sample_sheet(sheet)
