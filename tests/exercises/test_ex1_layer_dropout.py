"""Exercise 1: the layer-dropout rates of eq. 2-4 (docs/exercises.md)."""

import pytest

import layerskip as ls


def test_rates_of_the_papers_24_layer_model(solved):
    """L = 24, p_max = 0.2: the per-block rates read from the paper's eq. 3, 0 at block 0 up to 0.2 at block 23,
    and their mean 0.0890 (the paper's Fig. 12 compares it with a constant rate of 0.0889)."""
    rates = solved("layer_dropout_rates")(24, 0.2)
    assert [round(p, 4) for p in rates] == [
        0.0, 0.0061, 0.0124, 0.0189, 0.0256, 0.0325, 0.0396, 0.047, 0.0545, 0.0623, 0.0703, 0.0786, 0.0871,
        0.0959, 0.105, 0.1143, 0.1239, 0.1338, 0.144, 0.1546, 0.1654, 0.1766, 0.1881, 0.2]
    assert sum(rates) / 24 == pytest.approx(0.08904, abs=1e-5)


def test_rates_of_the_shipped_32_layer_model(solved):
    """L = 32, p_max = 0.1 (the shipped recipe): block 0 is never skipped, block 31 with 0.1, block 16 with
    0.1 (2^(16/31) - 1) = 0.0430; a sample skips 1.42 blocks per step on average."""
    rates = solved("layer_dropout_rates")(32, 0.1)
    assert len(rates) == 32
    assert rates[0] == 0.0 and rates[31] == pytest.approx(0.1, abs=1e-12)
    assert rates[16] == pytest.approx(0.043011, abs=1e-6)
    assert sum(rates) == pytest.approx(1.4225, abs=1e-4)


def test_from_scratch_the_rates_grow_over_training(solved):
    """eq. 4: S(t) = 2^(t/(T-1)) - 1 scales every rate: 0 at the first step, 1 at the last, sqrt(2) - 1 halfway."""
    f = solved("layer_dropout_rates")
    assert f(12, 0.2, step=0, total_steps=100) == [0.0] * 12
    assert f(12, 0.2, step=99, total_steps=100) == pytest.approx(f(12, 0.2))
    assert f(32, 0.1, step=500, total_steps=1001)[-1] == pytest.approx(0.1 * (2 ** 0.5 - 1), abs=1e-12)


@pytest.mark.parametrize("L, p_max, step, total", [(2, 0.5, None, None), (7, 0.3, 3, 10), (40, 0.1, None, None)])
def test_same_as_layerskip(solved, L, p_max, step, total):
    """The same rates as ls.layer_dropout_rates, the library's."""
    assert solved("layer_dropout_rates")(L, p_max, step, total) == pytest.approx(
        ls.layer_dropout_rates(L, p_max, step, total), abs=1e-12)
