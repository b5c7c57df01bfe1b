"""
Reference solutions of docs/exercises.md. The checkers run on this file by default:

    pytest tests/exercises                                  # these solutions: every checker passes
    pytest tests/exercises --solution my_solutions.py       # yours

Written from the paper's equations, apart from layerskip.py's own code, so that the checkers compare two
implementations (and literal numbers), not one with itself.
"""

from typing import Optional

import torch

import layerskip as ls


# Exercise 1: the layer-dropout rates, eq. 2-4
def layer_dropout_rates(n_layers: int, p_max: float, step: Optional[int] = None,
                        total_steps: Optional[int] = None) -> list[float]:
    L = n_layers
    S = 1.0 if step is None else 2 ** (step / (total_steps - 1)) - 1  # eq. 4, from scratch only
    return [S * (2 ** (l / (L - 1)) - 1) * p_max for l in range(L)]  # eq. 2 with D(l) of eq. 3


# Exercise 2: the early-exit loss weights under the rotational curriculum, eq. 6
def exit_loss_weights(n_layers: int, e_scale: float, step: int, rotation: int) -> dict[int, float]:
    L = n_layers
    enabled = [l for l in range(L) if (l - step) % rotation == 0 or l == L - 1]  # C_rot(t, l)
    e = {l: e_scale * l * (l + 1) / 2 for l in enabled}
    e[L - 1] = (L - 1) + e_scale * (L - 2) * (L - 1) / 2
    total = sum(e.values())
    return {l: v / total for l, v in e.items()}


# Exercise 3: greedy verification
def greedy_verify(drafts: list[int], logits: torch.Tensor) -> tuple[int, int]:
    target = logits.argmax(-1).tolist()
    n = 0
    while n < len(drafts) and drafts[n] == target[n]:
        n += 1
    return n, target[n]


# Exercise 4: one self-speculative round, with its rollback
@torch.inference_mode()
def self_speculative_round(model, cache, seq: list[int], n_cached: int, exit_layer: int,
                           num_speculations: int) -> tuple[list[int], int]:
    E, L = exit_layer, model.params.n_layers

    def early(tokens, pos):  # blocks 0..E-1 on tokens at pos..; keeps their exit states for the verifier
        h = model.run_blocks(model.tok_embeddings(ls.token_tensor(tokens, model)), 0, E, pos, cache)
        cache.exit_h[:, pos:pos + len(tokens)] = h
        return h

    pos, x, drafts = n_cached, seq[n_cached:], []
    for _ in range(num_speculations):
        h = early(x, pos)
        pos += len(x)
        drafts.append(int(model.head(h[0, -1]).argmax()))
        x = drafts[-1:]
    early(x, pos)
    pos += 1
    h = model.run_blocks(cache.exit_h[:, n_cached:pos], E, L, n_cached, cache)
    accepted, token = greedy_verify(drafts, model.head(h[0, -(len(drafts) + 1):]))
    new = drafts[:accepted] + [token]
    return new, len(seq) + len(new) - 1  # the newest token has been through no block yet


# Exercise 5: the speculative-sampling acceptance rule
def speculative_accept(p: torch.Tensor, q: torch.Tensor, token: int, u: float) -> Optional[torch.Tensor]:
    if u < p[token] / q[token]:  # accept with probability min(1, p/q)
        return None
    residual = (p - q).clamp_min(0)
    return residual / residual.sum()


# Exercise 6: the analytic speedup
def predicted_speedup(alpha: float, d: int, c_draft: float, c_verify: float) -> float:
    tokens = d + 1 if alpha == 1 else (1 - alpha ** (d + 1)) / (1 - alpha)
    return tokens / (d * c_draft + c_verify)
