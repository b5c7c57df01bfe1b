"""
One planted wrong answer per exercise of docs/exercises.md, each a mistake a careful reader could make.
tests/test_tutorial.py runs the checkers on this file and asserts that every exercise's checker fails.
"""

from typing import Optional

import torch

import layerskip as ls


# Exercise 1, wrong: D(l) linear in depth instead of exponential
def layer_dropout_rates(n_layers, p_max, step=None, total_steps=None):
    S = 1.0 if step is None else 2 ** (step / (total_steps - 1)) - 1
    return [S * (l / (n_layers - 1)) * p_max for l in range(n_layers)]


# Exercise 2, wrong: the rotation runs the other way, (l + t) % R
def exit_loss_weights(n_layers, e_scale, step, rotation):
    L = n_layers
    enabled = [l for l in range(L) if (l + step) % rotation == 0 or l == L - 1]
    e = {l: e_scale * l * (l + 1) / 2 for l in enabled}
    e[L - 1] = (L - 1) + e_scale * (L - 2) * (L - 1) / 2
    return {l: v / sum(e.values()) for l, v in e.items()}


# Exercise 3, wrong: counts every agreeing position, not the agreeing prefix
def greedy_verify(drafts, logits):
    target = logits.argmax(-1).tolist()
    n = sum(d == t for d, t in zip(drafts, target))
    return n, target[n]


# Exercise 4, wrong: no rollback; the counter stays after the last verified position, rejected drafts and all
@torch.inference_mode()
def self_speculative_round(model, cache, seq, n_cached, exit_layer, num_speculations):
    E, L = exit_layer, model.params.n_layers
    pos, x, drafts = n_cached, seq[n_cached:], []
    for _ in range(num_speculations + 1):
        h = model.run_blocks(model.tok_embeddings(ls.token_tensor(x, model)), 0, E, pos, cache)
        cache.exit_h[:, pos:pos + len(x)] = h
        pos += len(x)
        if len(drafts) < num_speculations:
            drafts.append(int(model.head(h[0, -1]).argmax()))
            x = drafts[-1:]
    h = model.run_blocks(cache.exit_h[:, n_cached:pos], E, L, n_cached, cache)
    accepted, token = ls.verify(drafts, [None] * len(drafts), model.head(h[0, -(len(drafts) + 1):]), 0.0, None,
                                None, None)
    return drafts[:accepted] + [token], pos


# Exercise 5, wrong: a rejected draft is replaced by a fresh draw from p instead of from max(p - q, 0)
def speculative_accept(p, q, token, u) -> Optional[torch.Tensor]:
    if u < p[token] / q[token]:
        return None
    return p


# Exercise 6, wrong: alpha^d instead of alpha^(d+1), one token short per round
def predicted_speedup(alpha, d, c_draft, c_verify):
    tokens = d if alpha == 1 else (1 - alpha ** d) / (1 - alpha)
    return tokens / (d * c_draft + c_verify)
