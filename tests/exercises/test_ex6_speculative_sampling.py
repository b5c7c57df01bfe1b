"""Exercise 6: the acceptance rule of speculative sampling (docs/exercises.md)."""

import pytest
import torch


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def test_accepts_with_probability_min_1_p_over_q(solved):
    """p = (0.5, 0.3, 0.2), q = (0.2, 0.6, 0.2): token 0 (p/q = 2.5) and token 2 (p/q = 1) are always accepted;
    token 1 (p/q = 0.5) when u < 0.5. An accepted draft needs no replacement: (True, None)."""
    accept = solved("speculative_accept")
    p, q = t(0.5, 0.3, 0.2), t(0.2, 0.6, 0.2)
    for token, u in [(0, 0.99), (2, 0.999), (1, 0.4)]:
        accepted, residual = accept(p, q, token, u)
        assert bool(accepted) and residual is None, (token, u)
    assert not accept(p, q, 1, 0.6)[0]


def test_a_rejection_resamples_from_the_residual(solved):
    """Rejected: the replacement is drawn from normalise(max(p - q, 0)), the mass p has and q lacks."""
    accept = solved("speculative_accept")
    assert accept(t(0.5, 0.3, 0.2), t(0.2, 0.6, 0.2), 1, 0.6)[1].tolist() == pytest.approx([1.0, 0.0, 0.0])
    accepted, residual = accept(t(0.1, 0.2, 0.3, 0.4), t(0.4, 0.3, 0.2, 0.1), 0, 0.5)
    assert not accepted and residual.tolist() == pytest.approx([0.0, 0.0, 0.25, 0.75])


def test_the_output_follows_p(solved):
    """Whatever q: draft x ~ q, accepted for a fraction min(1, p/q) of u in [0, 1), else replaced by a draw from
    the residual, gives exactly p. Computed for three random (p, q) pairs by integrating over u on a grid."""
    accept = solved("speculative_accept")
    g = torch.Generator().manual_seed(0)
    grid = [(k + 0.5) / 2000 for k in range(2000)]
    for _ in range(3):
        p, q = torch.rand(6, generator=g, dtype=torch.float64), torch.rand(6, generator=g, dtype=torch.float64)
        p, q = p / p.sum(), q / q.sum()
        out = torch.zeros(6, dtype=torch.float64)
        for x in range(6):
            results = [accept(p, q, x, u) for u in grid]
            accepted = sum(bool(ok) for ok, _ in results) / len(grid)
            out[x] += q[x] * accepted
            rejected = next((r for ok, r in results if not ok), None)
            if rejected is not None:
                out += q[x] * (1 - accepted) * torch.as_tensor(rejected, dtype=torch.float64)
        assert out.tolist() == pytest.approx(p.tolist(), abs=1e-3)
