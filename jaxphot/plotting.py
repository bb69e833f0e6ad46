"""Matplotlib helpers: aperture outlines, segment outlines, light curves.

Each function follows the matplotlib convention: it takes an ``ax`` and returns
the artists it added. matplotlib is imported only inside the functions, so
``import jaxphot`` never needs it (install with ``pip install "jaxphot[plot]"``).
Pixel convention: 0-based pixel centres, x along columns, y along rows.
"""

from __future__ import annotations

import numpy as np

_HINT = 'plotting needs matplotlib: pip install "jaxphot[plot]"'


def _mpl():
    """Import matplotlib lazily, with an install hint when it is missing."""
    try:
        import matplotlib.patches as patches
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(_HINT) from exc
    return patches


def _per_star(value, n: int, name: str) -> np.ndarray:
    """Broadcast a scalar or per-star value to shape (n,), or raise naming it."""
    arr = np.asarray(value, dtype=float)
    if arr.ndim == 0:
        return np.full(n, float(arr))
    if arr.shape != (n,):
        raise ValueError(f"{name} must be a scalar or one value per position ({n}), got shape {arr.shape}")
    return arr


def _show(ax, image):
    """Draw a background image with a robust (1-99 percentile) stretch."""
    if image is None:
        return []
    img = np.asarray(image, dtype=float)
    lo, hi = np.nanpercentile(img, [1, 99])
    return [ax.imshow(img, origin="lower", cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")]



def _edges(major, minor, inner, outer, outer_minor, n, style, dashed, names):
    """``[(major, minor, style), ...]``: the aperture, then its annulus edges (dashed).

    The inner edge keeps the aperture's axis ratio, as photutils' ``b_in``/``h_in`` default; the
    outer edge takes ``outer_minor`` when given.
    """
    out = [(major, minor, style)]
    for edge, is_outer in ((inner, False), (outer, True)):
        if edge is not None:
            e = _per_star(edge, n, names[0])
            given = is_outer and outer_minor is not None
            m = _per_star(outer_minor, n, names[1]) if given else e * minor / major
            out.append((e, m, dashed))
    return out

def plot_apertures(ax, positions, *, shape="circle", r=None, a=None, b=None, theta=0.0, w=None, h=None,
                   r_in=None, r_out=None, a_in=None, a_out=None, b_out=None, w_in=None, w_out=None,
                   h_out=None, image=None, **artist_kwargs):
    """Outline apertures (and optional annuli) on ``ax``.

    Parameters
    ----------
    ax : matplotlib Axes
    positions : array_like, shape (n, 2)
        (x, y) aperture centres in pixels.
    shape : {"circle", "ellipse", "rectangle"}
    r : float or (n,) array, pixels
        Circle radius.
    a, b : float or (n,) array, pixels
        Ellipse semi-axes.
    theta : float or (n,) array, radians
        Rotation counter-clockwise from +x (ellipse and rectangle).
    w, h : float or (n,) array, pixels
        Rectangle full width and height.
    r_in, r_out, a_in, a_out, b_out, w_in, w_out, h_out : optional
        Annulus edges; each given edge is drawn as a dashed outline.
    image : (ny, nx) array, optional
        Drawn underneath with ``origin="lower"``.
    **artist_kwargs
        Passed to every patch (e.g. ``color``, ``lw``).

    Returns
    -------
    list of matplotlib artists (the image first when given, then one patch per
    aperture and per annulus edge).
    """
    patches = _mpl()
    pos = np.asarray(positions, dtype=float).reshape(-1, 2) if np.size(positions) else np.zeros((0, 2))
    n = len(pos)
    kw = {"fill": False, "color": "C1", "lw": 1.0} | artist_kwargs
    dashed = kw | {"ls": "--"}
    ang = np.degrees(_per_star(theta, n, "theta"))
    out = _show(ax, image)

    def add(patch):
        ax.add_patch(patch)
        out.append(patch)

    if shape == "circle":
        if r is None:
            raise ValueError("r is required for shape='circle'")
        for radius, style in ((r, kw), (r_in, dashed), (r_out, dashed)):
            if radius is not None:
                for (x, y), rr in zip(pos, _per_star(radius, n, "r"), strict=True):
                    add(patches.Circle((x, y), rr, **style))
    elif shape == "ellipse":
        if a is None or b is None:
            raise ValueError("a and b are required for shape='ellipse'")
        edges = _edges(_per_star(a, n, "a"), _per_star(b, n, "b"), a_in, a_out, b_out, n, kw, dashed,
                       ("a_in/a_out", "b_out"))
        for ea, eb, style in edges:
            for (x, y), ai, bi, t in zip(pos, ea, eb, ang, strict=True):
                add(patches.Ellipse((x, y), 2 * ai, 2 * bi, angle=t, **style))
    elif shape == "rectangle":
        if w is None or h is None:
            raise ValueError("w and h are required for shape='rectangle'")
        edges = _edges(_per_star(w, n, "w"), _per_star(h, n, "h"), w_in, w_out, h_out, n, kw, dashed,
                       ("w_in/w_out", "h_out"))
        for ew, eh, style in edges:
            for (x, y), wi, hi, t in zip(pos, ew, eh, ang, strict=True):
                add(patches.Rectangle((x - wi / 2, y - hi / 2), wi, hi, angle=t, rotation_point="center",
                                      **style))
    else:
        raise ValueError(f"shape must be 'circle', 'ellipse' or 'rectangle', got {shape!r}")
    return out


def plot_segments(ax, labels, *, image=None, **kw):
    """Outline every labelled segment of a segmentation map.

    Parameters
    ----------
    ax : matplotlib Axes
    labels : (ny, nx) int array
        0 is background; each positive label is one segment.
    image : (ny, nx) array, optional
        Drawn underneath with ``origin="lower"``.
    **kw
        Passed to ``ax.contour`` (e.g. ``colors``, ``linewidths``).

    Returns
    -------
    list of artists: the image (when given) then one contour set per segment.
    """
    _mpl()
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ValueError(f"labels must be a 2-D array, got {lab.ndim} dimensions")
    out = _show(ax, image)
    style = {"colors": "C1", "linewidths": 1.0} | kw
    # explicit grids keep 0-based pixel centres (contour's origin= would shift by half a pixel)
    x, y = np.arange(lab.shape[1]), np.arange(lab.shape[0])
    for label in np.unique(lab[lab > 0]):
        # the 0.5 level of a 0/1 mask runs along the pixel edges around one segment
        out.append(ax.contour(x, y, (lab == label).astype(float), levels=[0.5], **style))
    return out


def plot_light_curve(ax, time, flux, flux_err=None, **kw):
    """Plot a light curve, with error bars when ``flux_err`` is given.

    Parameters
    ----------
    ax : matplotlib Axes
    time : (n,) array
        Times (any unit; the axis label is left to the caller).
    flux : (n,) array
        Fluxes (any unit).
    flux_err : (n,) array, optional
        1-sigma flux errors, same unit as ``flux``.
    **kw
        Passed to ``ax.errorbar`` / ``ax.plot``.

    Returns
    -------
    list of artists (one Line2D, or one ErrorbarContainer).
    """
    _mpl()
    t, f = np.asarray(time, dtype=float), np.asarray(flux, dtype=float)
    if t.shape != f.shape or t.ndim != 1:
        raise ValueError(f"time and flux must be 1-D arrays of equal length, got {t.shape} and {f.shape}")
    if flux_err is not None:
        style = {"fmt": ".", "ms": 3} | kw
        e = np.asarray(flux_err, dtype=float)
        if e.shape != f.shape:
            raise ValueError(f"flux_err must match flux in shape {f.shape}, got {e.shape}")
        return [ax.errorbar(t, f, yerr=e, **style)]
    return list(ax.plot(t, f, **({"ls": "none", "marker": ".", "ms": 3} | kw)))


def plot_ast(fig_or_axes, ast_table, *, bins=0.25, grid=(3, 3)):
    """Four panels of an artificial-star test: completeness, Δmag, pull width, completeness map.

    Parameters
    ----------
    fig_or_axes : matplotlib Figure or sequence of 4 Axes
        A figure gets a 2 x 2 grid of new axes.
    ast_table : Table
        From :func:`~jaxphot.artificial_star_test`.
    bins : float, int or array
        Magnitude bins, as for :func:`~jaxphot.completeness`.
    grid : (ny, nx)
        Cells of the completeness map (all magnitudes together).

    Returns
    -------
    dict
        ``axes`` (the 4 axes), ``completeness`` (the per-bin table), ``map`` ((ny, nx) recovered
        fraction per cell), and the artists: ``comp_line``, ``dmag_line``, ``dmag_band``,
        ``pull_line``, ``map_image``.
    """
    _mpl()
    from .image.artificial import completeness

    ny, nx = (int(v) for v in grid)
    if ny < 1 or nx < 1:
        raise ValueError(f"grid must be two positive integers, got {grid!r}")
    if hasattr(fig_or_axes, "add_subplot"):
        axes = list(fig_or_axes.subplots(2, 2).ravel())
    else:
        axes = list(np.ravel(np.asarray(fig_or_axes, dtype=object)))
        if len(axes) != 4:
            raise ValueError(f"fig_or_axes must be a Figure or 4 Axes, got {len(axes)} axes")
    c = completeness(ast_table, bins=bins)
    m = np.asarray(c["mag"], float)
    comp, cerr = np.asarray(c["completeness"], float), np.asarray(c["completeness_err"], float)
    a0, a1, a2, a3 = axes
    (comp_line,) = a0.plot(m, comp, "o-", color="C0")
    a0.fill_between(m, comp - cerr, comp + cerr, color="C0", alpha=0.25)
    for key in ("mag50", "mag90"):
        if np.isfinite(c.meta[key]):
            a0.axvline(c.meta[key], color="0.5", ls=":")
    a0.set(xlabel="input mag", ylabel="completeness", ylim=(-0.05, 1.05))
    med, sig = np.asarray(c["dmag_median"], float), np.asarray(c["dmag_sigma"], float)
    rec = np.asarray(ast_table["recovered"], bool)
    a1.plot(np.asarray(ast_table["mag_in"])[rec],
            (np.asarray(ast_table["mag"]) - np.asarray(ast_table["mag_in"]))[rec],
            ".", ms=2, color="0.6")
    (dmag_line,) = a1.plot(m, med, "-", color="C1")
    dmag_band = a1.fill_between(m, med - sig, med + sig, color="C1", alpha=0.3)
    a1.axhline(0.0, color="k", lw=0.5)
    a1.set(xlabel="input mag", ylabel="mag - mag_in")
    (pull_line,) = a2.plot(m, np.asarray(c["pull_sigma"], float), "o-", color="C2")
    a2.axhline(1.0, color="k", lw=0.5)
    a2.set(xlabel="input mag", ylabel="pull width (flux)")
    mi = np.asarray(ast_table["mag_in"], float)
    one_bin = [np.nanmin(mi) - 1.0, np.nanmax(mi) + 1.0]  # every star, all magnitudes
    cm = completeness(ast_table, bins=one_bin, by=f"region:{ny}x{nx}")
    frac = np.asarray(cm["completeness"], float).reshape(ny, nx)
    h, w = ast_table.meta.get("shape", (ny, nx))
    map_image = a3.imshow(frac, origin="lower", extent=(-0.5, w - 0.5, -0.5, h - 0.5),
                          vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
    a3.set(xlabel="x", ylabel="y", title="completeness (all mags)")
    return {"axes": axes, "completeness": c, "map": frac, "comp_line": comp_line,
            "dmag_line": dmag_line, "dmag_band": dmag_band, "pull_line": pull_line,
            "map_image": map_image}
