"""Exercise 3: the training forward pass, layer dropout (eq. 1) and the early-exit loss (eq. 5) (docs/exercises.md)."""

import pytest
import torch

import layerskip as ls
from conftest import tiny_model

# name: (exit_weights, drop_rates, seed, step) for a 4-block model and a batch of 8
CASES = {
    "no layer dropout, the last exit alone (the plain next-token loss)": ({3: 1.0}, [0.0] * 4, 0, 0),
    "no layer dropout, eq. 6's weights on every exit": (ls.early_exit_weights(4, 1.0, range(4)), [0.0] * 4, 0, 0),
    "layer dropout at 0.5 from block 1 on, the last exit alone": ({3: 1.0}, [0.0, 0.5, 0.5, 0.5], 1, 3),
    "eq. 2-4's rates for p_max 0.6, exits 1 and 3": (ls.early_exit_weights(4, 0.5, [1, 3]),
                                                      ls.layer_dropout_rates(4, 0.6), 5, 5),
}


def model_and_batch():
    """A random 4-block float64 model in training mode, and a batch of 8 windows of 12 tokens with their targets."""
    model = tiny_model(n_layers=4).train()
    tokens = torch.randint(0, 32, (8, 13), generator=torch.Generator().manual_seed(0))
    return model, tokens[:, :-1], tokens[:, 1:]


def test_the_same_loss_as_the_models_forward(solved):
    """In float64, the loss equals Transformer.forward's, model(x, y, exit_weights=..., drop_rates=..., seed=...,
    step=...), in every case: the plain loss, the weighted exits, per-sample layer dropout, both at once."""
    model, x, y = model_and_batch()
    for case, (weights, rates, seed, step) in CASES.items():
        expected, _ = model(x, y, exit_weights=weights, drop_rates=rates, seed=seed, step=step)
        got = solved("training_loss")(model, x, y, weights, rates, seed, step)
        assert got.item() == pytest.approx(expected.item(), rel=1e-10), f"{case}: {got.item()} != {expected.item()}"


def test_the_loss_trains_the_same_weights(solved):
    """The loss is differentiable and its gradient is the forward's: for block 1's query weights (skipped by some
    samples) and the shared head."""
    model, x, y = model_and_batch()
    weights, rates, seed, step = CASES["eq. 2-4's rates for p_max 0.6, exits 1 and 3"]
    params = [model.layers[1].attention.wq.weight, model.output.weight]
    expected = torch.autograd.grad(model(x, y, exit_weights=weights, drop_rates=rates, seed=seed, step=step)[0],
                                   params)
    got = torch.autograd.grad(solved("training_loss")(model, x, y, weights, rates, seed, step), params)
    for g, e in zip(got, expected):
        assert torch.allclose(g, e, rtol=1e-8, atol=1e-12), "another gradient than the forward's: is it the same loss?"
