from __future__ import annotations

import json

import pytest

from cytopipe.exceptions import StrategyChecksumError, StrategyError
from cytopipe.strategy.registry import list_strategies, load_strategy


def test_default_strategy_loads_with_its_released_hash():
    s = load_strategy("treg@1.0.0")
    assert s.ref == "treg@1.0.0" and s.status == "released"
    assert s.sha256 == s.manifest["gatingml_sha256"]
    names = [p[-1] for p in s.gate_paths()]
    assert names == ["Lymphocytes", "Singlets", "Live", "CD3pos", "CD4pos", "Treg"]
    assert s.denominator == s.numerator[:-1]
    assert {m.marker: m.detector for m in s.markers}["CD25"] == "PE-Cy7-A"


def test_edited_released_strategy_is_refused(strategies_copy):
    gml = strategies_copy / "treg" / "1.0.0" / "treg.xml"
    gml.write_text(gml.read_text().replace('value="25000"', 'value="26000"', 1))
    with pytest.raises(StrategyChecksumError, match="no longer matches its released checksum"):
        load_strategy("treg@1.0.0")


def test_draft_needs_allow_draft(strategies_copy):
    man_path = strategies_copy / "treg" / "1.0.0" / "manifest.json"
    man = json.loads(man_path.read_text())
    man["status"] = "draft"
    man["version"] = "1.1.0"
    new = strategies_copy / "treg" / "1.1.0"
    new.mkdir()
    (new / "treg.xml").write_bytes((man_path.parent / "treg.xml").read_bytes())
    (new / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(StrategyError, match="allow-draft"):
        load_strategy("treg@1.1.0")
    assert load_strategy("treg@1.1.0", allow_draft=True).is_draft
    refs = [s["ref"] for s in list_strategies()]
    assert "treg@1.0.0" in refs and "treg@1.1.0" in refs


def test_unknown_strategy_lists_the_available_ones():
    with pytest.raises(StrategyError, match=r"treg@1\.0\.0"):
        load_strategy("treg@9.9.9")


def test_endpoint_path_must_exist(strategies_copy):
    man_path = strategies_copy / "treg" / "1.0.0" / "manifest.json"
    man = json.loads(man_path.read_text())
    man["endpoint"]["numerator"][-1] = "Tregs"
    man_path.write_text(json.dumps(man))
    with pytest.raises(StrategyError, match="numerator gate path"):
        load_strategy("treg@1.0.0")


def test_doctype_entities_are_refused(strategies_copy, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("PATIENT NAME")
    gml = strategies_copy / "treg" / "1.0.0" / "treg.xml"
    text = gml.read_text().replace(
        "<?xml version='1.0' encoding='UTF-8'?>",
        f"<?xml version='1.0' encoding='UTF-8'?>\n<!DOCTYPE x [<!ENTITY e SYSTEM \"file://{secret}\">]>",
    )
    gml.write_text(text)
    man_path = gml.parent / "manifest.json"
    man = json.loads(man_path.read_text())
    man["status"] = "draft"
    man_path.write_text(json.dumps(man))
    with pytest.raises(StrategyError, match="DOCTYPE"):
        load_strategy("treg@1.0.0", allow_draft=True)


def test_schema_error_names_the_line(strategies_copy):
    gml = strategies_copy / "treg" / "1.0.0" / "treg.xml"
    gml.write_text(gml.read_text().replace('gating:id="CD3pos"', 'gating:id="CD3+"'))
    man_path = gml.parent / "manifest.json"
    man = json.loads(man_path.read_text())
    man["status"] = "draft"
    man_path.write_text(json.dumps(man))
    with pytest.raises(StrategyError, match=r"line \d+"):
        load_strategy("treg@1.0.0", allow_draft=True)


def test_each_gating_strategy_is_an_independent_copy():
    """Parsed once per process, but a custom gate added to one copy is not in the next."""
    import copy

    s = load_strategy("treg@1.0.0")
    first = s.gating_strategy()
    path = s.numerator
    gate = copy.deepcopy(first.get_gate(path[-1], gate_path=path[:-1]))
    gate.dimensions[0].min = 1.0
    first.add_gate(gate, gate_path=path[:-1], sample_id="a.fcs")
    assert first.is_custom_gate("a.fcs", path[-1], path[:-1])
    second = s.gating_strategy()
    assert second is not first and not second.is_custom_gate("a.fcs", path[-1], path[:-1])
    assert second.get_gate(path[-1], gate_path=path[:-1]).dimensions[0].min != 1.0
    assert [g for g, _ in second.get_gate_ids()] == [g for g, _ in first.get_gate_ids()]


def _gatingml(gates: list[tuple[str, str, str | None]]) -> str:
    """A GatingML document of one-dimension gates ``(kind, id, parent)`` in the given document order."""
    ns = ('xmlns:gating="http://www.isac-net.org/std/Gating-ML/v2.0/gating" '
          'xmlns:data-type="http://www.isac-net.org/std/Gating-ML/v2.0/datatypes"')
    dim = ('<gating:dimension gating:compensation-ref="uncompensated">'
           '<data-type:fcs-dimension data-type:name="{}"/></gating:dimension>')
    body = []
    for kind, gate_id, parent in gates:
        attrs = f'gating:id="{gate_id}"' + (f' gating:parent_id="{parent}"' if parent else "")
        if kind == "RectangleGate":
            inner = dim.replace('">', '" gating:min="1">', 1).format("FSC-A")
        else:
            verts = "".join(f'<gating:vertex><gating:coordinate data-type:value="{x}"/>'
                            f'<gating:coordinate data-type:value="{y}"/></gating:vertex>'
                            for x, y in ((0, 0), (10, 0), (10, 10)))
            inner = dim.format("FSC-A") + dim.format("SSC-A") + verts
        body.append(f"<gating:{kind} {attrs}>{inner}</gating:{kind}>")
    return f'<?xml version="1.0" encoding="UTF-8"?><gating:Gating-ML {ns}>{"".join(body)}</gating:Gating-ML>'


def test_released_gate_paths_read_without_flowkit_equal_flowkits(tmp_path):
    """A branching tree, polygons before rectangles in the file and children before parents: FlowKit's order."""
    from cytopipe.strategy.registry import _gate_paths, _gate_paths_from_xml

    gml = tmp_path / "g.xml"
    gml.write_text(_gatingml([
        ("PolygonGate", "P1", "R2"), ("RectangleGate", "R1", None), ("PolygonGate", "P0", None),
        ("RectangleGate", "R3", "R1"), ("RectangleGate", "R2", None), ("PolygonGate", "P2", "R1"),
        ("RectangleGate", "R4", "P0"), ("RectangleGate", "R5", "R2"), ("PolygonGate", "P3", "R4"),
    ]))
    fast = _gate_paths_from_xml(str(gml), "x")
    assert fast is not None and len(fast) == 9
    assert fast == _gate_paths(str(gml), "x")


def test_gate_paths_without_flowkit_leave_what_they_cannot_place_to_flowkit(tmp_path):
    from cytopipe.strategy.registry import _gate_paths_from_xml

    unknown_parent = tmp_path / "u.xml"
    unknown_parent.write_text(_gatingml([("RectangleGate", "R1", "nowhere")]))
    cycle = tmp_path / "c.xml"
    cycle.write_text(_gatingml([("RectangleGate", "R0", None), ("RectangleGate", "R1", "R2"),
                                ("RectangleGate", "R2", "R1")]))
    repeated = tmp_path / "r.xml"
    repeated.write_text(_gatingml([("RectangleGate", "R1", None), ("PolygonGate", "R1", None)]))
    for path in (unknown_parent, cycle, repeated):
        assert _gate_paths_from_xml(str(path), "x") is None
