"""Exercise 4: greedy verification, the longest accepted prefix plus one (docs/exercises.md)."""

import pytest
import torch

import layerskip as ls


def rows(*tokens, vocab=10):
    """Verifier logits [len(tokens), vocab] whose argmax in row i is tokens[i]."""
    logits = torch.zeros(len(tokens), vocab)
    logits[torch.arange(len(tokens)), torch.tensor(tokens)] = 1.0
    return logits


@pytest.mark.parametrize("drafts, verifier, expected", [
    ([5, 7, 9], (5, 7, 2, 4), (2, 2)),  # the third draft is wrong: two accepted, then the correction 2
    ([5, 7, 9], (5, 7, 9, 4), (3, 4)),  # all accepted, then the bonus token 4
    ([1, 7, 9], (5, 7, 9, 4), (0, 5)),  # the first is wrong: the agreeing drafts after it do not count
    ([], (3,), (0, 3)),  # no drafts: the verifier's own token
])
def test_accepts_the_agreeing_prefix_then_the_verifiers_token(solved, drafts, verifier, expected):
    """(accepted, token): the number of leading drafts equal to the verifier's argmax, then the verifier's token
    at the first disagreement (or after the last draft)."""
    assert tuple(solved("greedy_verify")(drafts, rows(*verifier))) == expected


def test_same_as_layerskip(solved):
    """On 200 random rounds with a 3-token vocabulary (so that drafts often agree), the same answer as ls.verify."""
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        d = int(torch.randint(0, 6, (), generator=g))
        drafts = torch.randint(0, 3, (d,), generator=g).tolist()
        logits = torch.randn(d + 1, 3, generator=g)
        assert tuple(solved("greedy_verify")(drafts, logits)) == ls.verify(drafts, [None] * d, logits, 0.0, None,
                                                                           None, None)
