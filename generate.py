"""
Generate text with a LayerSkip model: autoregressive, early-exit or self-speculative decoding.

    python generate.py                                  # self-speculative at the setting bench.py --auto stored
    python generate.py --exit 4 --compare               # draft with blocks 0..3, verify with 4..31; vs autoregressive
    python generate.py --exit 8 --stream                # show each round as it is decoded, rejected drafts too
    python generate.py --strategy early_exit --exit 4   # the first 4 blocks only: faster, not the full model's text
    python generate.py --checkpoint out/toy --prompt "ROMEO:" --temperature 0.8 --top_p 0.9   # train.py's output
    python generate.py --checkpoint DIR --exit 4 --num_speculations 6   # a Meta / Hugging Face Llama directory

Without --strategy: self_speculative if --exit is given, else the checkpoint's recommended exit layer if bench.py
stored one, else autoregressive. The recommended speculation count and draft threshold were tuned at the
recommended exit and apply only there: at any other exit the count is 4 and there is no threshold, unless given.
The summary says why decoding stopped: max_new_tokens, a stop token or the context window. On a terminal the
text is coloured: green for drafts the verifier accepted, cyan for the verifier's own tokens, and with --stream
the rejected drafts appear struck through. Piped output is plain text. On CPU, --threads defaults to 1.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

import layerskip as ls
from model_io import CheckpointError, load_model, token_texts

DEFAULT_CHECKPOINT = "checkpoints/layerskip-python-deep.pt"  # 32 layers; it stores its best exit, d, threshold
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
                   help="exit layer E: the draft (or the early-exit model) runs blocks 0..E-1 (default: the "
                        "checkpoint's recommended one)")
    p.add_argument("--num_speculations", type=int,
                   help="tokens drafted per self-speculative round (default: the checkpoint's recommended one "
                        "if E is its recommended exit layer, else %d)" % ls.DEFAULT_NUM_SPECULATIONS)
    p.add_argument("--draft_threshold", type=float,
                   help="stop drafting early when the draft's confidence falls below this, in (0, 1] (default: "
                        "the recommended one if E and the speculation count are the recommended ones, else off)")
    p.add_argument("--max_new_tokens", type=int, default=128, help="tokens to generate at most (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--top_k", type=int, help="sample only among the k most likely tokens")
    p.add_argument("--top_p", type=float, help="sample only from the smallest set of tokens with this probability")
    p.add_argument("--seed", type=int, help="seed of the sampler (default: random, printed)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu, cuda, cuda:1, ... (default: %(default)s)")
    p.add_argument("--threads", type=int,
                   help="torch CPU threads (default on CPU: 1, fastest for small models and on a machine whose "
                        "other cores are busy; more can help a large model on idle cores)")
    p.add_argument("--dtype", choices=sorted(DTYPES),
                   help="weights and compute dtype (default: as stored; float16 runs as float32 on CPU)")
    p.add_argument("--max_seq_len", type=int,
                   help="context window to allocate (default: the checkpoint's; Llama 2 4096, Llama 3 8192); "
                        "past the context it was trained with, text degrades")
    p.add_argument("--compare", action="store_true",
                   help="also decode autoregressively and print the speed-up and whether the outputs match")
    p.add_argument("--stream", action="store_true",
                   help="print each round as it is decoded (on a terminal, rejected drafts struck through)")
    p.error = fail  # one line, not argparse's usage block
    return p.parse_args(argv)


def check_device(name: str):
    """A ValueError naming the fix if tensors cannot be put on device `name` (unknown, no CUDA, no such GPU)."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name}: unknown device: use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ValueError(f"--device {name}: {why}: use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                             f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    try:
        torch.empty(1, device=device)
    except Exception as e:  # mps, xpu, ... not built or not present
        raise ValueError(f"--device {name}: not available in this torch build or on this machine "
                         f"({type(e).__name__}): use --device cpu") from None


def check_args(args):
    """Flags that are wrong whatever the checkpoint: a ValueError before anything is loaded."""
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    if args.draft_threshold is not None and not 0 < args.draft_threshold <= 1:
        raise ValueError(f"--draft_threshold is a probability in (0, 1], got {args.draft_threshold}")
    if args.max_seq_len is not None and args.max_seq_len < 1:
        raise ValueError(f"--max_seq_len must be at least 1, got {args.max_seq_len}; leave it out to use the "
                         f"checkpoint's context window")
    check_device(args.device)


def resolve_decoding(args, model) -> dict:
    """Strategy, exit layer, speculation count and draft threshold: the flags, then the checkpoint's
    recommendation (metadata["recommended"], written by bench.py --auto) by ls.speculation_settings' rule (its d
    and threshold only at its exit layer), then autoregressive decoding."""
    recommended = (getattr(model, "metadata", None) or {}).get("recommended") or {}
    strategy = args.strategy
    if strategy is None:
        has_exit = args.exit_layer is not None or recommended.get("exit_layer") is not None
        strategy = "self_speculative" if has_exit else "autoregressive"
    spec = ls.speculation_settings(recommended, args.exit_layer, args.num_speculations, args.draft_threshold)
    if strategy != "autoregressive" and spec["exit_layer"] is None:
        raise ValueError(f"--strategy {strategy} needs an exit layer: add --exit E with E in "
                         f"1..{model.params.n_layers}")
    if strategy == "autoregressive":
        return dict(strategy=strategy)
    if strategy == "early_exit":
        return dict(strategy=strategy, exit_layer=spec["exit_layer"])
    return dict(strategy=strategy, **spec)


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
        words.append(f"temperature {args.temperature}")
        words += [f"{name} {value}" for name, value in (("top_k", args.top_k), ("top_p", args.top_p))
                  if value is not None]
        words.append(f"seed {args.seed}")
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


def stop_reason(g: ls.Generation, n_prompt: int, max_new_tokens: int, context: int, stop_ids) -> str:
    """Why decoding ended: a stop token, the context window (before max_new_tokens), or max_new_tokens."""
    if g.tokens and g.tokens[-1] in stop_ids:
        return f"a stop token (id {g.tokens[-1]})"
    if len(g.tokens) < max_new_tokens and n_prompt + len(g.tokens) >= context:
        return f"the context window of {context} tokens (prompt {n_prompt} + {len(g.tokens)} new)"
    return f"max_new_tokens ({max_new_tokens})"


def summary(g: ls.Generation, dec: dict, stopped: str) -> str:
    drafted = dec["strategy"] == "self_speculative" and g.drafted  # n/a when nothing was drafted
    rate = f"acceptance rate {g.acceptance_rate:.0%}" if drafted else "acceptance rate n/a"
    return (f"{len(g.tokens)} tokens in {g.seconds:.2f} s: {g.tokens_per_s:.1f} tokens/s | {rate} | "
            f"{g.tokens_per_round:.2f} tokens per round ({g.rounds} rounds) | stopped at {stopped}")


def compare_verdict(ar_tokens: list, tokens: list, temperature: float, dtype: torch.dtype) -> str:
    """--compare's word on the two outputs: greedy ones must match in float32; sampled ones need not."""
    if temperature > 0:
        return "sampling: outputs differ by design (the same distribution, other random draws)"
    if ar_tokens == tokens:
        return "outputs identical"
    first = next((i for i, (a, b) in enumerate(zip(ar_tokens, tokens)) if a != b), min(len(ar_tokens), len(tokens)))
    verdict = f"outputs differ from token {first} on"
    if dtype != torch.float32:
        verdict += (f" (in {str(dtype)[6:]}, near-ties can flip greedy choices: identical outputs are a float32 "
                    f"guarantee)")
    return verdict


def run(args):
    check_args(args)
    if args.checkpoint == DEFAULT_CHECKPOINT and not Path(DEFAULT_CHECKPOINT).exists():
        raise CheckpointError(f"{DEFAULT_CHECKPOINT} does not exist yet: pass --checkpoint PATH, e.g. "
                              f"out/toy after `python train.py --preset toy --out_dir out/toy`")
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
    threads = args.threads or (1 if torch.device(args.device).type == "cpu" else None)
    if threads:  # before loading: loading uses the threads too
        torch.set_num_threads(threads)
    model, tokenizer = load_model(args.checkpoint, device=args.device, dtype=DTYPES.get(args.dtype),
                                  max_seq_len=args.max_seq_len)
    p = model.params
    dec = resolve_decoding(args, model)
    prompt_ids = tokenizer.encode(prompt)
    # bad exit layers, prompts longer than the context, ...: stop before printing anything
    ls.check_generation_args(model, prompt_ids, args.max_new_tokens, dec["strategy"], dec.get("exit_layer"),
                             dec.get("num_speculations"), args.temperature, args.top_k, args.top_p)
    trained = getattr(model, "trained_context", None)
    if args.max_seq_len and trained and args.max_seq_len > trained:
        print(f"generate.py: warning: --max_seq_len {args.max_seq_len} is past the {trained} tokens of context "
              f"this checkpoint was trained with: text past position {trained} will likely degrade", file=sys.stderr)
    n_params = sum(t.numel() for t in model.parameters())
    print(f"checkpoint {args.checkpoint}: {p.n_layers} layers, {n_params / 1e6:.1f}M parameters, context "
          f"{p.max_seq_len}, {tokenizer.kind} tokenizer of {tokenizer.vocab_size} tokens")
    room = p.max_seq_len - len(prompt_ids)
    fits = f" ({room} fit the context window of {p.max_seq_len})" if room < args.max_new_tokens else ""
    dtype = model.tok_embeddings.weight.dtype
    where = f"{args.device} {str(dtype)[6:]}"
    if torch.device(args.device).type == "cpu":
        n = torch.get_num_threads()
        where += f", {n} thread{'s' if n > 1 else ''}"
    print(f"decoding: {describe(dec, args, p.n_layers)} | prompt {len(prompt_ids)} tokens, up to "
          f"{args.max_new_tokens} new{fits} | {where}")
    colour = sys.stdout.isatty()
    if colour and dec["strategy"] == "self_speculative":
        legend = f"{ACCEPTED}accepted draft{RESET} {VERIFIER}verifier's token{RESET}"
        print("colours: " + legend + (f" {REJECTED}rejected draft{RESET}" if args.stream else ""))
    if args.compare:  # warm up both strategies (allocator, kernels) so that neither pays first-call costs
        for warm in (dec, dict(strategy="autoregressive")):
            ls.generate(model, prompt_ids, min(8, args.max_new_tokens), eos_id=tokenizer.stop_ids, seed=0, **warm)
    print("-" * 80)
    print(prompt, end="")
    g = decode(model, tokenizer, prompt_ids, args, dec, args.stream, colour)
    print("-" * 80)
    print(summary(g, dec, stop_reason(g, len(prompt_ids), args.max_new_tokens, p.max_seq_len, tokenizer.stop_ids)))
    if args.compare:  # the same stop ids as the strategy above: otherwise the two could stop at different places
        ar = ls.generate(model, prompt_ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                         top_p=args.top_p, eos_id=tokenizer.stop_ids, seed=args.seed)
        print(f"autoregressive: {len(ar.tokens)} tokens in {ar.seconds:.2f} s: {ar.tokens_per_s:.1f} tokens/s")
        verdict = compare_verdict(ar.tokens, g.tokens, args.temperature, dtype)
        if ar.tokens and g.tokens:
            print(f"speedup {ar.time_per_token / g.time_per_token:.2f}x ({1000 * ar.time_per_token:.1f} ms/token "
                  f"autoregressive, {1000 * g.time_per_token:.1f} ms/token {dec['strategy']}) | {verdict}")
        else:
            print(f"speedup n/a (no tokens generated) | {verdict}")


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
