"""Shared fixtures: a tiny checkpoint with a real sentencepiece tokenizer, made in seconds without network."""

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import layerskip as ls  # noqa: E402
from model_io import SentencePieceTokenizer, save_checkpoint  # noqa: E402


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
