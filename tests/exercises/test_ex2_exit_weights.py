"""Exercise 2: the early-exit loss weights of eq. 6 under the rotational curriculum (docs/exercises.md)."""

import pytest

import layerskip as ls


def weights(solved, *args):
    """The solution's weights, without exits of weight 0 (whether those are listed is up to the solution)."""
    return {l: w for l, w in solved("exit_loss_weights")(*args).items() if w != 0}


def test_eight_layers_rotation_three(solved):
    """L = 8, e_scale 1, R = 3, step 1: blocks 1, 4 and (always) 7 train; e = 1, 10 and 7 + 21 = 28, so the
    weights are 1/39, 10/39 and 28/39."""
    assert weights(solved, 8, 1.0, 1, 3) == pytest.approx({1: 1 / 39, 4: 10 / 39, 7: 28 / 39})


def test_the_draft_exit_of_the_shipped_model(solved):
    """L = 32, e_scale 1, R = 4, step 3 (a step on which exit 4, block 3, trains): it gets 6/1560 = 0.38% of the
    loss, the last layer 496/1560."""
    w = weights(solved, 32, 1.0, 3, 4)
    assert sorted(w) == [3, 7, 11, 15, 19, 23, 27, 31]
    assert w[3] == pytest.approx(6 / 1560) and w[31] == pytest.approx(496 / 1560)


def test_the_rotation_moves_one_block_per_step(solved):
    """R = 4: step 0 trains blocks 0, 4, ..., 28 (block 0's weight is 0) and 31; step 1 blocks 1, 5, ..., 29 and 31;
    step 4 is step 0 again."""
    assert sorted(weights(solved, 32, 1.0, 0, 4)) == [4, 8, 12, 16, 20, 24, 28, 31]
    assert sorted(weights(solved, 32, 1.0, 1, 4)) == [1, 5, 9, 13, 17, 21, 25, 29, 31]
    assert weights(solved, 32, 1.0, 4, 4) == pytest.approx(weights(solved, 32, 1.0, 0, 4))


def test_edge_cases(solved):
    """R = 1 trains every exit (here e = 0, 0.5, 1.5, 4.5 of 6.5); e_scale 0 leaves the last layer alone."""
    assert weights(solved, 4, 0.5, 5, 1) == pytest.approx({1: 0.5 / 6.5, 2: 1.5 / 6.5, 3: 4.5 / 6.5})
    assert weights(solved, 6, 0.0, 2, 2) == {5: 1.0}


@pytest.mark.parametrize("L, e_scale, step, R", [(12, 0.2, 7, 4), (24, 0.2, 100, 23), (16, 1.0, 3, 2)])
def test_same_as_layerskip(solved, L, e_scale, step, R):
    """The same weights as ls.early_exit_weights over ls.early_exit_curriculum's exits; they sum to 1."""
    expected = ls.early_exit_weights(L, e_scale, ls.early_exit_curriculum(L, step, "rotational", R))
    got = weights(solved, L, e_scale, step, R)
    assert got == pytest.approx({l: w for l, w in expected.items() if w != 0})
    assert sum(got.values()) == pytest.approx(1.0)
