"""
A real code corpus with nothing to download: the Python standard library.

    python data/python/prepare.py

reads every .py file of the running interpreter's standard library (tests and
site-packages excluded), trains a BPE tokenizer on it and writes, next to this file:

    tokenizer.model / tokenizer.vocab, train.bin, val.bin, meta.json

One file = one document. About 5% of the files (chosen by a hash of their path,
so the choice is the same on every machine) go to val.bin.

The benchmark prompts (OpenAI HumanEval, data/python/humaneval.jsonl.gz) are NOT
in the standard library, so they can never leak into training; see README.md.
"""

import argparse
import hashlib
import os
import sys
import sysconfig
import time

# make `import data.prepare` work when run as `python data/python/prepare.py`
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO_ROOT)
from data.prepare import build_corpus  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
TEST_DIRS = {"test", "tests", "idle_test"}  # any folder with one of these names is skipped


def is_val(relpath, val_percent=5):
    """Deterministic split: a file is in val if the hash of its path lands in the first val_percent %."""
    digest = hashlib.sha256(relpath.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % 100 < val_percent


def stdlib_files(root):
    """Sorted relative paths of the .py files under root, minus tests and site-packages."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        # prune in place so os.walk never descends into these folders
        dirnames[:] = [d for d in dirnames
                       if d not in TEST_DIRS and d not in ("site-packages", "dist-packages", "__pycache__")]
        for name in filenames:
            if name.endswith(".py") and not name.startswith("test_"):
                found.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(found)


def read_documents(root, relpaths):
    """Read files as UTF-8; skip the few that are not (and say how many)."""
    docs, skipped = {}, 0
    for rel in relpaths:
        try:
            with open(os.path.join(root, rel), encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError:
            skipped += 1
            continue
        if text.strip():
            docs[rel] = text
    return docs, skipped


def main():
    parser = argparse.ArgumentParser(description="Tokenize the Python standard library into data/python/*.bin.")
    parser.add_argument("--vocab_size", type=int, default=4096, help="tokenizer vocabulary size. Default 4096")
    parser.add_argument("--val_percent", type=int, default=5,
                        help="percent of files (picked by path hash) held out as val.bin. Default 5")
    parser.add_argument("--stdlib", default=sysconfig.get_paths()["stdlib"],
                        help="standard library folder to read. Default: the running interpreter's")
    parser.add_argument("--out_dir", default=HERE, help="where to write the outputs. Default: data/python/")
    args = parser.parse_args()

    t0 = time.time()
    docs, skipped = read_documents(args.stdlib, stdlib_files(args.stdlib))
    n_chars = sum(len(t) for t in docs.values())
    n_bytes = sum(len(t.encode("utf-8")) for t in docs.values())
    print(f"{len(docs)} files, {n_bytes / 1e6:.1f} MB of source from {args.stdlib} "
          f"({skipped} skipped: not UTF-8)")

    train_docs = [t for rel, t in docs.items() if not is_val(rel, args.val_percent)]
    val_docs = [t for rel, t in docs.items() if is_val(rel, args.val_percent)]

    meta = build_corpus(args.out_dir, train_docs, val_docs, args.vocab_size, {  # tokenizer sees train files only
        "source": f"Python {sys.version.split()[0]} standard library .py files, tests excluded",
        "train_files": len(train_docs),
        "val_files": len(val_docs),
        "source_bytes": n_bytes,
        "source_chars": n_chars,
    })
    print(f"train {meta['train_tokens']:,} tokens ({len(train_docs)} files), "
          f"val {meta['val_tokens']:,} tokens ({len(val_docs)} files), "
          f"{n_chars / (meta['train_tokens'] + meta['val_tokens']):.2f} chars/token, "
          f"{time.time() - t0:.1f}s total")


if __name__ == "__main__":
    main()
