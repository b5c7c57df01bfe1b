"""
Generate text with a LayerSkip model: autoregressive, early-exit or self-speculative decoding.

    python generate.py --exit 6                         # self-speculative: draft with blocks 0..5, verify with 6..11
    python generate.py --exit 6 --compare               # ... and the speed-up over autoregressive decoding
    python generate.py --exit 6 --stream                # show each round as it is decoded, rejected drafts too
    python generate.py --strategy early_exit --exit 6   # the first 6 blocks only: faster, not the full model's text
    python generate.py --checkpoint out/toy/model.pt --prompt "ROMEO:" --temperature 0.8 --top_p 0.9
    python generate.py --checkpoint DIR --exit 4 --num_speculations 6   # a Meta / Hugging Face Llama directory

Without --strategy: self_speculative if --exit is given, else the checkpoint's recommended exit layer and
speculation count if bench.py stored them, else autoregressive. On a terminal the text is coloured: green for
drafts the verifier accepted, cyan for the verifier's own tokens, and with --stream the rejected drafts appear
struck through. Piped output is plain text.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

import layerskip as ls
from model_io import CheckpointError, load_model, token_texts

DEFAULT_CHECKPOINT = "checkpoints/layerskip-python.pt"
# the start of a HumanEval-style prompt: a signature and a docstring, the function body left to the model
DEFAULT_PROMPT = 'def fibonacci(n: int) -> int:\n    """Return the n-th Fibonacci number."""\n'
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# ANSI styles for the three roles a token can play in self-speculative decoding
ACCEPTED, VERIFIER, REJECTED, RESET = "\033[32m", "\033[36m", "\033[2;9;31m", "\033[0m"


def fail(message):
    """One line on stderr, exit code 2: what went wrong and what to do."""
    print(f"generate.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT,
                   help="our checkpoint (train.py) or a Meta / Hugging Face Llama directory (default: %(default)s)")
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", help="text to continue (default: a Python function header)")
    prompt.add_argument("--prompt_file", help="read the prompt from this file")
    p.add_argument("--strategy", choices=ls.STRATEGIES,
                   help="decoding strategy (default: self_speculative with --exit or a recommended exit, "
                        "else autoregressive)")
    p.add_argument("--exit", "--exit_layer", dest="exit_layer", type=int,
                   help="exit layer E: the draft (or the early-exit model) runs blocks 0..E-1")
    p.add_argument("--num_speculations", type=int,
                   help="tokens drafted per self-speculative round (default: the recommended one, else 4)")
    p.add_argument("--draft_threshold", type=float,
                   help="stop drafting early when the draft's confidence falls below this (default: the "
                        "recommended one, else off)")
    p.add_argument("--max_new_tokens", type=int, default=128, help="tokens to generate at most (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--top_k", type=int, help="sample only among the k most likely tokens")
    p.add_argument("--top_p", type=float, help="sample only from the smallest set of tokens with this probability")
    p.add_argument("--seed", type=int, help="seed of the sampler (default: random, printed)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu, cuda, cuda:1, ... (default: %(default)s)")
    p.add_argument("--dtype", choices=sorted(DTYPES),
                   help="weights and compute dtype (default: as stored; float16 runs as float32 on CPU)")
    p.add_argument("--max_seq_len", type=int,
                   help="context window to allocate (default: the checkpoint's; Llama 2 4096, Llama 3 8192)")
    p.add_argument("--compare", action="store_true",
                   help="also decode autoregressively and print the speed-up and whether the outputs match")
    p.add_argument("--stream", action="store_true",
                   help="print each round as it is decoded (on a terminal, rejected drafts struck through)")
    p.error = fail  # one line, not argparse's usage block
    return p.parse_args(argv)


def resolve_decoding(args, model) -> dict:
    """Strategy, exit layer and speculation count: the flags first, then the checkpoint's recommendation
    (metadata["recommended"], written by bench.py --auto), then autoregressive decoding."""
    recommended = (getattr(model, "metadata", None) or {}).get("recommended") or {}
    strategy = args.strategy
    if strategy is None:
        strategy = "self_speculative" if args.exit_layer is not None or recommended else "autoregressive"
    exit_layer = args.exit_layer if args.exit_layer is not None else recommended.get("exit_layer")
    if strategy != "autoregressive" and exit_layer is None:
        raise ValueError(f"--strategy {strategy} needs an exit layer: add --exit E with E in "
                         f"1..{model.params.n_layers}")
    num_speculations = next(n for n in (args.num_speculations, recommended.get("num_speculations"), 4)
                            if n is not None)
    threshold = args.draft_threshold
    if threshold is None and num_speculations == recommended.get("num_speculations"):
        threshold = recommended.get("draft_threshold")  # tuned together with d by bench.py --auto
    if strategy == "autoregressive":
        return dict(strategy=strategy)
    if strategy == "early_exit":
        return dict(strategy=strategy, exit_layer=exit_layer)
    return dict(strategy=strategy, exit_layer=exit_layer, num_speculations=num_speculations,
                draft_threshold=threshold)


def describe(dec: dict, args, n_layers: int) -> str:
    words = [dec["strategy"]]
    if "exit_layer" in dec:
        words.append(f"exit layer {dec['exit_layer']} of {n_layers}")
    if "num_speculations" in dec:
        words.append(f"{dec['num_speculations']} speculations")
    if dec.get("draft_threshold"):
        words.append(f"drafting stops below confidence {dec['draft_threshold']}")
    if args.temperature == 0:
        words.append("greedy")
    else:
        words.append(f"temperature {args.temperature}, top_k {args.top_k}, top_p {args.top_p}, seed {args.seed}")
    return ", ".join(words)


def round_text(event: ls.Round, seq: list, tokenizer, colour: bool, show_rejected: bool) -> str:
    """The text one round adds after the tokens seq: its accepted drafts, its rejected drafts (if shown; struck
    through), then the verifier's token. Colours only when asked, and only for self-speculative rounds."""
    def paint(text, style):
        return f"{style}{text}{RESET}" if colour and text and event.drafted else text

    accepted, rejected = event.drafted[:event.accepted], event.drafted[event.accepted:]
    out = paint("".join(token_texts(tokenizer, accepted, seq)), ACCEPTED)
    if show_rejected and rejected:
        out += paint("".join(token_texts(tokenizer, rejected, seq + accepted)), REJECTED)
    if event.token is not None:
        out += paint(token_texts(tokenizer, [event.token], seq + accepted)[0], VERIFIER)
    return out


def decode(model, tokenizer, prompt_ids, args, dec, stream: bool, colour: bool) -> ls.Generation:
    """Run one strategy and print its text: round by round while decoding (stream), or all at once after."""
    kwargs = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                  top_p=args.top_p, eos_id=tokenizer.stop_ids, seed=args.seed, **dec)
    seq = list(prompt_ids)
    if stream:  # consume the generator ourselves; the time then includes printing, as the reader sees it
        events, start = [], time.perf_counter()
        for event in ls.generate_stream(model, prompt_ids, **kwargs):
            print(round_text(event, seq, tokenizer, colour, show_rejected=colour), end="", flush=True)
            seq += event.tokens
            events.append(event)
        g = ls.Generation.from_events(events, time.perf_counter() - start)
    else:
        g = ls.generate(model, prompt_ids, **kwargs)
        for event in g.events:
            print(round_text(event, seq, tokenizer, colour, show_rejected=False), end="")
            seq += event.tokens
    # token_texts holds back a trailing incomplete character (U+FFFD) for the token that would complete it;
    # at the end of the text nothing will: print it as it is
    full = tokenizer.decode(seq)
    print(full[len(full.rstrip("\ufffd")):], flush=True)
    return g


def summary(g: ls.Generation, dec: dict) -> str:
    rate = f"acceptance rate {g.acceptance_rate:.0%}" if dec["strategy"] == "self_speculative" else \
        "acceptance rate n/a"
    return (f"{len(g.tokens)} tokens in {g.seconds:.2f} s: {g.tokens_per_s:.1f} tokens/s | {rate} | "
            f"{g.tokens_per_round:.2f} tokens per round ({g.rounds} rounds)")


def run(args):
    if args.checkpoint == DEFAULT_CHECKPOINT and not Path(DEFAULT_CHECKPOINT).exists():
        raise CheckpointError(f"{DEFAULT_CHECKPOINT} does not exist yet: pass --checkpoint PATH, e.g. "
                              f"out/toy/model.pt after `python train.py --preset toy --out_dir out/toy`")
    if args.prompt_file:
        try:
            prompt = Path(args.prompt_file).read_text()
        except OSError as e:
            raise ValueError(f"cannot read --prompt_file {args.prompt_file} ({e.strerror}): give an existing "
                             f"text file") from None
    else:
        prompt = DEFAULT_PROMPT if args.prompt is None else args.prompt
    if args.seed is None:
        args.seed = int(torch.randint(0, 2**31 - 1, ()).item())
    model, tokenizer = load_model(args.checkpoint, device=args.device, dtype=DTYPES.get(args.dtype),
                                  max_seq_len=args.max_seq_len)
    p = model.params
    dec = resolve_decoding(args, model)
    prompt_ids = tokenizer.encode(prompt)
    # bad exit layers, prompts longer than the context, ...: stop before printing anything
    ls.check_generation_args(model, prompt_ids, args.max_new_tokens, dec["strategy"], dec.get("exit_layer"),
                             dec.get("num_speculations"), args.temperature, args.top_k, args.top_p)
    n_params = sum(t.numel() for t in model.parameters())
    print(f"checkpoint {args.checkpoint}: {p.n_layers} layers, {n_params / 1e6:.1f}M parameters, context "
          f"{p.max_seq_len}, {tokenizer.kind} tokenizer of {tokenizer.vocab_size} tokens")
    print(f"decoding: {describe(dec, args, p.n_layers)} | prompt {len(prompt_ids)} tokens, up to "
          f"{args.max_new_tokens} new | {args.device} {str(model.tok_embeddings.weight.dtype)[6:]}")
    colour = sys.stdout.isatty()
    if colour and dec["strategy"] == "self_speculative":
        legend = f"{ACCEPTED}accepted draft{RESET} {VERIFIER}verifier's token{RESET}"
        print("colours: " + legend + (f" {REJECTED}rejected draft{RESET}" if args.stream else ""))
    if args.compare:  # warm up both strategies (allocator, kernels) so that neither pays first-call costs
        for warm in (dec, dict(strategy="autoregressive")):
            ls.generate(model, prompt_ids, min(8, args.max_new_tokens), eos_id=tokenizer.eos_id, seed=0, **warm)
    print("-" * 80)
    print(prompt, end="")
    g = decode(model, tokenizer, prompt_ids, args, dec, args.stream, colour)
    print("-" * 80)
    print(summary(g, dec))
    if args.compare:
        ar = ls.generate(model, prompt_ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                         top_p=args.top_p, eos_id=tokenizer.eos_id, seed=args.seed)
        print(f"autoregressive: {len(ar.tokens)} tokens in {ar.seconds:.2f} s: {ar.tokens_per_s:.1f} tokens/s")
        same = ar.tokens == g.tokens
        if not same:
            first = next((i for i, (a, b) in enumerate(zip(ar.tokens, g.tokens)) if a != b),
                         min(len(ar.tokens), len(g.tokens)))
        match = "outputs identical" if same else f"outputs differ from token {first} on"
        print(f"speedup {ar.time_per_token / g.time_per_token:.2f}x ({1000 * ar.time_per_token:.1f} ms/token "
              f"autoregressive, {1000 * g.time_per_token:.1f} ms/token {dec['strategy']}) | {match}")


def main(argv=None):
    args = parse_args(argv)
    try:
        run(args)
    except (CheckpointError, ValueError) as e:  # bad input: one line, no traceback
        fail(str(e))
    except KeyboardInterrupt:
        print(file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
