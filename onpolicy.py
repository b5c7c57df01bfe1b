"""
On-policy text for the draft exit: the model's own greedy continuations of random training windows.

    python onpolicy.py --checkpoint checkpoints/layerskip-python-deep.pt --out data/python/onpolicy.bin
    python train.py ... --exit_always 4 --onpolicy_data data/python/onpolicy.bin   # fit exit 4 to them

Self-speculative decoding accepts a draft when the draft exit predicts what the last layer would write next, on
text the last layer itself wrote. Teacher-forced agreement on human-written files measures something else, and
the two can move apart: a fine-tuning phase that raised agreement on held-out files lowered acceptance in
decoding (experiments/history.md, "What moved the speedup"). Training the draft exit on these continuations
targets acceptance directly: the next token of a greedy continuation is the last layer's argmax at that position
(DistillSpec, Zhou et al. 2023, calls this on-policy distillation; the LayerSkip paper does not use it).

Each sample is a window of `--prefix` training tokens and `--new_tokens` greedy tokens (cut after an end of
text), decoded in batches with the KV cache; samples are written back to back as uint16, like train.bin, and
train.py reads random windows of them as it does of train.bin: a window can hold the end of one sample and the
human-written start of the next, as train.bin's windows can span two files. The .json beside the tokens lists
where each sample starts, for `train.py --onpolicy_aligned` (windows that start with a sample, and a loss on its
greedy tokens only).

The second half of this file is what train.py takes from it: the --onpolicy_* flags, the text read back (random
windows, or whole samples), and exit E's loss on it, cross-entropy or a distance from the last layer's distribution.
"""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

import layerskip as ls
from common import ArgumentParser, device_memory, fail, float_range, fmt_bytes, int_range
from data import prepare as corpus
from model_io import SentencePieceTokenizer, atomic_write, load_model


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
    """`samples` continuations of random windows of train_tokens (a uint16 array), each cut after its first EOS:
    (the samples concatenated as uint16, the offset where each sample starts)."""
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
    starts = np.cumsum([0] + [len(c) for c in chunks[:-1]])
    return np.concatenate(chunks).astype(np.uint16), starts


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", default="checkpoints/layerskip-python-deep.pt", help="the model that writes")
    p.add_argument("--data", default="data/python", help="the training corpus whose windows start the samples")
    p.add_argument("--out", default="data/python/onpolicy.bin",
                   help="where the tokens go (uint16), with what made them beside it (.json)")
    p.add_argument("--samples", type=int_range(1, 10**7), default=2048, help="number of continuations")
    p.add_argument("--prefix", type=int_range(1, 2**20), default=64, help="training tokens before each continuation")
    p.add_argument("--new_tokens", type=int_range(1, 2**20), default=192, help="greedy tokens per continuation")
    p.add_argument("--batch", type=int_range(1, 65536), default=128, help="continuations decoded together")
    p.add_argument("--seed", type=int_range(0, 2**63 - 1), default=1, help="seed of the window positions")
    p.add_argument("--threads", type=int_range(1, os.cpu_count() or 1), help="torch CPU threads (default: torch's)")
    return p.parse_args(argv)


def check_out(out: Path):
    """--out can be written: a file (not a folder) whose folder exists or can be made, and whose .json sidecar is
    another file."""
    if out.is_dir():
        fail(f"--out {out} is a folder: give a file name, e.g. {out / 'onpolicy.bin'}")
    if out.suffix == ".json":
        fail(f"--out {out}: the tokens' description goes to the .json beside them: give a .bin name")
    nearest = next(p for p in out.absolute().parents if p.exists())
    if not nearest.is_dir():
        fail(f"--out {out}: {nearest} is a file, not a folder: give another --out")
    if not os.access(nearest, os.W_OK):
        fail(f"--out {out}: {nearest} is not writable: give another --out")


def load_training_tokens(data: str, tokenizer, checkpoint: str, prefix: int) -> np.ndarray:
    """train.bin of the corpus --data, checked: prepared, tokenized as the model's, longer than one prefix."""
    folder = Path(data)
    train_bin, tok_file = folder / "train.bin", folder / "tokenizer.model"
    if folder.is_file():
        fail(f"--data {data} is a file: give the folder of a corpus written by its prepare.py")
    build = (f"python {folder / 'prepare.py'}" if (folder / "prepare.py").is_file()
             else f"python data/prepare.py --input ... --out_dir {data}")
    if not (train_bin.is_file() and tok_file.is_file()):
        fail(f"{data} is not prepared: build it with `{build}`")
    try:
        theirs = SentencePieceTokenizer.from_file(tok_file).model_proto
        tokens = np.memmap(train_bin, dtype=np.uint16, mode="r")
    except (OSError, RuntimeError, ValueError) as e:  # an empty, odd-sized or unreadable file
        fail(f"{data} is damaged ({type(e).__name__}): rebuild it with `{build}`")
    if getattr(tokenizer, "model_proto", None) != theirs:
        fail(f"{checkpoint} uses another tokenizer than {data}: give the corpus it was trained on")
    if len(tokens) <= prefix:
        fail(f"{train_bin} has {len(tokens)} tokens, too few for a prefix of {prefix}")
    return tokens


def check_fits(model, args):
    """The continuations fit the context window, and the KV cache of one batch fits the machine's memory."""
    p = model.params
    if args.prefix + args.new_tokens > p.max_seq_len:
        fail(f"--prefix {args.prefix} + --new_tokens {args.new_tokens} pass the model's context window of "
             f"{p.max_seq_len}: use fewer")
    per_position = 2 * p.n_layers * (p.n_kv_heads or p.n_heads) * p.head_dim + p.dim  # keys, values, exit state
    cache = args.batch * (args.prefix + args.new_tokens) * per_position * model.tok_embeddings.weight.element_size()
    have = device_memory("cpu")
    if have and cache > have:
        fail(f"--batch {args.batch}: its KV cache needs {fmt_bytes(cache)}, more than this machine's "
             f"{fmt_bytes(have)}: use a smaller --batch")


def main(argv=None):
    args = parse_args(argv)
    path = Path(args.out)
    check_out(path)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model, tokenizer = load_model(args.checkpoint)
    except (OSError, ValueError) as e:  # CheckpointError is a ValueError
        fail(f"--checkpoint: {e}")
    check_fits(model, args)
    tokens = load_training_tokens(args.data, tokenizer, args.checkpoint, args.prefix)
    t0 = time.time()
    out, starts = write_samples(model, tokens, args.samples, args.prefix, args.new_tokens, args.batch, args.seed,
                                tokenizer.eos_id)
    atomic_write(path, lambda f: f.write(out.tobytes()))  # makes the folder too
    meta = dict(vars(args), tokens=int(len(out)), seconds=round(time.time() - t0, 1), starts=starts.tolist())
    atomic_write(path.with_suffix(".json"), lambda f: f.write((json.dumps(meta, indent=1) + "\n").encode()))
    print(f"wrote {path}: {len(out):,} tokens ({args.samples} samples) in {time.time() - t0:.0f} s")


# ---------------------------------------------------------------------------------------------------------
# Training on the text: train.py --exit_always E --onpolicy_data FILE adds exit E's loss on a micro-batch of it
# to every micro-batch's loss. Exit E runs blocks 0..E-1 only; the blocks after E get no gradient from it.

DEFAULTS = dict(onpolicy_data=None, onpolicy_weight=1.0, onpolicy_loss="ce", onpolicy_aligned=False)  # train.py's
LOSSES = ("ce", "kl", "tvd")


def add_train_flags(group):
    """train.py's --onpolicy_* flags, in their own group of its --help."""
    group.add_argument("--onpolicy_data", metavar="FILE",
                       help="also fit exit --exit_always to the model's own greedy text in FILE (written by "
                            "onpolicy.py): each micro-batch adds a window of it, through the first E blocks only")
    group.add_argument("--onpolicy_weight", type=float_range(0, 100), metavar="W",
                       help="weight of that loss (default 1.0)")
    group.add_argument("--onpolicy_loss", choices=LOSSES,
                       help="ce: cross-entropy on the greedy tokens (default); kl / tvd: distance from the last "
                            "layer's full distribution on that text, KL(last || exit) or total variation (DistillSpec)")
    group.add_argument("--onpolicy_aligned", action="store_true",
                       help="on-policy windows start where a sample starts, and only its greedy tokens count")


def remedy(cfg) -> str:
    return f"write it with `python onpolicy.py --out {cfg.onpolicy_data}`"


def check_train_flags(cfg, distributed: bool):
    """The --onpolicy_* flags of train.py agree with each other, --exit_always and the processes; the file exists."""
    if cfg.onpolicy_data and cfg.exit_always is None:
        fail("--onpolicy_data trains the draft exit: name it with --exit_always E")
    if "onpolicy_weight" in cfg.cli and not cfg.onpolicy_data:
        fail("--onpolicy_weight weighs the loss on --onpolicy_data FILE: give the file too")
    for flag in ("onpolicy_loss", "onpolicy_aligned"):
        if flag in cfg.cli and not cfg.onpolicy_data:
            fail(f"--{flag} shapes the loss on --onpolicy_data FILE: give the file too")
    if cfg.onpolicy_data and distributed:
        fail("--onpolicy_data runs in one process: drop torchrun, or train without it")
    if cfg.onpolicy_data and not cfg.dry_run and not Path(cfg.onpolicy_data).exists():
        fail(f"--onpolicy_data {cfg.onpolicy_data}: no such file; {remedy(cfg)}")


def open_text(cfg, vocab_size: int):
    """--onpolicy_data's tokens as OnPolicyText (checked: a window long, ids inside the vocabulary), or None."""
    if not cfg.onpolicy_data:
        return None
    flag = f"--onpolicy_data {cfg.onpolicy_data}"
    tokens = corpus.token_file(cfg.onpolicy_data, flag, remedy(cfg))
    corpus.check_tokens(tokens, flag, cfg.block_size, vocab_size, "write it with a model trained on it")
    return OnPolicyText(cfg, tokens)


class OnPolicyText:
    """The on-policy text as train.py reads it: random windows of the token file, like train.bin's, or with
    --onpolicy_aligned whole samples (aligned_samples); and exit E's loss on a micro-batch of it."""

    def __init__(self, cfg, tokens: np.ndarray):
        self.cfg, self.tokens = cfg, tokens  # tokens: checked by train.py (length, ids)
        self.samples = aligned_samples(cfg, tokens) if cfg.onpolicy_aligned else None

    def batch(self, g: torch.Generator, device):
        """x, y [batch_size, block_size] drawn with the generator g (train.py's, one per micro-batch)."""
        B, T = self.cfg.batch_size, self.cfg.block_size
        if self.samples is not None:
            x, y = self.samples
            rows = torch.randint(len(x), (B,), generator=g)
            return x[rows].to(device), y[rows].to(device)
        starts = torch.randint(len(self.tokens) - T - 1, (B,), generator=g).tolist()
        x = torch.stack([torch.from_numpy(self.tokens[i:i + T].astype(np.int64)) for i in starts])
        y = torch.stack([torch.from_numpy(self.tokens[i + 1:i + 1 + T].astype(np.int64)) for i in starts])
        return x.to(device), y.to(device)

    def loss(self, model, g: torch.Generator, device):
        """Exit --exit_always's loss (--onpolicy_loss) on a micro-batch of the text."""
        x, y = self.batch(g, device)
        if self.cfg.onpolicy_loss == "ce":
            return exit_loss(model, x, y, self.cfg.exit_always)
        return distill_loss(model, x, y, self.cfg.exit_always, self.cfg.onpolicy_loss)


def aligned_samples(cfg, tokens) -> tuple[torch.Tensor, torch.Tensor]:
    """--onpolicy_aligned: every sample of the on-policy file as one window (x, y) [n_samples, block_size], y = -1
    (no loss) where the target is a human-written prefix token or past the sample's end."""
    sidecar = Path(cfg.onpolicy_data).with_suffix(".json")
    try:
        meta = json.loads(sidecar.read_text())
        starts, prefix = [int(i) for i in meta["starts"]], int(meta["prefix"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        fail(f"--onpolicy_aligned needs {sidecar} with the samples' starts ({type(e).__name__}): {remedy(cfg)}")
    T, ends = cfg.block_size, starts[1:] + [len(tokens)]
    if prefix >= T:
        fail(f"--onpolicy_aligned: the samples' prefix of {prefix} tokens fills the window of {T}: use a longer "
             f"--block_size, or samples with a shorter --prefix")
    x = torch.zeros(len(starts), T, dtype=torch.long)
    y = torch.full((len(starts), T), -1, dtype=torch.long)
    for i, (a, b) in enumerate(zip(starts, ends)):
        sample = torch.from_numpy(tokens[a:min(b, a + T + 1)].astype(np.int64))
        x[i, :len(sample) - 1] = sample[:-1]
        y[i, prefix - 1:len(sample) - 1] = sample[prefix:]  # targets: the greedy tokens only
    return x, y


def exit_loss(model, x, y, exit_layer):
    """Cross-entropy of exit E (the shared head after blocks 0..E-1) on x -> y: the blocks after E do not run."""
    h = model.run_blocks(model.tok_embeddings(x), 0, exit_layer)
    return torch.nn.functional.cross_entropy(model.head(h).flatten(0, 1), y.flatten(), ignore_index=-1)


def distill_loss(model, x, y, exit_layer, kind):
    """Distance of exit E's next-token distribution q from the last layer's p (a fixed target: no gradient flows
    into it) at every position whose target y is not -1: KL(p || q) = sum p (log p - log q), or the total
    variation 1/2 sum |p - q|, the acceptance a sampling draft loses (DistillSpec, Zhou et al. 2023)."""
    h = model.run_blocks(model.tok_embeddings(x), 0, exit_layer)
    with torch.no_grad():  # the last layer continues from exit E's states
        p = torch.softmax(model.head(model.run_blocks(h.detach(), exit_layer, model.params.n_layers)).float(), -1)
    keep = y >= 0
    log_q = torch.log_softmax(model.head(h).float(), -1)[keep]
    p = p[keep]
    if kind == "kl":
        return (p * (p.clamp_min(1e-30).log() - log_q)).sum(-1).mean()
    return 0.5 * (p - log_q.exp()).abs().sum(-1).mean()


if __name__ == "__main__":
    main()
