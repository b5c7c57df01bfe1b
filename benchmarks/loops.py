"""
Loops. A small model's greedy text often falls into a loop (`flags.flags.flags`), which is easy to draft and so
flatters the speedup; bench.py's report says how much of the text loops, and can measure again with loops
suppressed (--no_repeat_ngram_size).
"""


def in_loops(tokens: list, max_period: int = 12, min_repeats: int = 2) -> list[bool]:
    """For each token, whether it sits in a periodic loop: a stretch of min_repeats * p tokens, p <= max_period,
    that is one block of p tokens said min_repeats times in a row, i.e. a stretch tokens[i .. i + min_repeats*p - 1]
    with tokens[j] == tokens[j + p] for every j in i .. i + (min_repeats - 1)*p - 1. (With the defaults, a token
    is in a loop if it belongs to some tokens[i .. i + 2p - 1] whose two halves are equal, p <= 12.)"""
    if min_repeats < 2:
        raise ValueError(f"a loop repeats at least twice, got min_repeats {min_repeats}")
    inside = [False] * len(tokens)
    for p in range(1, max_period + 1):
        need, run = (min_repeats - 1) * p, 0  # equal pairs (j, j + p) in a row that make a stretch; pairs so far
        for j in range(len(tokens) - p):
            run = run + 1 if tokens[j] == tokens[j + p] else 0
            if run >= need:  # the stretch from j - need + 1 to j + p
                for k in range(j - need + 1, j + p + 1):
                    inside[k] = True
    return inside


def loop_share(tokens: list, max_period: int = 12, min_repeats: int = 2) -> float:
    """The fraction of tokens that sit in a periodic loop (see in_loops); 0.0 for no tokens."""
    return sum(in_loops(tokens, max_period, min_repeats)) / len(tokens) if len(tokens) else 0.0
