"""The one PNG encoder and viridis table, shared by the report and the station."""

from __future__ import annotations

import io

import numpy as np
import pytest

from cytopipe.review.png import png_bytes, viridis


@pytest.mark.parametrize("channels, mode", [(3, "RGB"), (4, "RGBA")])
def test_png_bytes_decode_to_the_same_pixels(channels, mode):
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, size=(7, 5, channels), dtype=np.uint8)
    image = Image.open(io.BytesIO(png_bytes(pixels, level=3)))
    assert image.mode == mode
    assert (np.asarray(image) == pixels).all()


def test_png_bytes_refuses_an_image_without_3_or_4_channels():
    with pytest.raises(ValueError, match=r"\(h, w, 3\) or \(h, w, 4\).*\(2, 2\)"):
        png_bytes(np.zeros((2, 2), dtype=np.uint8))


def test_viridis_is_matplotlibs_map_rounded_and_read_only():
    from matplotlib import colormaps

    table = viridis()
    assert table.shape == (256, 4) and table.dtype == np.uint8 and viridis() is table
    assert np.abs(table.astype(float) - colormaps["viridis"](np.linspace(0, 1, 256)) * 255).max() <= 0.5
    assert not table.flags.writeable
