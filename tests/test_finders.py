"""find_peaks against simulated truth and photutils' find_peaks."""

import numpy as np
import pytest

from jaxphot import find_peaks


def field(seed=0, n=60, size=200, sigma=1.5, noise=1.0):
    """Gaussian stars on a jittered grid (so none overlap) plus white noise; truth positions."""
    rng = np.random.default_rng(seed)
    g = np.arange(12, size - 12, 22)
    gx, gy = (a.ravel() for a in np.meshgrid(g, g))
    x = gx + rng.uniform(-0.5, 0.5, gx.size)
    y = gy + rng.uniform(-0.5, 0.5, gx.size)
    amp = rng.uniform(20, 200, x.size)
    yy, xx = np.mgrid[:size, :size]
    img = np.zeros((size, size))
    for xi, yi, ai in zip(x, y, amp, strict=True):  # small test field; a loop is clearest here
        img += ai * np.exp(-((xx - xi) ** 2 + (yy - yi) ** 2) / (2 * sigma**2))
    return img + rng.normal(0, noise, img.shape), x, y, amp


def test_find_peaks_recovers_every_star():
    img, x, y, amp = field()
    t = find_peaks(img, 10.0, box_size=11)
    assert len(t) == len(x)  # 11-px box: one peak per star, no noise peak above 10σ
    d = np.hypot(t["x_peak"][:, None] - x[None], t["y_peak"][:, None] - y[None]).min(1)
    assert np.all(d <= 1.0)  # the peak pixel is one of the star's central pixels
    assert np.all(np.diff(t["peak_value"]) <= 0)
    assert len(find_peaks(img, 10.0, box_size=11, npeaks=5)) == 5
    assert len(find_peaks(img, 10.0, box_size=11, border_width=30)) < len(x)


@pytest.mark.photutils
@pytest.mark.parametrize("kw", [{"box_size": 3}, {"box_size": 7}, {"border_width": 20},
                                {"footprint": np.eye(5, dtype=bool) | np.eye(5, dtype=bool)[::-1]}])
def test_find_peaks_same_as_photutils(kw):
    det = pytest.importorskip("photutils.detection")
    img, *_ = field(seed=1)
    mask = np.zeros(img.shape, bool)
    mask[50:80, 50:80] = True
    ours = find_peaks(img, 3.0, mask=mask, **kw)
    ref = det.find_peaks(img, 3.0, mask=mask, **kw)
    a = set(zip(ours["x_peak"].tolist(), ours["y_peak"].tolist(), strict=True))
    b = set(zip(ref["x_peak"].tolist(), ref["y_peak"].tolist(), strict=True))
    assert a == b
    assert len(a) > 50


def test_find_peaks_bad_input():
    with pytest.raises(ValueError, match="data"):
        find_peaks(np.zeros(5), 1.0)
    with pytest.raises(ValueError, match="threshold"):
        find_peaks(np.zeros((5, 5)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="mask"):
        find_peaks(np.zeros((5, 5)), 1.0, mask=np.zeros((4, 4), bool))
