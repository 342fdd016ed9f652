"""FlowKit alone, as a lab without cytopipe would count: a sample's applied GatingML on the file as written."""

from __future__ import annotations

import io
import warnings

import flowkit as fk

from cytopipe.fcs import read_fcs, spillover_channels


def flowkit_counts(path, text: str) -> dict[str, int]:
    """Every gate's count (``root/.../Gate``) by FlowKit's own ``gate_sample`` of the GatingML ``text``.

    The file's spillover is the one cytopipe's reader gives (it translates a
    matrix whose channels are named by parameter number); where it compensates
    only one of ``-A``/``-H``, the other kind are FlowKit's null channels.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gs = fk.parse_gating_xml(io.BytesIO(text.encode()))
        sample = read_fcs(path)
        spill = spillover_channels(sample)
        null = [sample.pnn_labels[i] for i in sample.fluoro_indices if spill and sample.pnn_labels[i] not in spill]
        if null:
            sample = fk.Sample(str(path), null_channel_list=null)
            sample.metadata.update(read_fcs(path).metadata)  # the index-named matrix as cytopipe translated it
        report = gs.gate_sample(sample).report
    return {"/".join([*p, g]): int(c) for p, g, c in zip(report["gate_path"], report["gate_name"], report["count"])}
