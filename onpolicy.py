"""
On-policy text for the draft exit: the model's own greedy continuations of random training windows.

    python onpolicy.py --checkpoint checkpoints/layerskip-python-deep.pt --out data/python/onpolicy.bin
    python train.py ... --exit_always 4 --onpolicy_data data/python/onpolicy.bin   # fit exit 4 to them

Self-speculative decoding accepts a draft when the draft exit predicts what the last layer would write next, on
text the last layer itself wrote. Teacher-forced agreement on human-written files measures something else, and
the two can move apart: a fine-tuning phase that raised agreement on held-out files lowered acceptance in
decoding (README, "What moved it"). Training the draft exit on these continuations targets acceptance directly:
the next token of a greedy continuation is the last layer's argmax at that position (DistillSpec, Zhou et al.
2023, calls this on-policy distillation; the LayerSkip paper does not use it).

Each sample is a window of `--prefix` training tokens and `--new_tokens` greedy tokens (cut after an end of
text), decoded in batches with the KV cache; samples are written back to back as uint16, like train.bin, and
train.py reads random windows of them as it does of train.bin: a window can hold the end of one sample and the
human-written start of the next, as train.bin's windows can span two files.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

import layerskip as ls
from model_io import CheckpointError, SentencePieceTokenizer


@torch.inference_mode()
def greedy_continuations(model, prefixes: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """[B, P] token ids -> [B, new_tokens] greedy continuations by the last layer, all rows decoded together.
    Row b equals ls.generate(model, prefixes[b], new_tokens) (autoregressive, greedy, no EOS stop). Past the
    context window, model.rope raises a ValueError."""
    B, P = prefixes.shape
    L = model.params.n_layers
    cache = ls.Cache(model, P + new_tokens, batch=B)
    h = model.run_blocks(model.tok_embeddings(prefixes), 0, L, 0, cache)
    out = [model.head(h[:, -1]).argmax(-1)]
    for i in range(new_tokens - 1):
        h = model.run_blocks(model.tok_embeddings(out[-1][:, None]), 0, L, P + i, cache)
        out.append(model.head(h[:, -1]).argmax(-1))
    return torch.stack(out, 1)


def write_samples(model, train_tokens, samples, prefix, new_tokens, batch, seed, eos_id, progress=True):
    """`samples` continuations of random windows of train_tokens (a uint16 array), each cut after its first EOS,
    concatenated as uint16."""
    g = torch.Generator().manual_seed(seed)
    chunks, done, t0 = [], 0, time.time()
    while done < samples:
        b = min(batch, samples - done)
        starts = torch.randint(len(train_tokens) - prefix, (b,), generator=g).tolist()
        x = torch.stack([torch.from_numpy(train_tokens[s:s + prefix].astype(np.int64)) for s in starts])
        for row in torch.cat([x, greedy_continuations(model, x, new_tokens)], 1).numpy():
            ends = np.flatnonzero(row[prefix:] == eos_id)
            chunks.append(row[:prefix + ends[0] + 1] if len(ends) else row)
        done += b
        if progress:
            eta = (time.time() - t0) / done * (samples - done)
            print(f"\r  {done}/{samples} samples, ETA {eta:.0f} s  ", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return np.concatenate(chunks).astype(np.uint16)


def fail(message):
    print(f"onpolicy.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="checkpoints/layerskip-python-deep.pt", help="the model that writes")
    p.add_argument("--data", default="data/python", help="the training corpus whose windows start the samples")
    p.add_argument("--out", default="data/python/onpolicy.bin", help="where the tokens go (uint16)")
    p.add_argument("--samples", type=int, default=2048, help="number of continuations")
    p.add_argument("--prefix", type=int, default=64, help="training tokens before each continuation")
    p.add_argument("--new_tokens", type=int, default=192, help="greedy tokens per continuation")
    p.add_argument("--batch", type=int, default=128, help="continuations decoded together")
    p.add_argument("--seed", type=int, default=1, help="seed of the window positions")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.error = fail
    args = p.parse_args(argv)
    if min(args.samples, args.prefix, args.new_tokens, args.batch) < 1:
        fail("--samples, --prefix, --new_tokens and --batch must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model, tokenizer = ls.load_model(args.checkpoint)
    except (CheckpointError, ValueError) as e:
        fail(str(e))
    if args.prefix + args.new_tokens > model.params.max_seq_len:
        fail(f"--prefix {args.prefix} + --new_tokens {args.new_tokens} pass the model's context window of "
             f"{model.params.max_seq_len}: use fewer")
    train_bin, tok_file = Path(args.data) / "train.bin", Path(args.data) / "tokenizer.model"
    if not (train_bin.exists() and tok_file.exists()):
        fail(f"{args.data} is not prepared: build it with `python {Path(args.data) / 'prepare.py'}`")
    if getattr(tokenizer, "model_proto", None) != SentencePieceTokenizer.from_file(tok_file).model_proto:
        fail(f"{args.checkpoint} uses another tokenizer than {args.data}: give the corpus it was trained on")
    tokens = np.memmap(train_bin, dtype=np.uint16, mode="r")
    if len(tokens) <= args.prefix:
        fail(f"{train_bin} has {len(tokens)} tokens, too few for a prefix of {args.prefix}")
    t0 = time.time()
    out = write_samples(model, tokens, args.samples, args.prefix, args.new_tokens, args.batch, args.seed,
                        tokenizer.eos_id)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, out.tofile)
    meta = dict(vars(args), tokens=int(len(out)), seconds=round(time.time() - t0, 1))
    atomic_write(path.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(meta, indent=1) + "\n"))
    print(f"wrote {path}: {len(out):,} tokens ({args.samples} samples) in {time.time() - t0:.0f} s")


def atomic_write(path, write):
    """write(tmp) beside path, then rename it over path: a cut run leaves no half-written file under that name."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    tmp.replace(path)


if __name__ == "__main__":
    main()
