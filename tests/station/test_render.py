"""The station's drawing in numbers: density orientation, axis ticks (PNG encoding: tests/review/test_png.py)."""

from __future__ import annotations

import io

import numpy as np

from cytopipe.station.render import axis_spec, density_png


def test_density_has_y_up_and_empty_bins_transparent():
    from PIL import Image

    hist = np.zeros((4, 3))  # x bins x y bins
    hist[0, 2] = 5  # left column, top row
    hist[3, 0] = 1  # right column, bottom row
    img = np.asarray(Image.open(io.BytesIO(density_png(hist))).convert("RGBA"))
    assert img.shape == (3, 4, 4)
    assert img[0, 0, 3] == 255 and img[2, 3, 3] == 255
    assert (img[..., 3] > 0).sum() == 2
    tinted = np.asarray(Image.open(io.BytesIO(density_png(hist, tint=(10, 20, 30)))).convert("RGBA"))
    assert (tinted[0, 0, :3] == (10, 20, 30)).all() and tinted[0, 0, 3] > tinted[2, 3, 3] > 0


def test_logicle_axis_ticks_sit_where_flowkit_puts_the_values():
    from cytopipe.strategy import load_strategy

    logicle = load_strategy("treg@1.0.0").gating_strategy().get_transform("logicle")
    axis = axis_spec("APC-A", logicle, {"APC-A": "FOXP3"})
    assert axis["label"] == "FOXP3 (APC-A)" and axis["log"]
    majors = {t["label"]: t["v"] for t in axis["ticks"] if t["major"]}
    for label, linear in (("0", 0.0), ("10⁴", 1e4), ("-10³", -1e3)):
        assert np.isclose(majors[label], float(logicle.apply(np.array([[linear]]))[0, 0]))
    minors = [t["v"] for t in axis["ticks"] if not t["major"]]
    assert len(minors) > 20 and all(axis["range"][0] <= v <= axis["range"][1] for v in minors)
    scatter = axis_spec("FSC-A", None, {"APC-A": "FOXP3"})
    assert scatter["label"] == "FSC-A" and scatter["range"] == [0.0, 262144.0]
    assert [t["label"] for t in scatter["ticks"]] == ["0", "50k", "100k", "150k", "200k", "250k"]


def test_the_batch_view_is_told_which_samples_are_outliers():
    """A made-up batch: % of parent 10, 11, 9, 10.5, 9.5 and one at 30; one not gated, one with no parent events."""
    from cytopipe.station.render import OUTLIER_RULE, batch_outliers

    counts = [(100, 1000), (110, 1000), (90, 1000), (105, 1000), (95, 1000), (300, 1000), (None, None), (0, 0)]
    samples = [{"i": k, "count": c, "parent_count": p} for k, (c, p) in enumerate(counts)]
    marked = batch_outliers(samples)
    assert [s["outlier"] for s in marked] == [False, False, False, False, False, True, False, False]
    assert all(type(s["outlier"]) is bool for s in marked)  # JSON true/false
    assert [s["i"] for s in marked] == list(range(len(counts)))  # order and other keys kept
    assert OUTLIER_RULE.startswith("more than 3.5 robust SDs from the median of the batch's samples of the same visit")
    # fewer than 4 samples with a %: no median to judge by, nothing framed
    assert not any(s["outlier"] for s in batch_outliers(samples[4:]))


def test_outliers_are_judged_per_visit_on_treg_pct_and_with_the_patients_own_visits():
    """Issue 27: on the Treg gate the frame went to the day-8 responders (CD127lo's % of parent is 100 % and
    the Treg gate's is everyone's jump at day 8), not to P001 D60 at 1 %."""
    from cytopipe.station.render import batch_outliers

    d1 = [5.0, 5.5, 4.8, 5.2, 5.1, 4.9]
    d8 = [12.0, 14.0, 11.5, 13.0, 12.5, 13.5]  # every patient responds at day 8
    d60 = [1.0, 5.3, 5.0, 4.7, 5.6, 5.1]  # P001 D60 at 1 %
    samples = [{"visit": v, "value": x, "count": 100, "parent_count": 100, "flags": []}
               for v, xs in (("D1", d1), ("D8", d8), ("D60", d60)) for x in xs]
    framed = [(s["visit"], s["value"]) for s in batch_outliers(samples) if s["outlier"]]
    assert framed == [("D60", 1.0)]
    # across the whole batch, ignoring visits, the responders would have looked out of line instead
    from cytopipe.review.outliers import robust_outliers

    assert robust_outliers(d1 + d8 + d60)[6:12].all()  # pooled, every day-8 responder is framed
    # the patient's own visits speak too: a sample the run flagged treg_outlier is framed
    samples[2]["flags"] = ["treg_outlier"]
    assert [s["outlier"] for s in batch_outliers(samples)][2] is True


def test_contours_enclose_the_share_of_events_they_promise():
    from PIL import Image
    from scipy.ndimage import convolve

    from cytopipe.station.render import CONTOUR_LEVELS, contour_levels, contour_png, linear_ticks

    rng = np.random.default_rng(3)
    pts = np.vstack([rng.normal([0.3, 0.4], 0.05, (8000, 2)), rng.normal([0.7, 0.7], 0.08, (2000, 2))])
    hist = np.histogram2d(pts[:, 0], pts[:, 1], bins=160, range=((0, 1), (0, 1)))[0]
    k1 = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
    smooth = convolve(hist, np.outer(k1, k1), mode="constant")  # the kernel, by scipy rather than the code
    level = contour_levels(hist)
    for k, share_out in enumerate(CONTOUR_LEVELS):
        inside = smooth[level > k].sum() / smooth.sum()
        assert 1 - share_out <= inside <= 1 - share_out + smooth.max() / smooth.sum() + 1e-9, (k, inside)
    img = np.asarray(Image.open(io.BytesIO(contour_png(hist, tint=(1, 2, 3)))).convert("RGBA"))
    drawn = img[..., 3] > 0
    assert drawn.any() and (img[drawn][:, :3] == (1, 2, 3)).all()
    assert not drawn[::-1].T[level == 0].any()  # nothing outside the outermost contour
    assert not np.asarray(Image.open(io.BytesIO(contour_png(np.zeros((8, 8))))))[..., 3].any()
    assert [t["label"] for t in linear_ticks(0.0, 9.99)] == ["0", "2", "4", "6", "8"]
