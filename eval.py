"""
How good is every exit? Validation loss, perplexity and next-token accuracy at each exit layer (paper Fig. 8/10,
Table 1), the "layers needed" per generated token (paper Fig. 2), and a logit-lens picture of one prompt.

    python eval.py                                        # the two shipped models, held-out Python code
    python eval.py --out_dir docs/results                 # ... and rewrite the committed plots
    python eval.py --checkpoints out/a/model.pt out/b/model.pt --data shakespeare

Tables are printed as markdown; plots (matplotlib, optional) go to --out_dir (default out/eval).
"""

import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import layerskip as ls
from common import MAX_THREADS, ArgumentParser, checked, crop_prompt, fail, int_range, prompt_set, read_text
from model_io import load_model

SHIPPED = ["checkpoints/layerskip-python-deep.pt", "checkpoints/baseline-python-deep.pt"]


def validation_documents(name):
    """The held-out documents of a corpus (python, python-stdlib, shakespeare) or a text file, as text, so that any
    checkpoint can encode them with its own tokenizer. A ValueError names a file that cannot be read."""
    if name == "python":
        from data.python.prepare import val_documents
        return val_documents()
    if name == "python-stdlib":  # the 12-layer models' corpus
        from data.python.prepare import val_documents
        return val_documents(stdlib_only=True)
    if name == "shakespeare":
        from data.shakespeare.prepare import split_works
        return split_works()[1]
    if not Path(name).exists():
        raise ValueError(f"--data {name}: not python, python-stdlib, shakespeare or an existing text file")
    return [read_text(name, "--data")]


def spread_windows(tokenizer, documents, n_windows, block_size, n_files):
    """Up to n_windows windows of block_size + 1 tokens from n_files of the documents, evenly spaced in their
    order (a file's windows are consecutive, from its start; a file holds as many as it can, the next ones make up
    the rest): (windows [N, block_size + 1], the file number of each). A ValueError if not one window fits."""
    files = [documents[int(i * len(documents) / n_files)] for i in range(min(n_files, len(documents)))]
    encoded = [tokenizer.encode(doc) + [tokenizer.eos_id] for doc in files]
    per_file = [len(ids) // (block_size + 1) for ids in encoded]
    if not any(per_file):  # short files (one prompt, a short text file): run them together
        joined = [t for ids in encoded for t in ids]
        encoded, per_file = [joined], [len(joined) // (block_size + 1)]
    if not any(per_file):
        raise ValueError(f"the held-out text is {len(encoded[0])} tokens long, less than one window of "
                         f"{block_size + 1}: give more text or a smaller --block_size")
    take = [0] * len(encoded)
    while sum(take) < n_windows and any(t < p for t, p in zip(take, per_file)):  # one window per file in turn
        for i, p in enumerate(per_file):
            if take[i] < p and sum(take) < n_windows:
                take[i] += 1
    windows = [torch.tensor(ids[j * (block_size + 1):(j + 1) * (block_size + 1)])
               for ids, t in zip(encoded, take) for j in range(t)]
    return torch.stack(windows), [i for i, t in enumerate(take) for _ in range(t)]


@torch.inference_mode()
def per_exit_metrics(model, tokenizer, documents, n_windows, block_size, n_files=16):
    """Mean loss, top-1 accuracy and top-1 agreement with the last layer (what greedy self-speculative decoding
    accepts, teacher-forced) of every exit, over n_windows windows spread over n_files held-out files
    (spread_windows); and the last layer's loss in each of those files."""
    data, file_of = spread_windows(tokenizer, documents, n_windows, block_size, n_files)
    L = model.params.n_layers
    loss, correct, agree = (torch.zeros(L, dtype=torch.float64) for _ in range(3))
    last = torch.zeros(data.shape[0], dtype=torch.float64)  # the last layer's loss of each window
    for start, window in zip(range(0, len(data), 8), data.split(8)):
        x, y = window[:, :-1], window[:, 1:]
        h = model.tok_embeddings(x)
        top1 = []
        for l in range(L):
            h = model.run_blocks(h, l, l + 1)
            logits = model.head(h)
            ce = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape)
            loss[l] += ce.sum().item()
            top1.append(logits.argmax(-1))
            correct[l] += (top1[l] == y).sum().item()
        last[start:start + len(window)] = ce.mean(-1)
        for l in range(L):
            agree[l] += (top1[l] == top1[-1]).sum().item()
    n = data.shape[0] * block_size
    by_file = {}
    for f, value in zip(file_of, last.tolist()):
        by_file.setdefault(f, []).append(value)
    return {"loss": (loss / n).tolist(), "accuracy": (correct / n).tolist(), "agreement": (agree / n).tolist(),
            "tokens": n, "files": len(by_file),
            "last_layer_loss_by_file": [sum(v) / len(v) for _, v in sorted(by_file.items())]}


def layers_needed(model, tokenizer, prompts, max_new_tokens):
    """Layers needed by each greedily generated token (the paper's 23.45-of-32 measurement)."""
    needed = []
    for prompt in prompts:
        ids = crop_prompt(model, tokenizer.encode(prompt), max_new_tokens)
        out = ls.generate(model, ids, max_new_tokens, eos_id=tokenizer.stop_ids).tokens
        lens = ls.logit_lens(model, ids + out)
        needed += lens.layers_needed[len(ids) - 1:len(ids) - 1 + len(out)].tolist()  # positions that predicted `out`
    return needed


def plot_exits(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in results.items():
        exits = range(1, len(r["loss"]) + 1)
        a.plot(exits, r["loss"], marker="o", label=name)
        b.plot(exits, [100 * x for x in r["accuracy"]], marker="o", label=name)
    a.set(xlabel="exit layer E (blocks run)", ylabel="validation loss (nats/token)", title="Loss at every exit")
    b.set(xlabel="exit layer E (blocks run)", ylabel="next-token accuracy (%)", title="Accuracy at every exit")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_layers_needed(needed, L_by_name, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, values in needed.items():
        L = L_by_name[name]
        counts = [values.count(e) / len(values) for e in range(1, L + 1)]
        ax.plot(range(1, L + 1), counts, marker="o",
                label=f"{name}: mean {sum(values) / len(values):.2f} of {L} layers")
    ax.set(xlabel="layers needed (earliest exit after which the top-1 never changes)", ylabel="fraction of tokens",
           title="How many layers does a generated token need?")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_logit_lens(model, tokenizer, prompt, max_new_tokens, path, title):
    """Paper Fig. 2a: each exit's top-1 token at each generated position, green where it equals the last layer's."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from model_io import token_texts
    ids = crop_prompt(model, tokenizer.encode(prompt), max_new_tokens)
    out = ls.generate(model, ids, max_new_tokens, eos_id=tokenizer.stop_ids).tokens
    lens = ls.logit_lens(model, ids + out)
    cols = slice(len(ids) - 1, len(ids) - 1 + len(out))
    top1, agree = lens.top1[:, cols], (lens.top1[:, cols] == lens.top1[-1:, cols])
    L, T = top1.shape
    fig, ax = plt.subplots(figsize=(max(8, 0.55 * T), 0.42 * L + 1.5))
    ax.imshow(agree.float().numpy(), cmap="RdYlGn", vmin=-0.3, vmax=1.3, aspect="auto", origin="lower")
    for l in range(L):
        for t in range(T):
            text = tokenizer.decode([int(top1[l, t])]).replace("\n", "↵") or "·"
            ax.text(t, l, text[:6], ha="center", va="center", fontsize=6.5, family="monospace")
    needed = lens.layers_needed[cols]
    for t in range(T):  # a bar under the row (block l) of the first exit whose prediction no longer changes
        ax.hlines(ls.block_of_exit(int(needed[t])) - 0.5, t - 0.5, t + 0.5, colors="black", linewidth=2.5)
    ax.set_yticks(range(L), [str(ls.exit_of_block(l)) for l in range(L)])
    ax.set_xticks(range(T), [p.replace("\n", "↵")[:6] for p in token_texts(tokenizer, out, ids)], rotation=90,
                  fontsize=7, family="monospace")
    ax.set(ylabel="exit layer", title=f"{title}: top-1 prediction per exit (green = same as last layer; "
           f"bar = layers needed, mean {needed.float().mean():.2f} of {L})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv):
    p = ArgumentParser(description=__doc__)
    p.add_argument("--checkpoints", nargs="+", default=SHIPPED, help="checkpoints to compare")
    p.add_argument("--data", default="python", help="held-out text: python (stdlib + torch), python-stdlib, "
                   "shakespeare, or a .txt file")
    p.add_argument("--windows", type=int_range(1), default=64, help="validation windows per checkpoint")
    p.add_argument("--files", type=int_range(1), default=16, help="held-out files the windows are spread over "
                   "(evenly spaced in the corpus)")
    p.add_argument("--block_size", type=int_range(1), help="tokens per validation window (default: what every "
                   "model's context window holds, its length - 1; at most that)")
    p.add_argument("--prompts", default="humaneval", help="prompts for layers needed: humaneval, shakespeare, or a "
                   "text file, one prompt per line")
    p.add_argument("--n_prompts", type=int_range(1), default=20, help="prompts used for the layers-needed "
                   "distribution")
    p.add_argument("--max_new_tokens", type=int_range(1), default=48, help="tokens generated per prompt")
    p.add_argument("--out_dir", default="out/eval", help="where the PNG plots go (default out/eval; docs/results "
                   "holds the committed ones)")
    p.add_argument("--json", help="also write all numbers to this JSON file")
    p.add_argument("--threads", type=int_range(1, MAX_THREADS), default=2,
                   help="torch CPU threads")
    return p.parse_args(argv)


def load_inputs(args) -> tuple[dict, list[str], list[str]]:
    """{name: (model, tokenizer)}, the held-out documents and the prompts; every problem is a one-line error."""
    if Path(args.out_dir).exists() and not Path(args.out_dir).is_dir():
        fail(f"--out_dir {args.out_dir}: is a file; give a folder for the plots")
    if args.json and (Path(args.json).is_dir() or not Path(args.json).resolve().parent.is_dir()):
        fail(f"--json {args.json}: give a file path in an existing folder")
    models = {}
    try:
        for path in args.checkpoints:
            name = Path(path).stem if Path(path).stem not in ("ckpt", "model") else Path(path).parent.name
            if name in models:
                raise ValueError(f"--checkpoints: two are named {name}; give each checkpoint its own file name")
            models[name] = load_model(path)
            window = models[name][0].params.max_seq_len
            if args.block_size and args.block_size > window - 1:  # a window is block_size + 1 tokens
                raise ValueError(f"--block_size {args.block_size} does not fit {path}'s context window of {window} "
                                 f"tokens: use at most {window - 1}")
            if args.max_new_tokens >= window:
                raise ValueError(f"--max_new_tokens {args.max_new_tokens} leaves no room for a prompt in {path}'s "
                                 f"context window of {window} tokens: use at most {window - 1}")
        documents = validation_documents(args.data)
        prompts = prompt_set(args.prompts)[:args.n_prompts]
    except ValueError as e:  # CheckpointError is one
        fail(str(e))
    return models, documents, prompts


def print_tables(args, models: dict, results: dict, needed: dict, n_prompts: int):
    names = list(models)
    L = max(m.params.n_layers for m, _ in models.values())
    print(f"\n## Validation loss / perplexity / next-token accuracy / top-1 agreement with the last layer by exit "
          f"({args.data}, {results[names[0]]['tokens']:,} tokens from {results[names[0]]['files']} held-out files)\n")
    print("| exit | " + " | ".join(f"{n} loss | ppl | acc | agree" for n in names) + " |")
    print("|---|" + "---|---|---|---|" * len(names))
    for l in range(L):
        cells = []
        for n in names:
            r = results[n]
            if l < len(r["loss"]):
                cells.append(f"{r['loss'][l]:.3f} | {torch.tensor(r['loss'][l]).exp().item():.1f} | "
                             f"{100 * r['accuracy'][l]:.1f}% | {100 * r['agreement'][l]:.1f}%")
            else:
                cells.append(" | | | ")
        print(f"| {ls.exit_of_block(l)} | " + " | ".join(cells) + " |")
    by_file = [results[n]["last_layer_loss_by_file"] for n in names]
    if len(names) > 1 and len({len(b) for b in by_file}) == 1:
        first, last = by_file[0], by_file[-1]
        gaps = [100 * (a / b - 1) for a, b in zip(first, last)]
        print(f"\n## Last layer, file by file: {names[0]} vs {names[-1]}\n")
        print("| held-out file | " + " | ".join(f"{n} loss" for n in names) + f" | {names[0]} vs {names[-1]} |")
        print("|---|" + "---|" * len(names) + "---|")
        for i, g in enumerate(gaps):
            print(f"| {i + 1} | " + " | ".join(f"{b[i]:.3f}" for b in by_file) + f" | {g:+.1f}% |")
        print(f"\n{names[0]}'s last layer vs {names[-1]}'s: {sum(gaps) / len(gaps):+.1f}% on average over "
              f"{len(gaps)} files (from {min(gaps):+.1f}% to {max(gaps):+.1f}%); all windows together: "
              f"{100 * (results[names[0]]['loss'][-1] / results[names[-1]]['loss'][-1] - 1):+.1f}%")
    print(f"\n## Layers needed per generated token ({args.prompts}, {n_prompts} prompts, "
          f"{args.max_new_tokens} greedy tokens each)\n")
    print("| model | mean layers needed | of L | tokens |")
    print("|---|---|---|---|")
    for n in names:
        v = needed[n]
        print(f"| {n} | {sum(v) / len(v):.2f} | {models[n][0].params.n_layers} | {len(v)} |")


def write_plots(models: dict, results: dict, needed: dict, prompt: str, out: Path):
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib)")
        return
    out.mkdir(parents=True, exist_ok=True)
    plot_exits(results, out / "eval_exits.png")
    plot_layers_needed(needed, {n: m.params.n_layers for n, (m, _) in models.items()}, out / "layers_needed.png")
    for n, (model, tok) in models.items():
        plot_logit_lens(model, tok, prompt, 24, out / f"logit_lens_{n}.png", n)
    print(f"plots: {out}/eval_exits.png, {out}/layers_needed.png, {out}/logit_lens_*.png")


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    models, documents, prompts = load_inputs(args)
    t0 = time.time()
    results, needed = {}, {}
    for name, (model, tok) in models.items():
        results[name] = checked(per_exit_metrics, model, tok, documents, args.windows,
                                args.block_size or model.params.max_seq_len - 1, args.files)
        needed[name] = layers_needed(model, tok, prompts, args.max_new_tokens)
    print_tables(args, models, results, needed, len(prompts))
    print(f"\n(eval took {time.time() - t0:.0f} s; command: python eval.py "
          f"{' '.join(sys.argv[1:] if argv is None else argv)})")
    write_plots(models, results, needed, prompts[0], Path(args.out_dir))
    if args.json:
        Path(args.json).write_text(json.dumps({"per_exit": results, "layers_needed": needed}, indent=1))


if __name__ == "__main__":
    main()
