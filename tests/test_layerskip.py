"""Tests of layerskip.py: the paper's formulas as literal numbers, and decoding as exact equivalences."""

import math

import pytest
import torch
import torch.nn.functional as F

import layerskip as ls
from conftest import block_inputs, tiny_model
from settings import RANGES, STRATEGIES, Settings, no_repeat_ngram, repetition_penalty, worth_drafting_on

pytestmark = pytest.mark.method  # the whole file: `pytest -m method` checks the method alone


# ---------------------------------------------------------------------------------------------------------
# Layer dropout schedule (eq. 2-4)


def test_layer_dropout_rates_match_the_paper():
    """L=24, p_max=0.2 gives the spec's per-layer rates and a mean of 0.089 (paper Fig. 12's 0.0889); L=12 too."""
    expected = [0, .0061, .0124, .0189, .0256, .0325, .0396, .047, .0545, .0623, .0703, .0786, .0871, .0959,
                .105, .1143, .1239, .1338, .144, .1546, .1654, .1766, .1881, .2]
    rates = ls.layer_dropout_rates(24, 0.2)
    assert [round(p, 4) for p in rates] == expected
    assert abs(sum(rates) / 24 - 0.0889) < 2e-4
    # L=12 literals; S(t) = 2^(t/(T-1)) - 1 is 0 at the first step, 1 at the last, sqrt(2)-1 half-way
    assert [round(p, 4) for p in ls.layer_dropout_rates(12, 0.2)] == [
        0, .013, .0269, .0416, .0573, .0741, .0919, .1109, .1311, .1526, .1756, .2]
    assert ls.layer_dropout_rates(12, 0.2, step=0, total_steps=101) == [0.0] * 12
    assert ls.layer_dropout_rates(12, 0.2, step=100, total_steps=101)[-1] == pytest.approx(0.2)
    assert ls.layer_dropout_rates(12, 0.2, step=50, total_steps=101)[-1] == pytest.approx(0.2 * (2 ** .5 - 1))


# ---------------------------------------------------------------------------------------------------------
# Early-exit loss weights and curricula (eq. 5-6)


def test_early_exit_scale_and_weights_literals():
    """e(l) for L=12, e_scale=0.2: triangular numbers times 0.2, and 11 + 0.2*55 = 22 for the last block (eq. 6)."""
    assert [round(e, 6) for e in ls.early_exit_scale(12, 0.2)] == [0, .2, .6, 1.2, 2, 3, 4.2, 5.6, 7.2, 9, 11, 22]
    e32 = ls.early_exit_scale(32, 0.2)
    assert e32[30] == pytest.approx(93) and e32[31] == pytest.approx(124)
    # normalised over the enabled exits: L=32, {0,8,16,24,31} -> 0, .033, .125, .275, .568; {3,...,31} -> .005 ... .492
    w = ls.early_exit_weights(32, 0.2, [0, 8, 16, 24, 31])
    assert [round(w[l], 3) for l in (0, 8, 16, 24, 31)] == [0, .033, .125, .275, .568]
    w = ls.early_exit_weights(32, 0.2, [3, 11, 19, 27, 31])
    assert [round(w[l], 3) for l in (3, 11, 19, 27, 31)] == [.005, .052, .151, .300, .492]
    assert sum(w.values()) == pytest.approx(1.0)
    assert ls.early_exit_weights(12, 0.0, range(12))[11] == 1.0  # e_scale=0: only the last layer is trained


def test_edge_cases_of_the_schedules():
    """A one-block model trains its only exit; huge seeds are fine; generation without a seed leaves torch's
    global generator alone; model.to(bfloat16) keeps the RoPE tables in float32."""
    assert ls.early_exit_weights(1, 0.5, [0]) == {0: 1.0}
    assert ls.layer_dropout_rates(1, 0.2) == [0.0]
    assert ls.layer_dropout_mask(8, 0.5, 2**40, 10**9, 3).shape == (8,)
    model = tiny_model(n_layers=2)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ls.generate(model, [1, 2, 3], 4, temperature=1.0)
    assert torch.equal(torch.rand(3), expected)
    model = model.to(torch.bfloat16)
    assert model.rope_rotations.dtype == torch.complex64 and model.tok_embeddings.weight.dtype == torch.bfloat16
    assert len(ls.generate(model, [1, 2, 3], 4, strategy="self_speculative", exit_layer=1,
                           num_speculations=2).tokens) == 4


def test_curricula():
    """Rotational: every R-th block, rotating by one block per step, last block always on. Gradual: below."""
    assert ls.early_exit_curriculum(32, 0, "rotational", 8) == [0, 8, 16, 24, 31]
    assert ls.early_exit_curriculum(32, 3, "rotational", 8) == [3, 11, 19, 27, 31]
    assert ls.early_exit_curriculum(32, 9, "rotational", 8) == [1, 9, 17, 25, 31]
    assert ls.early_exit_curriculum(24, 5, "rotational", 23) == [5, 23]
    assert ls.early_exit_curriculum(24, 0, "rotational", 23) == [0, 23]
    assert ls.early_exit_curriculum(8, 7, "none") == list(range(8))
    # gradual, top-down: block l switches on at step (L-1-l) T/(2L); all on from T/2; last block on from step 0
    L, T = 8, 160  # one more block every T/(2L) = 10 steps
    assert ls.early_exit_curriculum(L, 0, "gradual", total_steps=T) == [7]
    assert ls.early_exit_curriculum(L, 9, "gradual", total_steps=T) == [7]
    assert ls.early_exit_curriculum(L, 10, "gradual", total_steps=T) == [6, 7]
    assert ls.early_exit_curriculum(L, 35, "gradual", total_steps=T) == [4, 5, 6, 7]
    assert ls.early_exit_curriculum(L, 70, "gradual", total_steps=T) == list(range(8))
    with pytest.raises(ValueError, match="unknown curriculum"):
        ls.early_exit_curriculum(L, 0, "sideways")


# ---------------------------------------------------------------------------------------------------------
# Layer dropout in the forward pass (eq. 1)


def test_layer_dropout_skips_rows_and_leaves_them_unchanged():
    """A dropped sample never reaches the block, and the loss equals running each sample through only the
    blocks it kept (so dropped rows pass through unchanged and nothing is rescaled)."""
    model = tiny_model(n_layers=5).train()
    B, T = 16, 10
    tokens = torch.randint(0, 32, (B, T))
    rates = [0.0, 0.5, 0.5, 0.5, 0.5]
    masks = [ls.layer_dropout_mask(B, p, 7, 3, l) for l, p in enumerate(rates)]
    with block_inputs(model) as shapes:
        loss, _ = model(tokens, tokens, drop_rates=rates, seed=7, step=3)
    counts = [sum(shape[0] for shape in calls) for calls in shapes]  # the samples that reached each block
    assert counts == [B - int(m.sum()) for m in masks]
    assert counts[0] == B and min(counts[1:]) < B  # block 0 never dropped; others were, this draw
    logits = []
    with torch.no_grad():
        for b in range(B):
            h = model.tok_embeddings(tokens[b:b + 1])
            for l in range(5):
                if not masks[l][b]:
                    h = model.run_blocks(h, l, l + 1)
            logits.append(model.head(h))
    expected = F.cross_entropy(torch.cat(logits).flatten(0, 1), tokens.flatten())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-9)


def test_layer_dropout_pattern_is_a_function_of_seed_step_layer_and_off_in_eval():
    """The same (seed, step, layer) draws the same pattern; another step draws another; eval drops nothing."""
    a = ls.layer_dropout_mask(64, 0.5, 1, 10, 3)
    assert torch.equal(a, ls.layer_dropout_mask(64, 0.5, 1, 10, 3))
    assert not torch.equal(a, ls.layer_dropout_mask(64, 0.5, 1, 11, 3))
    assert not torch.equal(a, ls.layer_dropout_mask(64, 0.5, 2, 10, 3))
    assert 16 < int(a.sum()) < 48
    model = tiny_model(n_layers=3).eval()
    tokens = torch.randint(0, 32, (4, 8))
    with torch.no_grad(), block_inputs(model) as shapes:
        dropped, _ = model(tokens, tokens, drop_rates=[1.0, 1.0, 1.0])
        plain, _ = model(tokens, tokens)
    assert [sum(shape[0] for shape in calls) for calls in shapes] == [8, 8, 8] and dropped.item() == plain.item()


def test_early_exit_loss_is_the_weighted_sum_of_per_exit_ce():
    """loss = sum_l w_l CE(g(x_{l+1})) (eq. 5): block l's exit is the shared head on the output of blocks 0..l, which
    decoding calls exit E = exit_of_block(l) = l + 1; no weights = the plain LM loss; the loss trains every block."""
    assert [ls.exit_of_block(l) for l in range(4)] == [1, 2, 3, 4] and ls.block_of_exit(4) == 3
    model = tiny_model(n_layers=4)
    tokens = torch.randint(0, 32, (3, 12))
    targets = torch.randint(0, 32, (3, 12))
    weights = ls.early_exit_weights(4, 1.0, [1, 2, 3])
    loss, per_exit = model(tokens, targets, exit_weights=weights)
    assert sorted(per_exit) == [1, 2, 3]
    with torch.no_grad():
        for l in per_exit:
            h = model.run_blocks(model.tok_embeddings(tokens), 0, ls.exit_of_block(l))
            ce = F.cross_entropy(model.head(h).flatten(0, 1), targets.flatten())
            assert per_exit[l].item() == pytest.approx(ce.item(), rel=1e-9)
    assert loss.item() == pytest.approx(sum(weights[l] * per_exit[l].item() for l in weights), rel=1e-9)
    plain, only_last = model(tokens, targets)
    assert list(only_last) == [3]
    assert plain.item() == pytest.approx(F.cross_entropy(model(tokens).flatten(0, 1), targets.flatten()).item())
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


# ---------------------------------------------------------------------------------------------------------
# Model and cache


def test_cached_incremental_decoding_equals_full_forward():
    """Prefill plus one token at a time through the static KV cache reproduces the full forward's logits."""
    for kw in ({}, {"n_kv_heads": 4}, {"use_scaled_rope": True, "rope_scale_factor": 32.0, "rope_theta": 5e5,
                                       "rope_original_max_seq_len": 16}, {"tie_word_embeddings": True}):
        model = tiny_model(n_layers=3, **kw)
        tokens = torch.randint(0, 32, (1, 20))
        with torch.no_grad():
            full = model(tokens)
            cache = ls.Cache(model, 20)
            steps = [model.head(model.run_blocks(model.tok_embeddings(tokens[:, :7]), 0, 3, 0, cache))]
            for t in range(7, 20):
                steps.append(model.head(model.run_blocks(model.tok_embeddings(tokens[:, t:t + 1]), 0, 3, t, cache)))
        torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-9, atol=1e-9)


def test_scaled_rope_matches_meta_reference():
    """Llama 3.1 frequency scaling equals Meta's apply_scaling loop, written out here."""
    args = ls.ModelArgs(dim=128, n_heads=1, rope_theta=5e5, use_scaled_rope=True, rope_scale_factor=32.0)
    base = 1.0 / (5e5 ** (torch.arange(0, 128, 2, dtype=torch.float64) / 128))
    expected = []
    for f in base.tolist():
        wavelen = 2 * math.pi / f
        if wavelen < 8192 / 4:
            expected.append(f)
        elif wavelen > 8192 / 1:
            expected.append(f / 32)
        else:
            s = (8192 / wavelen - 1) / (4 - 1)
            expected.append((1 - s) * f / 32 + s * f)
    torch.testing.assert_close(ls.rope_frequencies(args), torch.tensor(expected, dtype=torch.float32))
    assert ls.rope_frequencies(args)[-1] < base[-1].float() / 31  # the slowest frequency really was scaled


def test_feed_forward_sized_as_meta():
    """SwiGLU hidden size as in Meta's checkpoints: Llama 2 7B 11008, 70B 28672, Llama 3 8B 14336, 3.2 1B 8192."""
    with torch.device("meta"):
        for kw, expected in ((dict(dim=4096, multiple_of=256), 11008),
                             (dict(dim=8192, multiple_of=4096, ffn_dim_multiplier=1.3), 28672),
                             (dict(dim=4096, multiple_of=1024, ffn_dim_multiplier=1.3), 14336),
                             (dict(dim=2048, multiple_of=256, ffn_dim_multiplier=1.5), 8192)):
            assert ls.FeedForward(ls.ModelArgs(**kw)).w1.out_features == expected


def test_early_exit_is_the_shared_head_on_block_output():
    """Early exit at E runs blocks 0..E-1 then norm+output; E = L is the full model."""
    model = tiny_model(n_layers=4)
    prompt = torch.randint(0, 32, (10,)).tolist()
    full = ls.generate(model, prompt, 12, strategy="autoregressive")
    assert ls.generate(model, prompt, 12, strategy="early_exit", exit_layer=4).tokens == full.tokens
    for E in (1, 2, 3):
        out = ls.generate(model, prompt, 1, strategy="early_exit", exit_layer=E).tokens
        with torch.no_grad():
            h = model.run_blocks(model.tok_embeddings(torch.tensor([prompt])), 0, E)
            assert out == [int(model.output(model.norm(h[0, -1])).argmax())]


# ---------------------------------------------------------------------------------------------------------
# Self-speculative decoding


def test_self_speculative_greedy_equals_autoregressive():
    """Token for token, across random models x every exit 1..L-1 x d in 1, 2, 3, 5, 8 x prompt lengths, with
    max_new_tokens ending mid-round and with two stop ids (Llama 3 stops at <|end_of_text|> or <|eot_id|>): EOS
    inside a draft, accepted in a draft, and decoding ends at the first of them."""
    eos_inside_draft = eos_accepted_in_draft = 0
    for seed, L in enumerate((2, 3, 4, 6)):
        model = tiny_model(n_layers=L, seed=seed)
        for plen in (1, 5, 17):
            prompt = torch.randint(0, 32, (plen,), generator=torch.Generator().manual_seed(plen)).tolist()
            ar = ls.generate(model, prompt, 13).tokens
            assert len(ar) == 13
            stops = {ar[7], ar[10]}  # tokens the full model emits: AR stops at the first
            ar_eos = ls.generate(model, prompt, 13, eos_id=stops).tokens
            assert ar_eos == ar[:min(i for i, t in enumerate(ar) if t in stops) + 1]
            for E in range(1, L):
                for d in (1, 2, 3, 5, 8):
                    out = ls.generate(model, prompt, 13, strategy="self_speculative", exit_layer=E,
                                      num_speculations=d)
                    assert out.tokens == ar, (L, plen, E, d)
                    out = ls.generate(model, prompt, 13, strategy="self_speculative", exit_layer=E,
                                      num_speculations=d, eos_id=stops)
                    assert out.tokens == ar_eos, (L, plen, E, d, "eos")
                    for e in out.events:
                        eos_inside_draft += bool(stops & set(e.drafted))
                        eos_accepted_in_draft += bool(stops & set(e.drafted[:e.accepted]))
    assert eos_inside_draft > 0 and eos_accepted_in_draft > 0  # the EOS paths were really exercised


def test_cost_stop_rule_literals():
    """worth_drafting_on: draft on while P a_k (k r + 1) > r T, with a_i = c_i^gamma, P the product of the a_i and
    T = 1 + the sum of the running products. r = 0.15: after 0.9, 0.9 * 0.9 * 1.15 = 0.93 > 0.15 * 1.9 = 0.285
    (on); after 0.9, 0.5: 0.45 * 0.5 * 1.3 = 0.2925 < 0.15 * 2.35 = 0.3525 (stop); after 0.3: 0.1035 < 0.195 (stop)."""
    assert worth_drafting_on([0.9], 0.15)
    assert not worth_drafting_on([0.9, 0.5], 0.15)
    assert not worth_drafting_on([0.3], 0.15)
    assert worth_drafting_on([0.9, 0.5], 0.11)  # cheaper drafts: 0.2925 > 0.11 * 2.35 = 0.2585
    assert not worth_drafting_on([1.0] * 50, 1.0) and worth_drafting_on([1.0] * 50, 0.99)  # 51 > 50 * 1
    # calibrated, a = c^gamma: after 0.25 with gamma 0.5, a = 0.5: 0.5 * 0.5 * 1.15 = 0.2875 > 0.15 * 1.5 (on);
    # uncalibrated, 0.25 * 0.25 * 1.15 = 0.0719 < 0.15 * 1.25 (stop)
    assert worth_drafting_on([0.25], 0.15, gamma=0.5) and not worth_drafting_on([0.25], 0.15, gamma=1.0)


def test_stop_rules_draft_less_and_keep_the_output():
    """The confidence threshold drafts fewer tokens with a higher acceptance rate; the cost rule drafts fewer than
    a fixed d, more as drafts get cheaper (down to one a round at r = 1); both reproduce autoregressive output."""
    model = tiny_model(n_layers=6, seed=4, spread=40.0)  # sure drafts, so that the rules have something to weigh
    prompt = list(range(9))
    ar = ls.generate(model, prompt, 40).tokens
    spec = dict(strategy="self_speculative", exit_layer=2, num_speculations=8)
    fixed = ls.generate(model, prompt, 40, **spec)
    adaptive = ls.generate(model, prompt, 40, **spec, draft_threshold=0.9)
    assert fixed.tokens == adaptive.tokens == ar
    assert adaptive.drafted < fixed.drafted and adaptive.acceptance_rate > fixed.acceptance_rate
    drafted = []
    for r in (0.02, 0.3, 1.0):
        for E in range(1, 7):
            out = ls.generate(model, prompt, 40, **dict(spec, exit_layer=E), draft_cost=r)
            assert out.tokens == ar
            drafted += [out.drafted] if E == 2 else []
    assert fixed.drafted > drafted[0] > drafted[1] > drafted[2] == 37  # 37 rounds of one draft each


def test_self_speculative_respects_budget_and_context():
    """max_new_tokens ends mid-round exactly; generation stops cleanly at the context window."""
    model = tiny_model(n_layers=4, max_seq_len=30)
    prompt = list(range(5))
    for n in range(0, 12):
        out = ls.generate(model, prompt, n, strategy="self_speculative", exit_layer=2, num_speculations=5)
        assert len(out.tokens) == n
    ar = ls.generate(model, prompt, 1000)
    ss = ls.generate(model, prompt, 1000, strategy="self_speculative", exit_layer=1, num_speculations=8)
    assert len(ar.tokens) == 25 and ss.tokens == ar.tokens  # prompt + new tokens fill the 30 positions


def test_self_speculative_stats_and_stream():
    """Stats add up: every round emits accepted drafts plus at most one verifier token; the stream is the
    same rounds that generate() reports."""
    model = tiny_model(n_layers=6, seed=3)
    prompt = list(range(8))
    out = ls.generate(model, prompt, 40, strategy="self_speculative", exit_layer=4, num_speculations=4)
    assert out.rounds == len(out.events)
    assert out.drafted == sum(len(e.drafted) for e in out.events)
    assert len(out.tokens) == out.accepted + out.rounds
    assert 0 <= out.acceptance_rate <= 1 and out.tokens_per_round >= 1
    stream = list(ls.generate_stream(model, prompt, 40, Settings(strategy="self_speculative", exit_layer=4,
                                     num_speculations=4)))
    assert stream == out.events
    assert all(1 <= len(e.drafted) <= 4 and 0 <= e.accepted <= len(e.drafted) for e in stream[:-1])


def test_cache_reuse_every_block_processes_the_same_positions():
    """With the shared KV cache and the exit-state cache, every block sees each position once per round:
    prompt + (rounds - 1) + drafts in total, the same for early and late blocks. A naive draft-then-rerun
    would push the drafts through blocks 0..E-1 twice."""
    model, prompt = tiny_model(n_layers=6, seed=5), list(range(11))
    with block_inputs(model) as shapes:
        out = ls.generate(model, prompt, 30, strategy="self_speculative", exit_layer=2, num_speculations=5)
    counts = [sum(shape[1] for shape in calls) for calls in shapes]  # positions each block ran
    assert len(set(counts)) == 1, counts
    assert counts[0] == len(prompt) + out.rounds - 1 + out.drafted
    assert out.rounds < 30  # several tokens per round: drafts really were accepted


def chi_square(counts, expected_p):
    """Pearson's statistic of counts against N * expected_p over the cells expecting more than 5, and the 0.1%
    critical value for its degrees of freedom (the next tabulated df up, so the bound errs on the lenient side)."""
    e = counts.sum() * expected_p
    keep = e > 5
    stat = (((counts[keep] - e[keep]) ** 2) / e[keep]).sum().item()
    critical = {20: 45.31, 25: 52.62, 30: 59.70, 35: 66.62}
    return stat, critical[min(k for k in critical if k >= int(keep.sum()) - 1)]


def two_token_distribution(model, prompt, E, penalty=1.0):
    """The exact joint distribution of the next two tokens after prompt under exit E, [V * V], with a repetition
    penalty applied as the sampler applies it."""
    V = model.params.vocab_size
    p = torch.zeros(V, V, dtype=torch.float64)
    with torch.no_grad():
        def next_probs(ids):
            h = model.run_blocks(model.tok_embeddings(torch.tensor([ids])), 0, E)
            return torch.softmax(repetition_penalty(model.head(h[0, -1]), ids, penalty), -1)
        first = next_probs(prompt)
        for a in range(V):
            p[a] = first[a] * next_probs(prompt + [a])
    return p.flatten()


@pytest.mark.parametrize("case", ["plain", "repetition penalty", "rows of a batch"])
def test_speculative_sampling_keeps_the_full_models_distribution(case):
    """Temperature 1: the first two self-speculative tokens (drafted by exit 1 of 3) follow the full model's
    distribution: chi-square over 1,000 seeded samples under the 0.1% critical value. The negative control (the
    draft's distribution; for the penalty, the unpenalised one) is rejected by the same test. In a batch, rows of
    other lengths decode beside the counted ones, each row its own random stream."""
    V, prompt = 6, [1, 4, 2]
    model = tiny_model(n_layers=3, vocab_size=V, seed=12, spread=4.0)
    penalty = 8.0 if case == "repetition penalty" else 1.0
    p_full = two_token_distribution(model, prompt, 3, penalty)
    p_wrong = two_token_distribution(model, prompt, 3) if penalty != 1.0 else two_token_distribution(model, prompt, 1)
    assert 0.5 * (p_full - p_wrong).abs().sum() > 0.1  # the control really is another distribution
    spec = dict(strategy="self_speculative", exit_layer=1, num_speculations=3, temperature=1.0,
                repetition_penalty=penalty)
    counts = torch.zeros(V * V, dtype=torch.float64)
    for s in range(500 if case == "rows of a batch" else 1000):
        if case == "rows of a batch":
            rows = ls.generate(model, [prompt, [3], prompt, [0, 5, 5, 1, 2]], 2, seed=4 * s, **spec)
            samples = [rows[0].tokens, rows[2].tokens]
        else:
            samples = [ls.generate(model, prompt, 2, seed=s, **spec).tokens]
        for a, b in samples:
            counts[a * V + b] += 1
    stat, bound = chi_square(counts, p_full)
    assert stat < bound, (stat, bound)
    assert chi_square(counts, p_wrong)[0] > 3 * bound  # far past the 0.1% critical value


def test_top_k_top_p_filtering():
    """top-k keeps the k largest; top-p keeps the smallest prefix reaching p; the result is normalised."""
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    torch.testing.assert_close(ls.probabilities(logits, 1.0, top_k=2), torch.tensor([0.625, 0.375, 0, 0]))
    torch.testing.assert_close(ls.probabilities(logits, 1.0, top_p=0.8), torch.tensor([0.625, 0.375, 0, 0]))
    torch.testing.assert_close(ls.probabilities(logits, 1.0, top_p=0.81), torch.tensor([.5, .3, .15, 0]) / .95)
    torch.testing.assert_close(ls.probabilities(logits, 1.0, top_p=0.1), torch.tensor([1.0, 0, 0, 0]))


def test_sampling_is_reproducible_with_a_seed():
    """The same seed gives the same sampled text for every strategy; a tiny temperature stays a finite argmax."""
    model = tiny_model(n_layers=4)
    for strategy in STRATEGIES:
        kw = dict(strategy=strategy, exit_layer=2, num_speculations=3, temperature=0.8, top_p=0.9, top_k=20)
        a = ls.generate(model, [1, 2, 3], 20, seed=5, **kw).tokens
        assert a == ls.generate(model, [1, 2, 3], 20, seed=5, **kw).tokens
        assert a != ls.generate(model, [1, 2, 3], 20, seed=6, **kw).tokens
    logits = torch.tensor([3.0, 1.0, 2.0], dtype=torch.float32)  # logits / 1e-40 would overflow to inf - inf
    assert ls.probabilities(logits, 1e-40).tolist() == [1.0, 0.0, 0.0]


# ---------------------------------------------------------------------------------------------------------
# Logit lens


def test_logit_lens_layers_needed():
    """Every exit's top-1 equals the early-exit prediction; layers needed is the earliest exit after which the
    prediction never changes again."""
    model = tiny_model(n_layers=5, seed=2)
    tokens = torch.randint(0, 32, (15,)).tolist()
    lens = ls.logit_lens(model, tokens)
    assert lens.top1.shape == lens.prob.shape == (5, 15)
    for E in range(1, 6):
        h = model.run_blocks(model.tok_embeddings(torch.tensor([tokens])), 0, E)
        assert torch.equal(lens.top1[E - 1], model.head(h[0]).argmax(-1))
    for t in range(15):
        column = lens.top1[:, t].tolist()
        needed = next(E for E in range(1, 6) if all(c == column[-1] for c in column[E - 1:]))
        assert lens.layers_needed[t] == needed
    assert 1 <= lens.mean_layers_needed <= 5 and lens.layers_needed.max() > 1


# ---------------------------------------------------------------------------------------------------------
# Settings: every range checked once, when a Settings is made; prompts and exits when decoding starts


@pytest.mark.parametrize("kwargs, message", [
    (dict(strategy="beam"), r"unknown strategy 'beam'"),
    (dict(strategy="early_exit", exit_layer=0), r"exit_layer must be a whole number >= 1"),
    (dict(strategy="self_speculative", exit_layer=2), r"needs num_speculations"),
    (dict(temperature=0.001), r"temperature must be 0 or a number in \[0.01, 100\]"),
    (dict(top_p=float("nan")), r"top_p must be a number in \(0, 1\]"),
    (dict(draft_cost=0.2, draft_threshold=0.3), r"one stop rule"),
    (dict(repetition_penalty=1e-300), r"repetition_penalty must be a number in \[0.01, 100\]"),
    (dict(temperature=[0.5, 2.0]), r"temperature must be"),  # a list only for seed (one per prompt)
    (dict(seed=10**400), r"seed must be a whole number in \[0, 18446744073709551615\]"),
    (dict(eos_id="2"), r"eos_id must be a token id"),
])
def test_bad_settings(kwargs, message):
    """Each bad setting raises one ValueError naming the setting and its range (from RANGES), at Settings()."""
    with pytest.raises(ValueError, match=message):
        Settings(**kwargs)


def test_bad_input_is_refused_when_decoding_starts():
    """The exit past the model's L, an empty prompt and one that fills the context window are refused at the
    generate_stream call, before any round; a prompt one short of the window gets exactly one token."""
    model = tiny_model(n_layers=2, max_seq_len=16)
    for prompts, kw, message in (([1, 2], dict(strategy="early_exit", exit_layer=3), r"exit layer 3 .* use 1\.\.2"),
                                 ([], {}, "has 0 tokens: give 1 to 15"),
                                 (list(range(16)), {}, "has 16 tokens: give 1 to 15"),
                                 ([[1, 2], []], {}, "prompt 1 has 0 tokens"),
                                 ([[1], [2]], dict(seed=[1, 2, 3]), "one max_new_tokens and one seed per prompt")):
        with pytest.raises(ValueError, match=message):
            ls.generate_stream(model, prompts, 5, Settings(**kw))  # never iterated
    assert len(ls.generate(model, list(range(15)), 5).tokens) == 1
    with pytest.raises(TypeError, match="not both"):
        ls.generate(model, [1], 2, Settings(), strategy="early_exit")
    assert RANGES["draft_cost"].check("draft_cost", 0) == 0  # 0 = off, outside (0, 1]


def test_logits_processors_literals():
    """CTRL's repetition penalty divides a seen token's positive logit and multiplies a negative one; no-repeat
    n-gram bans exactly the tokens that would complete an n-gram already in the context."""
    logits = torch.tensor([2.0, -1.0, 0.5, 3.0, 0.0, 1.0])
    assert repetition_penalty(logits, [0, 1, 0], 2.0).tolist() == [1.0, -2.0, 0.5, 3.0, 0.0, 1.0]
    assert repetition_penalty(logits, [0, 1], 1.0).tolist() == logits.tolist()
    inf = float("-inf")
    # bigrams: context 5 1 2 1 ends in 1, and "1 2" was seen: 2 is banned
    assert no_repeat_ngram(logits, [5, 1, 2, 1], 2).tolist() == [2.0, -1.0, inf, 3.0, 0.0, 1.0]
    # trigrams: context 1 2 3 1 2 ends in "1 2", and "1 2 3" was seen: 3 is banned; "2 3 1" bans nothing here
    assert no_repeat_ngram(logits, [1, 2, 3, 1, 2], 3).tolist() == [2.0, -1.0, 0.5, inf, 0.0, 1.0]
    # 1-grams: every seen token; a context shorter than n bans nothing
    assert no_repeat_ngram(logits, [4, 0], 1).tolist() == [inf, -1.0, 0.5, 3.0, inf, 1.0]
    assert no_repeat_ngram(logits, [1, 2], 3).tolist() == logits.tolist()


def test_self_speculative_equals_autoregressive_under_logits_processors():
    """With a repetition penalty or no-repeat n-grams on, greedy self-speculative output still equals greedy
    autoregressive output under the same processor, at every exit and d; the processors really change the text,
    and no token that no-repeat n-grams emits completes an n-gram seen before it."""
    changed = 0
    for seed, L in enumerate((3, 4)):
        model = tiny_model(n_layers=L, vocab_size=8, seed=seed + 30)  # a small vocabulary loops quickly
        prompt = [1, 2, 3, 1, 2]
        plain = ls.generate(model, prompt, 24).tokens
        for kw in (dict(repetition_penalty=1.5), dict(no_repeat_ngram_size=2), dict(no_repeat_ngram_size=3),
                   dict(repetition_penalty=1.2, no_repeat_ngram_size=3)):
            ar = ls.generate(model, prompt, 24, **kw).tokens
            changed += ar != plain
            if kw.get("no_repeat_ngram_size"):
                n, seq = kw["no_repeat_ngram_size"], prompt + ar
                for end in range(len(prompt) + 1, len(seq) + 1):  # no generated token completes a seen n-gram
                    earlier = {tuple(seq[i:i + n]) for i in range(end - n)}
                    assert tuple(seq[end - n:end]) not in earlier, (kw, seq, end)
            for E in range(1, L):
                for d in (1, 2, 3, 5):
                    out = ls.generate(model, prompt, 24, strategy="self_speculative", exit_layer=E,
                                      num_speculations=d, **kw)
                    assert out.tokens == ar, (L, E, d, kw)
    assert changed >= 6  # of 8 settings: the processors bite

