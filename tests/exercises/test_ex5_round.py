"""Exercise 5: one self-speculative round with the shipped model, its rollback and a stop rule (docs/exercises.md)."""

import pytest
import torch

import layerskip as ls
from data.prepare import load_prompts
from settings import Settings


def decode_by_rounds(round_fn, model, prompt, exit_layer, d, threshold, n_tokens):
    """Call the solution round after round, as the library's loop would; check each round's contract; return the
    rounds' tokens and the tokens of each round."""
    cache = ls.Cache(model, len(prompt) + n_tokens + d + 2)
    seq, n_cached, per_round = list(prompt), 0, []
    while len(seq) - len(prompt) < n_tokens:
        new, n_cached = round_fn(model, cache, list(seq), n_cached, exit_layer, d, threshold)
        assert 1 <= len(new) <= d + 1, f"a round yields 1 to d + 1 = {d + 1} tokens, this one {len(new)}"
        seq += list(new)
        assert n_cached == len(seq) - 1, (f"after the round, positions 0..{len(seq) - 2} are valid in the cache "
                                          f"and the newest token is the next input: n_cached = {len(seq) - 1}, "
                                          f"not {n_cached}")
        per_round.append(list(new))
    return seq[len(prompt):], per_round


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Batch-1 decoding of a small model on one thread: fastest, and far faster than two on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prompt(shipped_model):
    return shipped_model[1].encode(load_prompts("humaneval")[52])  # 101 tokens


@pytest.fixture(scope="module")
def full_model_tokens(shipped_model, prompt):
    """The full model's greedy continuation: what every round-by-round decoding must reproduce."""
    return ls.generate(shipped_model[0], prompt, 32).tokens


def test_the_first_round_of_the_tutorial(solved, shipped_model, prompt):
    """The tutorial's hand-made round (step 6): exit 4, d = 4 on HumanEval prompt 52: the draft '    ' is accepted,
    '>>>' is rejected and the verifier's 'if' follows; the position counter ends at 102."""
    model, tok = shipped_model
    cache = ls.Cache(model, len(prompt) + 8)
    new, n_cached = solved("self_speculative_round")(model, cache, list(prompt), 0, 4, 4, 0.0)
    assert tok.decode(prompt + list(new))[len(tok.decode(prompt)):] == "    if"
    assert len(new) == 2 and n_cached == 102


@pytest.mark.parametrize("exit_layer, d, threshold", [(4, 4, 0.0), (2, 3, 0.0), (32, 2, 0.0), (4, 8, 0.5)])
def test_greedy_output_equals_autoregressive(solved, shipped_model, prompt, full_model_tokens, exit_layer, d,
                                             threshold):
    """Round after round, 24 tokens or more equal to the full model's greedy tokens, whatever the exit, d and stop
    rule: exit 2 rejects most drafts, exit 32 (the full model) accepts all of them and adds the bonus token. Each
    round adds the tokens of the library's round (ls.generate_stream with the same draft_threshold)."""
    model, _ = shipped_model
    tokens, per_round = decode_by_rounds(solved("self_speculative_round"), model, prompt, exit_layer, d, threshold,
                                         24)
    assert tokens == full_model_tokens[:len(tokens)]
    settings = Settings("self_speculative", exit_layer=exit_layer, num_speculations=d, draft_threshold=threshold)
    library = [r.tokens for r in ls.generate_stream(model, prompt, 24 + d + 2, settings)]
    assert per_round == library[:len(per_round)], "the rounds stop drafting elsewhere than the library's"
    if exit_layer == 32:
        assert all(len(r) == d + 1 for r in per_round)
