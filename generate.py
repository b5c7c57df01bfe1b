"""
Generate text with a LayerSkip model: autoregressive, early-exit or self-speculative decoding.

    python generate.py                                  # self-speculative at the setting bench.py --auto stored
    python generate.py --exit 4 --compare               # draft with blocks 0..3, verify with 4..31; vs autoregressive
    python generate.py --exit 8 --stream                # show each round as it is decoded, rejected drafts too
    python generate.py --strategy early_exit --exit 4   # the first 4 blocks only: faster, not the full model's text
    python generate.py --no_repeat_ngram_size 4         # never repeat a 4-gram (drafts and verifier alike)
    python generate.py --checkpoint out/toy --prompt "ROMEO:" --temperature 0.8 --top_p 0.9   # train.py's output
    python generate.py --checkpoint DIR --exit 4 --num_speculations 6   # a Meta / Hugging Face Llama directory
    python generate.py --checkpoint smollm2 --chat --prompt "What is the capital of France?"   # a GGUF chat model
    python generate.py --prompt_file prompts.jsonl --batch_size 4 --compare   # several prompts, 4 decoded at once

Without --strategy: self_speculative if a drafting flag is given (--exit, --num_speculations, --draft_threshold,
--draft_cost, --draft_gamma), else the setting bench.py --auto stored in the checkpoint, else autoregressive. The
stored setting (exit, speculation count and stop rule, tuned together) applies only when no drafting flag is given;
name one and the others take their defaults: exit L // 4, 4 speculations, no stop rule, gamma 1. Every decoding
flag's range is the one settings.RANGES writes. A flag that would do nothing (--exit with autoregressive decoding,
--top_p when greedy, ...) is refused, not ignored. --repetition_penalty and --no_repeat_ngram_size change the
distribution for drafts and verifier alike, so greedy self-speculative output still equals autoregressive output.

--prompt_file F.jsonl holds several prompts, one a line: a JSON string, or an object with a "prompt" field. They
are decoded together, at most --batch_size at once (a finished row's place goes to the next prompt), and each
row's text is printed in order once all are done; --compare checks every row against its own autoregressive run,
one prompt at a time. Any other --prompt_file is one prompt, its whole text.

The summary says why decoding stopped: max_new_tokens, a stop token or the context window. On a terminal the
text is coloured: green for drafts the verifier accepted, cyan for the verifier's corrections, magenta for its
bonus tokens, and with --stream the rejected drafts appear struck through. Piped output is plain text. On CPU,
--threads defaults to 1.
"""

import itertools
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

import torch

import layerskip as ls
from common import (DTYPES, ArgumentParser, check_device, fail, int_range, plural, round_pieces, setting_flag,
                    unfinished_tail)
from model_io import INSTALLED_MODELS, CheckpointError, chat_prompt, load_model
from settings import DEFAULT_NUM_SPECULATIONS, STRATEGIES, Settings, recommended

DEFAULT_CHECKPOINT = "checkpoints/layerskip-python-deep.pt"  # 32 layers; it stores its best exit, d, stop rule
# the start of a HumanEval-style prompt: a signature and a docstring, the function body left to the model
DEFAULT_PROMPT = 'def fibonacci(n: int) -> int:\n    """Return the n-th Fibonacci number."""\n'
MAX_CONTEXT = 2 ** 20  # --max_seq_len: RoPE tables past a million positions would fill memory, not help

# ANSI styles for the roles a token plays in self-speculative decoding (round_pieces' kinds); "token", a round
# without drafts, stays plain
ACCEPTED, CORRECTION, BONUS, REJECTED, RESET = "\033[32m", "\033[36m", "\033[35m", "\033[2;9;31m", "\033[0m"
STYLES = {"accepted": ACCEPTED, "correction": CORRECTION, "bonus": BONUS, "rejected": REJECTED}
LEGEND = {"accepted": "accepted draft", "correction": "correction", "bonus": "bonus token",
          "rejected": "rejected draft"}


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT,
                   help="our checkpoint (train.py), a Meta / Hugging Face Llama directory, a Llama GGUF file, or "
                        f"the short name of one a pip package installed ({', '.join(INSTALLED_MODELS)}) (default: "
                        "%(default)s)")
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", help="text to continue (default: a Python function header)")
    prompt.add_argument("--prompt_file", help="read the prompt from this text file (UTF-8); a .jsonl file holds "
                        "several prompts, one a line (a JSON string or {\"prompt\": ...}), decoded as a batch")
    p.add_argument("--batch_size", type=int_range(1),
                   help="with a .jsonl --prompt_file: decode at most this many prompts at once (default: all)")
    p.add_argument("--chat", action="store_true",
                   help="send the prompt as a user message under the checkpoint's chat template and decode the "
                        "answer, up to its end-of-turn token (instruct models only)")
    p.add_argument("--strategy", choices=STRATEGIES,
                   help="decoding strategy (default: self_speculative with a drafting flag or a stored setting, "
                        "else autoregressive)")
    p.add_argument("--exit", "--exit_layer", dest="exit_layer", type=setting_flag("exit_layer"),
                   help="exit layer E: the draft (or the early-exit model) runs blocks 0..E-1 (default: the "
                        "checkpoint's stored setting, which applies when none of --exit, --num_speculations, "
                        "--draft_threshold, --draft_cost, --draft_gamma is given; else L // 4)")
    p.add_argument("--num_speculations", type=setting_flag("num_speculations"),
                   help="tokens drafted per self-speculative round, at most (default: the stored setting's, as "
                        f"for --exit; else {DEFAULT_NUM_SPECULATIONS})")
    p.add_argument("--draft_threshold", type=setting_flag("draft_threshold"),
                   help="stop drafting when the draft's confidence falls below this; 0 = off (default: the stored "
                        "setting's, as for --exit; else off)")
    p.add_argument("--draft_cost", type=setting_flag("draft_cost"),
                   help="stop drafting by the cost model instead (beyond the paper): a draft step costs this "
                        "fraction of a verification, e.g. 0.13; 0 = off; --num_speculations is then the most per "
                        "round (default: the stored setting's, as for --exit; else off)")
    p.add_argument("--draft_gamma", type=setting_flag("draft_gamma"),
                   help="with --draft_cost: the draft's confidence c counts as c^gamma (default: the stored "
                        "setting's, as for --exit; else 1)")
    p.add_argument("--max_new_tokens", type=int_range(0), default=128,
                   help="tokens to generate at most (default: %(default)s)")
    p.add_argument("--temperature", type=setting_flag("temperature"), default=0.0,
                   help="0 = greedy (default); above 0 samples")
    p.add_argument("--top_k", type=setting_flag("top_k"), help="sample only among the k most likely tokens")
    p.add_argument("--top_p", type=setting_flag("top_p"),
                   help="sample only from the smallest set of tokens with this probability, in (0, 1]")
    p.add_argument("--repetition_penalty", type=setting_flag("repetition_penalty"), default=1.0,
                   help="divide the logit of every token already in the text by this (multiply if negative), "
                        "as CTRL and Hugging Face do; 1 = off (default), 1.1-1.3 curbs loops")
    p.add_argument("--no_repeat_ngram_size", type=setting_flag("no_repeat_ngram_size"), default=0,
                   help="never emit a token that would repeat an n-gram of the text; 0 = off (default)")
    p.add_argument("--seed", type=setting_flag("seed"), help="seed of the sampler (default: random, printed)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu, cuda, cuda:1, ... (default: %(default)s)")
    p.add_argument("--threads", type=int_range(1, os.cpu_count() or 1),
                   help="torch CPU threads (default on CPU: 1, fastest for small models and on a machine whose "
                        "other cores are busy; more can help a large model on idle cores)")
    p.add_argument("--dtype", choices=sorted(DTYPES),
                   help="weights and compute dtype (default: as stored; float16 runs as float32 on CPU)")
    p.add_argument("--max_seq_len", type=int_range(1, MAX_CONTEXT),
                   help="context window to allocate (default: the checkpoint's; Llama 2 4096, Llama 3 8192); "
                        "past the context it was trained with, text degrades")
    p.add_argument("--compare", action="store_true",
                   help="also decode autoregressively and print the speed-up and whether the outputs match")
    p.add_argument("--stream", action="store_true",
                   help="print each round as it is decoded (on a terminal, rejected drafts struck through)")
    return p.parse_args(argv)


def read_prompt(args) -> str:
    """The prompt text: --prompt, --prompt_file (UTF-8 text) or the default; a ValueError if it is empty."""
    if args.prompt_file is None:
        prompt = DEFAULT_PROMPT if args.prompt is None else args.prompt
        if not prompt.strip():
            raise ValueError("--prompt is empty: give some text to continue (or leave the flag out for the "
                             "default prompt)")
        return prompt
    path = Path(args.prompt_file)
    if path.is_dir():
        raise ValueError(f"--prompt_file {path} is a folder: give a text file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read --prompt_file {path} ({e.strerror}): give an existing text file") from None
    try:
        prompt = data.decode("utf-8")
        binary = "\x00" in prompt  # valid UTF-8 can still be an executable, an image, ...
    except UnicodeDecodeError:
        binary = True
    if binary:
        raise ValueError(f"--prompt_file {path} is not a text file (binary or not UTF-8): give a UTF-8 text file")
    if not prompt.strip():
        raise ValueError(f"--prompt_file {path} is empty: give a file with some text to continue")
    return prompt


def read_prompts(args) -> Optional[list[str]]:
    """The prompts of a .jsonl --prompt_file (one a line: a JSON string or an object with a "prompt" string);
    None for any other prompt source. A ValueError names the line that is wrong."""
    if args.prompt_file is None or Path(args.prompt_file).suffix != ".jsonl":
        if args.batch_size is not None:
            raise ValueError("--batch_size decodes several prompts: give them in a .jsonl --prompt_file, one a line")
        return None
    prompts = []
    for n, line in enumerate(read_prompt(args).splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"--prompt_file {args.prompt_file}, line {n}: not JSON ({e.msg}): write one JSON string "
                             f"or {{\"prompt\": ...}} a line") from None
        prompt = item.get("prompt") if isinstance(item, dict) else item
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"--prompt_file {args.prompt_file}, line {n}: no prompt: write a non-empty JSON string "
                             f"or {{\"prompt\": \"...\"}}")
        prompts.append(prompt)
    if args.stream:
        raise ValueError("--stream shows one text as it is decoded: with several prompts, drop --stream (each row "
                         "is printed when the batch is done)")
    return prompts


def check_flags_apply(args, dec: dict, n_layers: int):
    """A flag that the resolved decoding would ignore is a ValueError that says what to do, not silence."""
    strategy = dec["strategy"]
    if args.compare and strategy == "autoregressive" and not args.strategy:  # no exit given, and none stored
        raise ValueError(f"--compare needs an exit layer to draft with, and this checkpoint stores no setting: add "
                         f"--exit E (1..{n_layers})")
    if args.exit_layer is not None and strategy == "autoregressive":
        raise ValueError(f"--exit has no effect with --strategy autoregressive, which runs all {n_layers} layers: "
                         f"drop --exit, or use --strategy self_speculative or early_exit")
    for flag in ("num_speculations", "draft_threshold", "draft_cost", "draft_gamma"):
        if getattr(args, flag) is not None and strategy != "self_speculative":
            raise ValueError(f"--{flag} applies to self_speculative decoding only, not to --strategy {strategy}: "
                             f"drop --{flag}")
    if args.compare and strategy == "autoregressive":
        raise ValueError("--compare times a strategy against autoregressive decoding: with --strategy "
                         "autoregressive there is nothing to compare; drop --compare or use --strategy "
                         "self_speculative or early_exit")
    for flag in ("top_k", "top_p"):
        if getattr(args, flag) is not None and args.temperature == 0:
            raise ValueError(f"--{flag} applies to sampling only, and --temperature 0 is greedy: add --temperature "
                             f"T (e.g. 0.8) or drop --{flag}")


def settings(args, tokenizer, dec: Optional[dict] = None) -> Settings:
    """The flags as one Settings (checked when made): the strategy, exit, d and stop rule resolved (dec; none:
    autoregressive), the sampling and logits-processor flags, and the tokenizer's stop ids."""
    return Settings(**(dec or {}), temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                    seed=args.seed, repetition_penalty=args.repetition_penalty,
                    no_repeat_ngram_size=args.no_repeat_ngram_size, eos_id=tokenizer.stop_ids)


def describe(s: Settings, n_layers: int) -> str:
    words = [s.strategy]
    if s.exit_layer is not None:
        words.append(f"exit layer {s.exit_layer} of {n_layers}")
    if s.num_speculations is not None:
        words.append(plural(s.num_speculations, "speculation"))
    if s.draft_threshold:
        words.append(f"drafting stops below confidence {s.draft_threshold}")
    if s.draft_cost:
        words.append(f"drafting stops by the cost model (draft cost {s.draft_cost}, gamma {s.draft_gamma})")
    if s.temperature == 0:
        words.append("greedy")
    else:
        words.append(f"temperature {s.temperature}")
        words += [f"{name} {value}" for name, value in (("top_k", s.top_k), ("top_p", s.top_p)) if value is not None]
        words.append(f"seed {s.seed}")
    if s.repetition_penalty != 1.0:
        words.append(f"repetition penalty {s.repetition_penalty}")
    if s.no_repeat_ngram_size:
        words.append(f"no repeated {s.no_repeat_ngram_size}-grams")
    return ", ".join(words)


def round_text(pieces: list[tuple[str, str]], colour: bool, show_rejected: bool) -> str:
    """One round's (text, kind) pieces (common.round_pieces) as printed: rejected drafts only if shown, each run of
    one kind in its colour (STYLES) when asked; rounds without drafts stay plain."""
    out = ""
    for kind, run in itertools.groupby((p for p in pieces if show_rejected or p[1] != "rejected"), key=lambda p: p[1]):
        text = "".join(t for t, _ in run)
        out += f"{STYLES[kind]}{text}{RESET}" if colour and text and kind in STYLES else text
    return out


def decode(stream, tokenizer, prompt_ids, live: bool, colour: bool, drafting: bool) -> ls.Generation:
    """Consume generate_stream's rounds and print their text: as each is decoded (live; the time then includes
    printing, as the reader sees it, and rejected drafts show on a terminal), or all at once after. drafting:
    self-speculative decoding, where a round without drafts (no room left to draft) ends on a bonus token."""
    context = list(prompt_ids)

    def show(event):
        pieces = [(t, "bonus" if drafting and kind == "token" else kind)
                  for t, kind in round_pieces(tokenizer, event, context)]
        print(round_text(pieces, colour, show_rejected=live and colour), end="", flush=live)
        context.extend(event.tokens)

    start = time.perf_counter()
    if live:
        events = []
        for event in stream:
            show(event)
            events.append(event)
        seconds = time.perf_counter() - start
    else:
        events = list(stream)
        seconds = time.perf_counter() - start
        for event in events:
            show(event)
    # a half-decoded character the pieces held back for a token that, decoding over, will not come
    print(unfinished_tail(tokenizer, context, len(tokenizer.decode(prompt_ids))), flush=True)
    return ls.Generation.from_events(events, seconds)


def stop_reason(g: ls.Generation, n_prompt: int, max_new_tokens: int, context: int, stop_ids) -> str:
    """Why decoding ended: a stop token, the context window (before max_new_tokens), or max_new_tokens."""
    if g.tokens and g.tokens[-1] in stop_ids:
        return f"a stop token (id {g.tokens[-1]})"
    if len(g.tokens) < max_new_tokens and n_prompt + len(g.tokens) >= context:
        return f"the context window of {context} tokens (prompt {n_prompt} + {len(g.tokens)} new)"
    return f"max_new_tokens ({max_new_tokens})"


def summary(g: ls.Generation, s: Settings, stopped: str) -> str:
    drafted = s.strategy == "self_speculative" and g.drafted  # n/a when nothing was drafted
    rate = f"acceptance rate {g.acceptance_rate:.0%}" if drafted else "acceptance rate n/a"
    return (f"{plural(len(g.tokens), 'token')} in {g.seconds:.2f} s: {g.tokens_per_s:.1f} tokens/s | {rate} | "
            f"{g.tokens_per_round:.2f} tokens per round ({plural(g.rounds, 'round')}) | stopped at {stopped}")


def compare_verdict(ar_tokens: list, tokens: list, s: Settings, dtype: torch.dtype) -> str:
    """--compare's word on the two outputs: greedy self-speculative ones must match in float32; sampled ones and early
    exit's (the first E blocks: another, smaller model) need not."""
    if s.strategy == "early_exit" and ar_tokens != tokens:
        return "early exit: outputs differ by design (exit E is a smaller model than the full one)"
    if s.temperature > 0:
        return "sampling: outputs differ by design (the same distribution, other random draws)"
    if ar_tokens == tokens:
        return "outputs identical"
    first = next((i for i, (a, b) in enumerate(zip(ar_tokens, tokens)) if a != b), min(len(ar_tokens), len(tokens)))
    verdict = f"outputs differ from token {first} on"
    if dtype != torch.float32:
        verdict += (f" (in {str(dtype)[6:]}, near-ties can flip greedy choices: identical outputs are a float32 "
                    f"guarantee)")
    return verdict


def print_header(args, model, tokenizer, s: Settings, prompt_ids, colour: bool):
    """The checkpoint, the decoding setting and where it runs; the colour legend on a terminal."""
    p = model.params
    trained = getattr(model, "trained_context", None)
    if args.max_seq_len and trained and args.max_seq_len > trained:
        print(f"generate.py: warning: --max_seq_len {args.max_seq_len} is past the {trained} tokens of context "
              f"this checkpoint was trained with: text past position {trained} will likely degrade", file=sys.stderr)
    n_params = sum(t.numel() for t in model.parameters())
    print(f"checkpoint {args.checkpoint}: {p.n_layers} layers, {n_params / 1e6:.1f}M parameters, context "
          f"{p.max_seq_len}, {tokenizer.kind} tokenizer of {tokenizer.vocab_size} tokens")
    room = p.max_seq_len - len(prompt_ids)
    fits = f" ({room} fit the context window of {p.max_seq_len})" if room < args.max_new_tokens else ""
    where = f"{args.device} {str(model.tok_embeddings.weight.dtype)[6:]}"
    if torch.device(args.device).type == "cpu":
        where += f", {plural(torch.get_num_threads(), 'thread')}"
    print(f"decoding: {describe(s, p.n_layers)} | prompt {plural(len(prompt_ids), 'token')}, up to "
          f"{args.max_new_tokens} new{fits} | {where}")
    if colour and s.strategy == "self_speculative":
        shown = [k for k in STYLES if k != "rejected" or args.stream]
        print("colours: " + " ".join(f"{STYLES[k]}{LEGEND[k]}{RESET}" for k in shown))


def print_comparison(model, prompt_ids, args, s: Settings, ar: Settings, g: ls.Generation):
    """--compare: decode autoregressively with the same sampling, stop ids and processors (ar); speedup, verdict.
    The same stop ids matter: otherwise the two could stop at different places."""
    a = ls.generate(model, prompt_ids, args.max_new_tokens, ar)
    print(f"autoregressive: {plural(len(a.tokens), 'token')} in {a.seconds:.2f} s: {a.tokens_per_s:.1f} tokens/s")
    verdict = compare_verdict(a.tokens, g.tokens, s, model.tok_embeddings.weight.dtype)
    if a.tokens and g.tokens:
        print(f"speedup {a.time_per_token / g.time_per_token:.2f}x ({1000 * a.time_per_token:.1f} ms/token "
              f"autoregressive, {1000 * g.time_per_token:.1f} ms/token {s.strategy}) | {verdict}")
    else:
        print(f"speedup n/a (no tokens generated) | {verdict}")


def run_batch(args, model, tokenizer, s: Settings, ar: Settings, prompts: list[str]):
    """Several prompts decoded together (layerskip.generate_stream with a list), printed row by row; --compare:
    each row against its own autoregressive run, and the batch's throughput against those runs'."""
    chats = [chat_prompt(tokenizer, p) for p in prompts] if args.chat else [(p, tokenizer.encode(p)) for p in prompts]
    ids = [i for _, i in chats]
    stream = ls.generate_stream(model, ids, args.max_new_tokens, s, args.batch_size)  # checks every row first
    colour = sys.stdout.isatty()
    print_header(args, model, tokenizer, s, max(ids, key=len), colour)
    B = min(args.batch_size or len(ids), len(ids))
    print(f"batch: {plural(len(ids), 'prompt')}, at most {B} decoded at once")
    if args.compare:  # warm up both strategies (allocator, kernels) so that neither pays first-call costs
        for warm in (s, ar):
            ls.generate(model, ids[:B], min(8, args.max_new_tokens), warm)
    events, seconds, start = [[] for _ in ids], [0.0] * len(ids), time.perf_counter()
    for rounds in stream:
        for b, event in enumerate(rounds):
            if event is not None:
                events[b].append(event)
                seconds[b] = time.perf_counter() - start
    total = time.perf_counter() - start
    gens = []
    for b, ((text, prompt_ids), row) in enumerate(zip(chats, events)):
        print(f"{'-' * 30} prompt {b + 1} of {len(ids)} {'-' * 30}")
        print(text, end="")
        g = decode(iter(row), tokenizer, prompt_ids, False, colour, s.strategy == "self_speculative")
        g.seconds = seconds[b]
        gens.append(g)
        stopped = stop_reason(g, len(prompt_ids), args.max_new_tokens, model.params.max_seq_len, s.stop_ids)
        print(f"[{summary(g, s, stopped)}]")
    print("-" * 80)
    n_tokens = sum(len(g.tokens) for g in gens)
    print(f"all prompts: {plural(n_tokens, 'token')} in {total:.2f} s: {n_tokens / total:.1f} tokens/s "
          f"({s.strategy}, at most {B} at once)")
    if args.compare:
        ar_seconds, identical = 0.0, 0
        for b, (prompt_ids, g) in enumerate(zip(ids, gens)):
            a = ls.generate(model, prompt_ids, args.max_new_tokens, replace(ar, seed=s.seed + b))  # row b's stream
            ar_seconds += a.seconds
            verdict = compare_verdict(a.tokens, g.tokens, s, model.tok_embeddings.weight.dtype)
            identical += verdict == "outputs identical"
            print(f"prompt {b + 1}: {verdict}")
        ar_tokens_per_s = n_tokens / ar_seconds if ar_seconds else float("inf")
        print(f"autoregressive, one prompt at a time: {ar_tokens_per_s:.1f} tokens/s | this batch "
              f"{n_tokens / total / ar_tokens_per_s:.2f}x that | {identical} of {len(ids)} rows identical")


def run(args):
    check_device(args.device)
    if args.checkpoint == DEFAULT_CHECKPOINT and not Path(DEFAULT_CHECKPOINT).exists():
        raise CheckpointError(f"{DEFAULT_CHECKPOINT} does not exist yet: pass --checkpoint PATH, e.g. "
                              f"out/toy after `python train.py --preset toy --out_dir out/toy`")
    prompts = read_prompts(args)
    prompt = read_prompt(args) if prompts is None else None
    if args.seed is None:
        args.seed = int(torch.randint(0, 2**31 - 1, ()).item())
    threads = args.threads or (1 if torch.device(args.device).type == "cpu" else None)
    if threads:  # before loading: loading uses the threads too
        torch.set_num_threads(threads)
    model, tokenizer = load_model(args.checkpoint, device=args.device, dtype=DTYPES.get(args.dtype),
                                  max_seq_len=args.max_seq_len)
    drafting = (args.exit_layer, args.num_speculations, args.draft_threshold, args.draft_cost, args.draft_gamma)
    strategy = args.strategy or ("self_speculative" if any(v is not None for v in drafting[1:]) else None)
    dec = recommended(model, strategy, *drafting)  # a drafting flag alone means self-speculative decoding
    check_flags_apply(args, dec, model.params.n_layers)
    s, ar = settings(args, tokenizer, dec), settings(args, tokenizer)  # ar: --compare's autoregressive twin
    if prompts is not None:
        return run_batch(args, model, tokenizer, s, ar, prompts)
    if args.chat:  # shown as the model sees it: the template around the question
        prompt, prompt_ids = chat_prompt(tokenizer, prompt)
    else:
        prompt_ids = tokenizer.encode(prompt)
    # generate_stream checks every argument at the call (exit layer, a prompt too long for the context, ...):
    # bad input stops here, before anything is printed
    stream = ls.generate_stream(model, prompt_ids, args.max_new_tokens, s)
    colour = sys.stdout.isatty()
    print_header(args, model, tokenizer, s, prompt_ids, colour)
    if args.compare:  # warm up both strategies (allocator, kernels) so that neither pays first-call costs
        for warm in (s, ar):
            ls.generate(model, prompt_ids, min(8, args.max_new_tokens), warm)
    print("-" * 80)
    print(prompt, end="")
    g = decode(stream, tokenizer, prompt_ids, args.stream, colour, s.strategy == "self_speculative")
    print("-" * 80)
    print(summary(g, s, stop_reason(g, len(prompt_ids), args.max_new_tokens, model.params.max_seq_len, s.stop_ids)))
    if args.compare:
        print_comparison(model, prompt_ids, args, s, ar, g)


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
