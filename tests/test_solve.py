"""The batched linear algebra of the solver against numpy, unrolled and looped paths."""

import numpy as np
import pytest

from jaxphot import solve


@pytest.mark.parametrize("p", [6, 27])  # 27 = 8 stars: the looped path
def test_cholesky_solve_and_normal_matrix_match_numpy(p):
    rng = np.random.default_rng(p)
    n = 7
    m = rng.normal(size=(n, p, p))
    a = m @ m.transpose(0, 2, 1) + p * np.eye(p)
    b = rng.normal(size=(n, p))
    x, ok = solve.cholesky_solve(np.moveaxis(a, 0, -1), b.T)
    assert np.all(ok)
    assert np.allclose(np.asarray(x).T, np.linalg.solve(a, b[..., None])[..., 0], atol=1e-5)
    inv, _ = solve.cholesky_solve(np.moveaxis(a, 0, -1), np.eye(p)[:, :, None] + 0 * b.T[None])
    assert np.allclose(np.moveaxis(np.asarray(inv), -1, 0), np.linalg.inv(a), atol=1e-5)
    # A matrix that is not positive definite is reported, not raised.
    bad = np.moveaxis(a, 0, -1).copy()
    bad[0, 0, 0] = -1.0
    _, ok = solve.cholesky_solve(bad, b.T)
    assert not ok[0] and np.all(ok[1:])
    rows = [rng.normal(size=(5, 4, n)) for _ in range(p)]
    w = rng.random((5, 4, n))
    got = np.asarray(solve.normal_matrix(rows, w))
    ref = np.einsum("ihwn,hwn,jhwn->ijn", np.stack(rows), w, np.stack(rows))
    assert np.allclose(got, ref, rtol=1e-5, atol=1e-4)
