"""Exercise 7: the analytic speedup of self-speculative decoding, per draft position (docs/exercises.md)."""

import pytest


@pytest.mark.parametrize("alphas, c_draft, c_verify, expected", [
    ([0.74] * 3, 0.14, 1.17, 1.6936),  # the pieces of the model shipped before on-policy round 3: about 1.7x
    ([0.9, 0.8, 0.5], 0.125, 1.0, 2.1673),  # 1 + 0.9 + 0.72 + 0.36 = 2.98 tokens per round for 1.375 steps
    ([0.0, 0.9, 0.9], 0.2, 1.0, 0.625),  # the first draft always rejected: the later ones are never judged
    ([1.0] * 4, 0.1, 1.0, 3.5714),  # every draft accepted: d + 1 = 5 tokens for 1.4 steps
    ([], 0.1, 1.0, 1.0),  # no drafts: the verifier's token alone, for one step
])
def test_predicted_speedup(solved, alphas, c_draft, c_verify, expected):
    """1 + a_1 + a_1 a_2 + ... + a_1...a_d tokens per round (draft i counts only if drafts 1..i all pass) over
    d c_draft + c_verify steps."""
    assert solved("predicted_speedup")(alphas, c_draft, c_verify) == pytest.approx(expected, abs=1e-4)


def test_short_rounds_win_when_drafts_are_cheap_but_unsure(solved):
    """alpha 0.7 at every position, ideal costs of exit 4 of 32 (c_draft 1/8, c_verify 1): the speedup peaks at
    d = 4 (1.85x) and falls after; at alpha 0.9 it still grows at d = 8."""
    f = solved("predicted_speedup")
    at = [f([0.7] * d, 0.125, 1.0) for d in range(1, 9)]
    assert max(range(8), key=lambda i: at[i]) + 1 == 4 and at[3] == pytest.approx(1.8487, abs=1e-4)
    assert f([0.9] * 8, 0.125, 1.0) > f([0.9] * 7, 0.125, 1.0)
