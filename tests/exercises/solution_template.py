"""
Your solutions to docs/exercises.md. Copy this file, fill in the functions, and check them:

    cp tests/exercises/solution_template.py my_solutions.py
    pytest tests/exercises --solution my_solutions.py                                  # all six
    pytest tests/exercises/test_ex3_greedy_verify.py --solution my_solutions.py       # one at a time
"""

from typing import Optional

import torch

import layerskip as ls  # for exercise 4: model.run_blocks, model.head, ls.token_tensor, the cache


def layer_dropout_rates(n_layers: int, p_max: float, step: Optional[int] = None,
                        total_steps: Optional[int] = None) -> list[float]:
    """Exercise 1. The skip probability of every block l = 0..n_layers-1 (eq. 2-4); step=None means S(t) = 1."""
    raise NotImplementedError


def exit_loss_weights(n_layers: int, e_scale: float, step: int, rotation: int) -> dict[int, float]:
    """Exercise 2. {block l: its share of the loss} at this step, under the rotational curriculum (eq. 6)."""
    raise NotImplementedError


def greedy_verify(drafts: list[int], logits: torch.Tensor) -> tuple[int, int]:
    """Exercise 3. (number of drafts accepted, the verifier's token) from the verifier's logits [d + 1, vocab]."""
    raise NotImplementedError


def self_speculative_round(model, cache, seq: list[int], n_cached: int, exit_layer: int,
                           num_speculations: int) -> tuple[list[int], int]:
    """Exercise 4. One greedy round: (the tokens it adds to seq, the new n_cached)."""
    raise NotImplementedError


def speculative_accept(p: torch.Tensor, q: torch.Tensor, token: int, u: float) -> Optional[torch.Tensor]:
    """Exercise 5. None if the draft `token` is accepted for the uniform draw u, else the distribution to draw
    its replacement from."""
    raise NotImplementedError


def predicted_speedup(alpha: float, d: int, c_draft: float, c_verify: float) -> float:
    """Exercise 6. The expected speedup over autoregressive decoding (costs in autoregressive steps)."""
    raise NotImplementedError
