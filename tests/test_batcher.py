"""batcher.py: requests that arrive together decode as one batch, each client gets exactly its own text, a full
waiting line is refused with Busy, and bad settings are refused at submit."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import layerskip as ls
from batcher import Batcher, Busy
from conftest import tiny_model
from settings import Settings


def test_concurrent_clients_each_get_their_own_text():
    """32 clients at once (greedy AR, greedy and seeded sampled self-speculative) each get their prompt's text alone."""
    model = tiny_model(n_layers=6, seed=9)
    g = torch.Generator().manual_seed(9)
    prompts = [torch.randint(0, 32, (int(n),), generator=g).tolist() for n in torch.randint(1, 12, (32,), generator=g)]
    speculative = dict(strategy="self_speculative", exit_layer=2, num_speculations=4)
    settings = [[Settings(), Settings(**speculative), Settings(**speculative, temperature=0.8, seed=b)][b % 3]
                for b in range(32)]
    batcher = Batcher(batch_size=8, max_waiting=64)
    start = threading.Barrier(32)

    def client(b):
        start.wait()
        return [t for e, _ in batcher.submit(model, prompts[b], 10 + b % 7, settings[b]) for t in e.tokens]

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(client, range(32)))
    assert results == [ls.generate(model, p, 10 + b % 7, settings[b]).tokens for b, p in enumerate(prompts)]
    assert batcher.batches < 32 and 1 < batcher.largest <= 8


def test_full_line_is_busy_and_bad_settings_fail_at_submit():
    model = tiny_model(n_layers=2)
    batcher = Batcher(batch_size=1, max_waiting=1)
    with pytest.raises(ValueError, match="exit layer 9 is out of range"):
        batcher.submit(model, [1, 2], 4, Settings(strategy="early_exit", exit_layer=9))
    with pytest.raises(ValueError, match="give one seed"):  # a list of seeds would kill the worker's batch
        batcher.submit(model, [1, 2], 4, Settings(seed=[5]))
    with batcher.lock:  # hold the worker off while the line fills
        batcher.waiting.append(object())
        with pytest.raises(Busy, match="busy"):
            batcher.submit(model, [1, 2], 4)
        batcher.waiting.clear()
    assert [t for e, _ in batcher.submit(model, [1, 2], 4) for t in e.tokens] == ls.generate(model, [1, 2], 4).tokens


def test_a_round_counts_when_it_was_decoded_not_when_it_was_read():
    """A slow reader sees the batch's decoding time: reading every round takes less than the seconds they report."""
    model, batcher = tiny_model(n_layers=6), Batcher(batch_size=2, max_waiting=4)
    speculative = Settings(strategy="self_speculative", exit_layer=2, num_speculations=3)
    stream = batcher.submit(model, [1, 2, 3], 40, speculative)
    time.sleep(1.0)
    t0 = time.perf_counter()
    seconds = [s for _, s in stream]
    read = time.perf_counter() - t0
    assert seconds == sorted(seconds) and read < seconds[-1] < 1.0
