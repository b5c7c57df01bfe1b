"""
The SmolLM2 numbers of docs/results.md, for one checkpoint (the GGUF original, or a continual-pretraining output):

  1. teacher-forced on fixed windows of a split (dev = val.bin, test = test.bin of out/smollm2/data): every exit's
     loss and its top-1 agreement with the last layer (how often a draft at that exit would be accepted, greedy);
  2. the logit lens (the paper's Fig. 2) on greedily generated tokens: how many of the 30 layers each token needs;
  3. self-speculative decoding: acceptance at several exits, and at one exit the time against autoregressive
     decoding, with the output checked identical (greedy, float32).

    python experiments/smollm2/measure.py --checkpoint smollm2 --split test --out out/smollm2/measure/before_test.json
    python experiments/smollm2/measure.py --checkpoint out/smollm2/run/ckpt.pt --split test --out ...

One torch thread; the prompts are the starts of the split's windows (Python) and two chat questions.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
import layerskip as ls  # noqa: E402
from model_io import chat_prompt, load_model  # noqa: E402

CHAT = ["What is the capital of France?", "Write a Python function that returns the square of a number."]


def windows(split: str, n: int, T: int, data="out/smollm2/data") -> list[torch.Tensor]:
    """n windows of T + 1 tokens, evenly spaced over the split (the same for every checkpoint)."""
    meta = json.loads((Path(data) / "meta.json").read_text())
    tokens = np.memmap(Path(data) / f"{'val' if split == 'dev' else split}.bin", dtype=meta["dtype"], mode="r")
    starts = np.linspace(0, len(tokens) - T - 2, n).astype(int)
    return [torch.from_numpy(tokens[s:s + T + 1].astype(np.int64)) for s in starts]


@torch.no_grad()
def teacher_forced(model, wins) -> dict:
    """Mean loss of every exit and its top-1 agreement with the last layer, over the windows' targets."""
    L = model.params.n_layers
    loss, agree, n = torch.zeros(L), torch.zeros(L), 0
    for w in wins:
        x, y = w[None, :-1], w[1:]
        h = model.tok_embeddings(x)
        top = []
        for l in range(L):
            h = model.run_blocks(h, l, l + 1)
            logits = model.head(h[0]).float()
            loss[l] += torch.nn.functional.cross_entropy(logits, y, reduction="sum")
            top.append(logits.argmax(-1))
        agree += torch.tensor([(t == top[-1]).sum().item() for t in top], dtype=torch.float)
        n += len(y)
    return {"loss": (loss / n).tolist(), "agreement": (agree / n).tolist(), "tokens": n}


def prompts(tok, wins, n_code: int, prompt_len: int) -> list[tuple[str, list[int]]]:
    code = [("code", w[:prompt_len].tolist()) for w in wins[:n_code]]
    return code + [("chat", chat_prompt(tok, q)[1]) for q in CHAT]


@torch.no_grad()
def lens_and_speculation(model, tok, plist, new_tokens: int, exits: list, timed_exit: int, d: int) -> dict:
    L = model.params.n_layers
    needed, acceptance = [], {E: [0, 0] for E in exits}
    ar_time = ss_time = 0.0
    n_tokens, identical = 0, True
    for kind, ids in plist:
        ls.generate(model, ids, 4, eos_id=tok.stop_ids)  # warm-up
        ar = ls.generate(model, ids, new_tokens, eos_id=tok.stop_ids)
        lens = ls.logit_lens(model, ids + ar.tokens)
        needed += lens.layers_needed[len(ids) - 1:len(ids) - 1 + len(ar.tokens)].tolist()
        for E in exits:
            g = ls.generate(model, ids, new_tokens, strategy="self_speculative", exit_layer=E, num_speculations=d,
                            eos_id=tok.stop_ids)
            acceptance[E][0] += g.accepted
            acceptance[E][1] += g.drafted
            identical &= g.tokens == ar.tokens
            if E == timed_exit:
                ss_time += g.seconds
        ar_time += ar.seconds
        n_tokens += len(ar.tokens)
    needed_t = torch.tensor(needed, dtype=torch.float)
    return {"layers_needed_mean": needed_t.mean().item(), "layers_needed_median": needed_t.median().item(),
            "share_needing_all": (needed_t == L).float().mean().item(),
            "share_by_exit": {E: (needed_t <= E).float().mean().item() for E in (4, 8, 12, 16, 20, 24, 28)},
            "acceptance": {E: a / max(t, 1) for E, (a, t) in acceptance.items()},
            "timed_exit": timed_exit, "num_speculations": d, "generated_tokens": n_tokens,
            "speedup": ar_time / ss_time if ss_time else None, "ar_tokens_per_s": n_tokens / ar_time,
            "identical": identical}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="smollm2")
    p.add_argument("--split", choices=["dev", "test"], default="dev")
    p.add_argument("--data", default="out/smollm2/data", help="a folder of data/prepare.py --tokenizer")
    p.add_argument("--windows", type=int, default=8, help="windows of --block_size tokens, teacher-forced")
    p.add_argument("--block_size", type=int, default=256)
    p.add_argument("--code_prompts", type=int, default=3, help="window starts used as prompts (plus 2 chat ones)")
    p.add_argument("--prompt_len", type=int, default=96)
    p.add_argument("--new_tokens", type=int, default=48)
    p.add_argument("--exits", type=int, nargs="+", default=[4, 8, 12, 16, 20, 24])
    p.add_argument("--timed_exit", type=int, default=8)
    p.add_argument("--num_speculations", type=int, default=4)
    p.add_argument("--skip_decoding", action="store_true", help="only the teacher-forced numbers")
    p.add_argument("--out", required=True, help="JSON file to write")
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    model, tok = load_model(args.checkpoint, dtype=torch.float32)
    wins = windows(args.split, args.windows, args.block_size, args.data)
    result = {"checkpoint": args.checkpoint, "split": args.split, "block_size": args.block_size,
              "teacher_forced": teacher_forced(model, wins)}
    if not args.skip_decoding:
        result["decoding"] = lens_and_speculation(model, tok, prompts(tok, wins, args.code_prompts, args.prompt_len),
                                                  args.new_tokens, args.exits, args.timed_exit, args.num_speculations)
    result["seconds"] = time.time() - t0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    tf = result["teacher_forced"]
    print(f"{args.checkpoint} on {args.split} ({tf['tokens']} tokens): last-layer loss {tf['loss'][-1]:.4f}; "
          + " ".join(f"E{E}: loss {tf['loss'][E - 1]:.2f} agree {tf['agreement'][E - 1]:.1%}" for E in args.exits))
    if "decoding" in result:
        print(json.dumps(result["decoding"]))


if __name__ == "__main__":
    main()
