"""Fast checks of the data pipeline (data/prepare.py and the prompt sets). Run: python -m pytest tests/test_data.py"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)  # so `import data.prepare` works however pytest is started

from data.prepare import encode_documents, load_prompts, load_tokenizer, train_tokenizer  # noqa: E402

PYTHON_SNIPPET = '''import os


class Greeter:
    """Say hello."""

    def __init__(self, name):
        self.name = name  # two spaces before the comment

\tdef tabbed(self):
\t\treturn "tab-indented"


def main():
    for i in range(10):
        if i % 2 == 0:
            print(Greeter(str(i)).name)

        else:
            pass
'''

# a few KB of mixed code and prose to train tiny tokenizers on
TRAIN_TEXTS = [PYTHON_SNIPPET * 4,
               "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 30]


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    """A 400-piece tokenizer trained in a temp dir (byte fallback alone takes 259 ids)."""
    path = str(tmp_path_factory.mktemp("tok") / "tiny.model")
    train_tokenizer(TRAIN_TEXTS, path, vocab_size=400)
    return path


def test_llama2_id_layout(tiny_tokenizer):
    """Special ids follow Llama 2: unk=0 '<unk>', bos=1 '<s>', eos=2 '</s>', no pad (-1)."""
    sp = load_tokenizer(tiny_tokenizer)
    assert sp.unk_id() == 0 and sp.id_to_piece(0) == "<unk>"
    assert sp.bos_id() == 1 and sp.id_to_piece(1) == "<s>"
    assert sp.eos_id() == 2 and sp.id_to_piece(2) == "</s>"
    assert sp.pad_id() == -1
    assert sp.vocab_size() == 400


def test_exact_round_trip_of_code(tiny_tokenizer):
    """encode->decode gives back Python source exactly: indentation, tabs, blank lines, unseen characters."""
    sp = load_tokenizer(tiny_tokenizer)
    for text in [PYTHON_SNIPPET, "  leading spaces\n\n\n\ttab\ttab  \n", "naïve café ☃ 😀 \r\n", "\n"]:
        ids = sp.encode(text)
        assert sp.decode(ids) == text
        assert sp.unk_id() not in ids  # byte fallback, never <unk>


def test_encode_documents_adds_bos_and_eos(tiny_tokenizer):
    """Each document becomes [bos] + its ids + [eos], concatenated into one uint16 array."""
    sp = load_tokenizer(tiny_tokenizer)
    docs = ["def f():\n    return 1\n", "x = 2\n"]
    ids = encode_documents(tiny_tokenizer, docs)
    expected = []
    for d in docs:
        expected += [1] + sp.encode(d) + [2]
    assert ids.dtype == np.uint16
    assert ids.tolist() == expected


def test_cli_writes_bins_with_all_tokens(tmp_path):
    """`data/prepare.py --input` writes train/val bins + meta.json holding exactly the encoded documents."""
    docs = [TRAIN_TEXTS[1]] + [f"# file {i}\n" + PYTHON_SNIPPET for i in range(1, 10)]
    for i, d in enumerate(docs):
        (tmp_path / f"doc{i}.txt").write_text(d, encoding="utf-8")  # doc0.txt ... doc9.txt: sorted order
    out = tmp_path / "out"
    subprocess.run([sys.executable, os.path.join(REPO_ROOT, "data", "prepare.py"),
                    "--input", str(tmp_path / "*.txt"), "--out_dir", str(out),
                    "--vocab_size", "400", "--val_fraction", "0.2"], check=True, capture_output=True)
    train = np.fromfile(out / "train.bin", dtype=np.uint16)
    val = np.fromfile(out / "val.bin", dtype=np.uint16)
    expected = encode_documents(str(out / "tokenizer.model"), docs)  # files are read in sorted order
    assert np.array_equal(np.concatenate([train, val]), expected)
    assert len(val) > 0 and val[0] == 1  # val starts at a document boundary (bos)
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["train_tokens"], meta["val_tokens"]) == (len(train), len(val))
    assert meta["vocab_size"] == 400 and meta["tokenizer"] == "tokenizer.model"


@pytest.mark.parametrize("make_input", ["no_match", "empty_files"])
def test_cli_bad_input_is_one_line_error(tmp_path, make_input):
    """A glob with no matches, or only empty files, exits with code 2 and one line on stderr, no traceback."""
    if make_input == "empty_files":
        (tmp_path / "a.txt").write_text("  \n\n", encoding="utf-8")
    result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "data", "prepare.py"),
                             "--input", str(tmp_path / "*.txt"), "--out_dir", str(tmp_path / "out")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("error: ")


def test_humaneval_prompts():
    """load_prompts('humaneval') returns the 164 HumanEval prompts, in task order."""
    prompts = load_prompts("humaneval")
    assert len(prompts) == 164
    assert prompts[0].startswith("from typing import List")
    assert "def has_close_elements" in prompts[0]
    assert all(isinstance(p, str) and "def " in p for p in prompts)


def test_shakespeare_prompts_are_held_out():
    """load_prompts('shakespeare') gives 50 distinct 3-6 line passages, all from validation works only."""
    from data.shakespeare.prepare import split_works
    prompts = load_prompts("shakespeare")
    assert len(prompts) == len(set(prompts)) == 50
    assert all(3 <= len(p.splitlines()) <= 6 and p.endswith("\n") for p in prompts)
    train, val = split_works()
    train_text, val_text = "\f".join(train), "\f".join(val)
    assert all(p in val_text and p not in train_text for p in prompts)
