"""
Your solutions to docs/exercises.md. Copy this file, fill in the functions, and check them:

    cp tests/exercises/solution_template.py my_solutions.py
    pytest tests/exercises --solution my_solutions.py                                  # all seven
    pytest tests/exercises/test_ex4_greedy_verify.py --solution my_solutions.py       # one at a time
"""

from typing import Optional

import torch
import torch.nn.functional as F  # for exercise 3: F.cross_entropy

import layerskip as ls  # exercise 3: ls.layer_dropout_mask; exercise 5: ls.token_tensor, ls.Cache


def layer_dropout_rates(n_layers: int, p_max: float, step: Optional[int] = None,
                        total_steps: Optional[int] = None) -> list[float]:
    """Exercise 1. The skip probability of every block l = 0..n_layers-1 (eq. 2-4); step=None means S(t) = 1."""
    raise NotImplementedError


def exit_loss_weights(n_layers: int, e_scale: float, step: int, rotation: int) -> dict[int, float]:
    """Exercise 2. {block l: its share of the loss} at this step, under the rotational curriculum (eq. 6)."""
    raise NotImplementedError


def training_loss(model, tokens, targets, exit_weights: dict[int, float], drop_rates: list[float], seed: int,
                  step: int) -> torch.Tensor:
    """Exercise 3. The training loss of eq. 5 on tokens [B, T] with layer dropout (eq. 1): a scalar tensor."""
    raise NotImplementedError


def greedy_verify(drafts: list[int], logits: torch.Tensor) -> tuple[int, int]:
    """Exercise 4. (number of drafts accepted, the verifier's token) from the verifier's logits [d + 1, vocab]."""
    raise NotImplementedError


def self_speculative_round(model, cache, seq: list[int], n_cached: int, exit_layer: int, num_speculations: int,
                           draft_threshold: float) -> tuple[list[int], int]:
    """Exercise 5. One greedy round: (the tokens it adds to seq, the new n_cached)."""
    raise NotImplementedError


def speculative_accept(p: torch.Tensor, q: torch.Tensor, token: int,
                       u: float) -> tuple[bool, Optional[torch.Tensor]]:
    """Exercise 6. (True, None) if the draft `token` is accepted for the uniform draw u, else (False, the
    distribution to draw its replacement from)."""
    raise NotImplementedError


def predicted_speedup(alphas: list[float], c_draft: float, c_verify: float) -> float:
    """Exercise 7. The expected speedup over autoregressive decoding of a round of len(alphas) drafts, draft i
    accepted with probability alphas[i - 1] when it is judged (costs in autoregressive steps)."""
    raise NotImplementedError
