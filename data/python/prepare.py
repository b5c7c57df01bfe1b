"""
A real code corpus with nothing to download: Python source that is already on this machine.

    python data/python/prepare.py                 # the standard library + the installed torch package
    python data/python/prepare.py --stdlib_only   # the standard library alone (the 12-layer models' corpus)

reads every .py file of the running interpreter's standard library and, by default, of the installed
`torch` package (folders named test/tests/testing/idle_test, files named test_*.py and site-packages
excluded), trains a BPE tokenizer on the training files and writes, next to this file:

    tokenizer.model / tokenizer.vocab, train.bin, val.bin, meta.json

One file = one document, in a fixed order (sorted by source, then path). About 5% of the files (chosen by a
hash of their source and path, so the choice is the same on every machine) go to val.bin.

The benchmark prompts (OpenAI HumanEval, data/python/humaneval.jsonl.gz) are kept out of training: any file
that contains one of HumanEval's function signatures is dropped (none does today; the check makes sure).
"""

import argparse
import gzip
import hashlib
import json
import os
import sys
import sysconfig
import time

# make `import data.prepare` work when run as `python data/python/prepare.py`
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
from data.prepare import build_corpus, check_out_dir, check_vocab_size, fail  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
TEST_DIRS = {"test", "tests", "testing", "idle_test"}  # any folder with one of these names is skipped
SKIP_DIRS = TEST_DIRS | {"site-packages", "dist-packages", "__pycache__"}
DEFAULT_VOCAB = 2048  # small enough that the head costs less than a block at dim ~128-192


def is_val(relpath, val_percent=5):
    """Deterministic split: a file is in val if the hash of its path lands in the first val_percent %."""
    digest = hashlib.sha256(relpath.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % 100 < val_percent


def python_files(root):
    """Sorted relative paths of the .py files under root, minus tests and site-packages."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]  # prune: os.walk never descends into these
        for name in filenames:
            if name.endswith(".py") and not name.startswith("test_"):
                found.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(found)


def sources(stdlib_only=False):
    """[(name, root folder)] of the corpus, in corpus order: the standard library, then torch."""
    roots = [("stdlib", sysconfig.get_paths()["stdlib"])]
    if not stdlib_only:
        import importlib.util
        spec = importlib.util.find_spec("torch")
        if spec is None or not spec.submodule_search_locations:
            fail("torch is not installed, so its source cannot join the corpus: install it or pass --stdlib_only")
        roots.append(("torch", list(spec.submodule_search_locations)[0]))
    return roots


def humaneval_signatures():
    """The full `def` line of every HumanEval problem's entry point, e.g.
    'def has_close_elements(numbers: List[float], threshold: float) -> bool:': a file holding one would leak
    the prompts into training."""
    with gzip.open(os.path.join(HERE, "humaneval.jsonl.gz"), "rt", encoding="utf-8") as f:
        problems = [json.loads(line) for line in f if line.strip()]
    return [next(line.strip() for line in p["prompt"].splitlines()
                 if line.lstrip().startswith(f"def {p['entry_point']}(")) for p in problems]


def read_documents(root, relpaths, banned=()):
    """{relpath: text} of the UTF-8 files, minus those containing a banned string; and the numbers skipped."""
    docs, not_utf8, leaked = {}, 0, 0
    for rel in relpaths:
        try:
            with open(os.path.join(root, rel), encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError:
            not_utf8 += 1
            continue
        if any(b in text for b in banned):
            leaked += 1
            continue
        if text.strip():
            docs[rel] = text
    return docs, not_utf8, leaked


def collect(roots, banned=()):
    """Every document of every source, keyed 'source/relpath' in corpus order; and a line saying what was read."""
    docs, lines = {}, []
    for name, root in roots:
        found, not_utf8, leaked = read_documents(root, python_files(root), banned)
        # stdlib files keep their bare path as key, so that the --stdlib_only split is the one the 12-layer
        # models were trained with
        docs.update({(rel if name == "stdlib" else f"{name}/{rel}"): text for rel, text in found.items()})
        size = sum(len(t.encode("utf-8")) for t in found.values())
        lines.append(f"{name}: {len(found)} files, {size / 1e6:.1f} MB from {root} "
                     f"({not_utf8} not UTF-8, {leaked} with a HumanEval signature: skipped)")
    return docs, lines


def val_documents(stdlib_only=False, val_percent=5):
    """The held-out documents as text (eval.py encodes them with each checkpoint's own tokenizer)."""
    docs, _ = collect(sources(stdlib_only), humaneval_signatures())
    return [t for key, t in docs.items() if is_val(key, val_percent)]


def build(out_dir=HERE, vocab_size=DEFAULT_VOCAB, stdlib_only=False, val_percent=5):
    t0 = time.time()
    roots = sources(stdlib_only)
    docs, lines = collect(roots, humaneval_signatures())
    print("\n".join(lines))
    train_docs = [t for key, t in docs.items() if not is_val(key, val_percent)]
    val_docs = [t for key, t in docs.items() if is_val(key, val_percent)]
    n_bytes = sum(len(t.encode("utf-8")) for t in docs.values())
    try:
        meta = build_corpus(out_dir, train_docs, val_docs, vocab_size, {  # the tokenizer sees train files only
            "source": f"Python {sys.version.split()[0]} " + " + ".join(n for n, _ in roots)
                      + " .py files, tests excluded",
            "train_files": len(train_docs), "val_files": len(val_docs), "source_bytes": n_bytes,
        })
    except ValueError as e:  # a vocabulary too small for the text's characters
        fail(str(e))
    print(f"train {meta['train_tokens']:,} tokens ({len(train_docs)} files), val {meta['val_tokens']:,} tokens "
          f"({len(val_docs)} files), {n_bytes / (meta['train_tokens'] + meta['val_tokens']):.2f} bytes/token, "
          f"{time.time() - t0:.1f}s total")
    return meta


def main(argv=None):
    parser = argparse.ArgumentParser(description="Tokenize local Python source into data/python/*.bin.")
    parser.add_argument("--vocab_size", type=int, default=DEFAULT_VOCAB,
                        help=f"tokenizer vocabulary size. Default {DEFAULT_VOCAB}")
    parser.add_argument("--stdlib_only", action="store_true",
                        help="the standard library alone (~3.5M tokens), without the torch package's source")
    parser.add_argument("--val_percent", type=int, default=5,
                        help="percent of files (picked by path hash) held out as val.bin. Default 5")
    parser.add_argument("--out_dir", default=HERE, help="where to write the outputs. Default: data/python/")
    parser.error = lambda message: fail(f"{message} (see --help)")  # one line, not argparse's usage block
    args = parser.parse_args(argv)
    check_vocab_size(args.vocab_size)
    if not 1 <= args.val_percent <= 50:
        fail(f"--val_percent must be 1..50 (both splits need files), got {args.val_percent}")
    check_out_dir(args.out_dir)
    build(args.out_dir, args.vocab_size, args.stdlib_only, args.val_percent)


if __name__ == "__main__":
    main()
