"""
Reference solutions of docs/exercises.md. The checkers run on this file by default:

    pytest tests/exercises                                  # these solutions: every checker passes
    pytest tests/exercises --solution my_solutions.py       # yours

Written from the paper's equations, apart from layerskip.py's own code, so that the checkers compare two
implementations (and literal numbers), not one with itself.
"""

from typing import Optional

import torch
import torch.nn.functional as F

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


# Exercise 3: the training forward pass, eq. 1 and eq. 5
def training_loss(model, tokens, targets, exit_weights: dict[int, float], drop_rates: list[float], seed: int,
                  step: int) -> torch.Tensor:
    B, T = tokens.shape
    rope, h, loss = model.rope_rotations[:T], model.tok_embeddings(tokens), 0.0
    for l, block in enumerate(model.layers):
        skip = ls.layer_dropout_mask(B, drop_rates[l], seed, step, l)  # [B], True: sample b skips block l
        h = torch.where(skip[:, None, None], h, block(h, rope))  # eq. 1, M(p_l) per sample, no 1/(1-p)
        if exit_weights.get(l, 0.0) > 0:  # eq. 5: exit l reads x_{l+1}, block l's output, through the head g
            loss = loss + exit_weights[l] * F.cross_entropy(model.head(h).flatten(0, 1), targets.flatten())
    return loss


# Exercise 4: greedy verification
def greedy_verify(drafts: list[int], logits: torch.Tensor) -> tuple[int, int]:
    target = logits.argmax(-1).tolist()
    n = 0
    while n < len(drafts) and drafts[n] == target[n]:
        n += 1
    return n, target[n]


# Exercise 5: one self-speculative round, with its rollback and a stop rule
@torch.inference_mode()
def self_speculative_round(model, cache, seq: list[int], n_cached: int, exit_layer: int, num_speculations: int,
                           draft_threshold: float) -> tuple[list[int], int]:
    E, L = exit_layer, model.params.n_layers

    def early(tokens, pos):  # blocks 0..E-1 on tokens at pos..; keeps their exit states for the verifier
        h = model.run_blocks(model.tok_embeddings(ls.token_tensor(tokens, model)), 0, E, pos, cache)
        cache.exit_h[:, pos:pos + len(tokens)] = h
        return h

    pos, x, drafts = n_cached, seq[n_cached:], []
    while len(drafts) < num_speculations:
        h = early(x, pos)
        pos += len(x)
        probs = torch.softmax(model.head(h[0, -1]), -1)
        drafts.append(int(probs.argmax()))
        x = drafts[-1:]
        if probs[drafts[-1]] < draft_threshold:  # an unsure draft is likely rejected: verify now
            break
    early(x, pos)
    pos += 1
    h = model.run_blocks(cache.exit_h[:, n_cached:pos], E, L, n_cached, cache)
    accepted, token = greedy_verify(drafts, model.head(h[0, -(len(drafts) + 1):]))
    new = drafts[:accepted] + [token]
    return new, len(seq) + len(new) - 1  # the newest token has been through no block yet


# Exercise 6: the speculative-sampling acceptance rule
def speculative_accept(p: torch.Tensor, q: torch.Tensor, token: int,
                       u: float) -> tuple[bool, Optional[torch.Tensor]]:
    if u < p[token] / q[token]:  # accept with probability min(1, p/q)
        return True, None
    residual = (p - q).clamp_min(0)
    return False, residual / residual.sum()


# Exercise 7: the analytic speedup, with an acceptance probability per draft position
def predicted_speedup(alphas: list[float], c_draft: float, c_verify: float) -> float:
    tokens, survive = 1.0, 1.0  # the verifier's token always; draft i counts when drafts 1..i all pass
    for alpha in alphas:
        survive *= alpha
        tokens += survive
    return tokens / (len(alphas) * c_draft + c_verify)
