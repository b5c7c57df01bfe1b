"""
One planted wrong answer per exercise of docs/exercises.md, each a mistake a careful reader could make, and five
more for exercise 3 (TRAINING_LOSS_MISTAKES). tests/test_tutorial.py runs the checkers on this file and asserts
that every exercise's checker fails, and that exercise 3's catches every one of its mistakes.
"""

from functools import partial

import torch
import torch.nn.functional as F

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


# Exercise 3, wrong in one of five ways
def wrong_training_loss(model, tokens, targets, exit_weights, drop_rates, seed, step, mistake):
    B, T = tokens.shape
    rope, h, loss = model.rope_rotations[:T], model.tok_embeddings(tokens), 0.0
    for l in range(1 if mistake == "block 0 taken for the embedding, never run" else 0, len(model.layers)):
        key = l + 1 if mistake == "the dropout draw keyed by the exit E = l + 1" else l
        skip = ls.layer_dropout_mask(B, drop_rates[l], seed, step, key)
        if mistake == "one draw for the whole batch":
            skip = skip[:1].expand(B)
        update = model.layers[l](h, rope) - h
        if mistake == "kept samples rescaled by 1/(1-p), as nn.Dropout does":
            update = update / (1 - drop_rates[l])
        before, h = h, torch.where(skip[:, None, None], h, h + update)
        exit_h = before if mistake == "exit l reads block l-1's output (l taken for E)" else h
        w = exit_weights.get(l, 0.0)
        if w > 0 and mistake == "the exits summed unweighted":
            w = 1.0
        if w > 0:
            loss = loss + w * F.cross_entropy(model.head(exit_h).flatten(0, 1), targets.flatten())
    return loss


TRAINING_LOSS_MISTAKES = ["kept samples rescaled by 1/(1-p), as nn.Dropout does", "the exits summed unweighted",
                          "block 0 taken for the embedding, never run",
                          "exit l reads block l-1's output (l taken for E)", "one draw for the whole batch",
                          "the dropout draw keyed by the exit E = l + 1"]
training_loss = partial(wrong_training_loss, mistake=TRAINING_LOSS_MISTAKES[0])


# Exercise 4, wrong: counts every agreeing position, not the agreeing prefix
def greedy_verify(drafts, logits):
    target = logits.argmax(-1).tolist()
    n = sum(d == t for d, t in zip(drafts, target))
    return n, target[n]


# Exercise 5, wrong: no rollback; the counter stays after the last verified position, rejected drafts and all
@torch.inference_mode()
def self_speculative_round(model, cache, seq, n_cached, exit_layer, num_speculations, draft_threshold):
    E, L = exit_layer, model.params.n_layers
    pos, x, drafts, drafting = n_cached, seq[n_cached:], [], True
    while x:
        h = model.run_blocks(model.tok_embeddings(ls.token_tensor(x, model)), 0, E, pos, cache)
        cache.exit_h[:, pos:pos + len(x)] = h
        pos += len(x)
        x = []
        if drafting:
            probs = torch.softmax(model.head(h[0, -1]), -1)
            drafts.append(int(probs.argmax()))
            x = drafts[-1:]
            drafting = len(drafts) < num_speculations and probs[drafts[-1]] >= draft_threshold
    h = model.run_blocks(cache.exit_h[:, n_cached:pos], E, L, n_cached, cache)
    accepted, token = ls.verify(drafts, [None] * len(drafts), model.head(h[0, -(len(drafts) + 1):]), 0.0, None,
                                None, None)
    return drafts[:accepted] + [token], pos


# Exercise 6, wrong: a rejected draft is replaced by a fresh draw from p instead of from max(p - q, 0)
def speculative_accept(p, q, token, u):
    if u < p[token] / q[token]:
        return True, None
    return False, p


# Exercise 7, wrong: every draft counted with its own alpha, as if a draft after a rejected one were still judged
def predicted_speedup(alphas, c_draft, c_verify):
    return (1 + sum(alphas)) / (len(alphas) * c_draft + c_verify)
