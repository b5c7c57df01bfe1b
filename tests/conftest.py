"""Shared fixtures, one per model and corpus: tiny_model (a random float64 Llama, in memory), tiny_tokenizer and
tiny_checkpoint (a random model with a real sentencepiece tokenizer, on disk), shakespeare (the shipped corpus,
tokenized). All made in seconds, without network."""

import sys
from pathlib import Path

import contextlib
import subprocess

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import layerskip as ls  # noqa: E402
from model_io import SentencePieceTokenizer, save_checkpoint  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread_for_the_method_tier(request):
    """`pytest -m method` runs tiny models, which one torch thread runs faster and steadier than two; every test
    gets back the thread count it started with (a script's --threads does not leak into the next test)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if request.node.get_closest_marker("method") else threads)
    yield
    torch.set_num_threads(threads)


def tiny_model(n_layers=4, vocab_size=32, dim=32, n_heads=4, n_kv_heads=2, max_seq_len=64, seed=0,
               dtype=torch.float64, spread=4.0, **kw) -> ls.Transformer:
    """A random Llama whose logits are spread out (so greedy choices are far from ties), in float64 by default
    so that batched verification and one-token drafting agree to the last bit that matters."""
    torch.manual_seed(seed)
    args = ls.ModelArgs(dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
                        vocab_size=vocab_size, multiple_of=16, max_seq_len=max_seq_len, **kw)
    model = ls.Transformer(args).to(dtype).eval()
    with torch.no_grad():
        model.output.weight.mul_(spread)
        for layer in model.layers:  # stronger residual updates: deeper blocks really change the prediction
            layer.attention.wo.weight.mul_(8)
            layer.feed_forward.w2.weight.mul_(8)
    return model


@contextlib.contextmanager
def block_inputs(model):
    """While inside: the input shape [B, T, dim] of every call of every block, shapes[l] being block l's calls (counts
    of work: which rows and how many positions each block really ran)."""
    shapes = [[] for _ in model.layers]
    handles = [layer.register_forward_hook(lambda module, args, out, l=l: shapes[l].append(tuple(args[0].shape)))
               for l, layer in enumerate(model.layers)]
    try:
        yield shapes
    finally:
        for h in handles:
            h.remove()


@pytest.fixture(scope="session")
def shakespeare():
    """The shipped Shakespeare corpus folder, tokenized (about a second the first time; the bins are not committed)."""
    folder = ROOT / "data/shakespeare"
    if not (folder / "train.bin").exists():
        subprocess.run([sys.executable, "data/shakespeare/prepare.py"], cwd=ROOT, check=True, capture_output=True)
    return folder


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    """A 600-piece BPE tokenizer trained on the first 200 KB of the shipped Shakespeare text."""
    from data.prepare import train_tokenizer
    text = (ROOT / "data/shakespeare/input.txt").read_text()[:200_000]
    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    train_tokenizer([text], str(path), vocab_size=600)
    return SentencePieceTokenizer.from_file(path)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_tokenizer):
    """Path of a random 4-layer checkpoint (fp32) that pairs a model with tiny_tokenizer."""
    torch.manual_seed(0)
    args = ls.ModelArgs(dim=64, n_layers=4, n_heads=4, n_kv_heads=2, vocab_size=tiny_tokenizer.vocab_size,
                        multiple_of=32, max_seq_len=256)
    model = ls.Transformer(args)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, model, tiny_tokenizer)
    return path


def assert_one_line_error(main, argv, capsys, match: str) -> str:
    """main(argv) of a script stops with exit code 2 and exactly one line on stderr that contains `match` (no
    traceback, no usage block). Returns that line. In-process, so a table of bad inputs costs milliseconds each."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert stop.value.code == 2, f"exit code {stop.value.code} for {argv}: {err}"
    assert err.count("\n") == 1 and ": error: " in err, f"not one line for {argv}: {err!r}"
    assert match in err, f"{match!r} not in {err!r}"
    return err.strip()
