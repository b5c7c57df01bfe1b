"""
What the scripts share, and nothing of the method. Imports flow one way:

    settings.py  <-  layerskip.py  <-  model_io.py  <-  common.py  <-  the scripts (train.py, generate.py, bench.py,
                                                                   eval.py, onpolicy.py, demo_app.py, export.py)

Here: one-line errors, flag checks (decoding settings in their settings.RANGES), devices, prompts cut to fit the
context window, text files and prompt sets read with one-line errors, one decoding round as pieces of text, and
the machine a number was measured on.
"""

import argparse
import math
import os
import platform
import sys
from pathlib import Path
from typing import NoReturn, Optional

import torch

import layerskip as ls
from layerskip import Round
from model_io import token_texts
from settings import RANGES

# ---------------------------------------------------------------------------------------------------------
# Errors: bad input gets one line that says what to do, exit code 2 (argparse's), and never a traceback.


def fail(message: str) -> NoReturn:
    """Print `script.py: error: message` on stderr and exit with code 2."""
    print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)
    sys.exit(2)


def checked(function, *args, **keywords):
    """function(*args, **keywords); a ValueError it raises (a bad flag, file or checkpoint: CheckpointError is one)
    becomes the one-line error."""
    try:
        return function(*args, **keywords)
    except ValueError as e:
        fail(str(e))


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with its errors on one line (no usage block) that point to --help."""

    def __init__(self, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(**kwargs)

    def error(self, message):
        fail(f"{message} (see --help)")


def int_range(low: int, high: Optional[int] = None):
    """An argparse type: a whole number in [low, high]."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            span = f"{low}..{high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {span}, got {value}")
        return value
    return parse


# The most torch CPU threads a --threads flag takes: a bound that does not depend on the machine, so that a
# command parses the same everywhere, while a typo of a million threads is refused before torch tries it.
MAX_THREADS = 1024


def float_range(low: Optional[float] = None, high: Optional[float] = None, low_open: bool = False):
    """An argparse type: a finite number in [low, high] ((low, high] if low_open); never NaN or infinity."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        below = low is not None and (value <= low if low_open else value < low)
        if not math.isfinite(value) or below or (high is not None and value > high):
            lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
            hi = "" if high is None else f"<= {high}"
            span = " and ".join(s for s in (lo, hi) if s) or "finite"
            raise argparse.ArgumentTypeError(f"must be a finite number {span}, got {text}")
        return value
    return parse


def setting_flag(name: str):
    """An argparse type for the decoding setting `name`, in its range from settings.RANGES (written there once)."""
    def parse(text):
        try:
            value = int(text)  # whole numbers exactly, past 2^53 too (seeds)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        try:
            return RANGES[name].check(name, value)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return parse


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}  # --dtype's choices


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def fmt_bytes(n) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def fmt_time(seconds) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


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


def crop_prompt(model, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """The prompt's last tokens, as many as leave room for max_new_tokens in the context window (at least one)."""
    return prompt_ids[-max(1, model.params.max_seq_len - max_new_tokens - 1):]


def read_text(path, flag: str) -> str:
    """The UTF-8 text of the file a flag names; a ValueError says what is wrong (missing, a folder, not text)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} {path}: is a folder; give a text file")
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{flag} {path}: no such file") from None
    except UnicodeDecodeError:
        raise ValueError(f"{flag} {path}: not UTF-8 text; give a text file") from None
    except OSError as e:
        raise ValueError(f"{flag} {path}: cannot be read ({e.strerror})") from None


def prompt_set(name: str, flag: str = "--prompts") -> list[str]:
    """Benchmark prompts: 'humaneval' (164 function headers), 'dev' (40 function headers from held-out corpus files:
    what settings are tuned on), 'shakespeare' (held-out passages), or a UTF-8 text file with one prompt per
    non-empty line (each given back with its newline). A ValueError names the problem."""
    if name in ("humaneval", "dev", "shakespeare"):
        from data.prepare import load_prompts
        return load_prompts(name)
    if not Path(name).exists():
        raise ValueError(f"{flag} {name}: not humaneval, dev, shakespeare or an existing text file (one prompt a line)")
    prompts = [line + "\n" for line in read_text(name, flag).splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{flag} {name}: has no prompts; write one prompt a line")
    return prompts


# ---------------------------------------------------------------------------------------------------------
# A round as text. Pieces keep sentencepiece's leading spaces and hold a half-decoded character back for the
# token that completes it (model_io.token_texts); unfinished_tail gives what is still held at the end.


def round_pieces(tokenizer, event: Round, context: list[int]) -> list[tuple[str, str]]:
    """The text one round adds after the tokens `context`, as (text, kind) in reading order. A round with drafts
    gives its accepted drafts, its rejected drafts (where they would have stood, for those who show them), then
    the verifier's own token: a "correction" at the first rejected draft, a "bonus" when all were accepted.
    A round without drafts gives one "token": every autoregressive and early-exit round, and a self-speculative
    round at the end of the budget that had no room to draft (its token is then a bonus, for whoever knows)."""
    a, drafted = event.accepted, event.drafted
    if not drafted:
        return [(text, "token") for text in token_texts(tokenizer, event.tokens, context)]
    pieces = [(text, "accepted") for text in token_texts(tokenizer, drafted[:a], context)]
    pieces += [(text, "rejected") for text in token_texts(tokenizer, drafted[a:], context + drafted[:a])]
    if event.token is not None:
        kind = "bonus" if a == len(drafted) else "correction"
        pieces += [(text, kind) for text in token_texts(tokenizer, [event.token], context + drafted[:a])]
    return pieces


def unfinished_tail(tokenizer, ids: list[int], start: int = 0) -> str:
    """The trailing incomplete character (decoded as U+FFFD) of decode(ids) past character `start`: the pieces
    held it back for a token that, once decoding has ended, will not come."""
    full = tokenizer.decode(ids)
    return full[max(len(full.rstrip("\ufffd")), start):]


# ---------------------------------------------------------------------------------------------------------
# Timing. On a shared machine, slow spells come and go: every measurement interleaves its variants, rotating
# which goes first, repeats the whole pass, and reports medians of ratios measured in the same pass.


def interleaved_runs(variants: dict, prompts: list[str], max_new_tokens: int, repeats: int):
    """Decode every prompt with every variant, `repeats` passes over the prompts, and yield (pass, prompt index,
    variant name, Generation) after each run. variants: name -> (model, tokenizer, ls.generate's setting keywords); each
    variant encodes the prompt text with its own tokenizer, cropped to fit (crop_prompt). A variant whose kwargs
    hold "decode" runs that instead of ls.generate: decode(prompt_ids, max_new_tokens) -> Generation (another
    library's generate, say). The order of the variants rotates prompt by prompt, so that none always runs first;
    each decodes a few tokens first (warm-up)."""
    names = list(variants)
    encoded = {name: [crop_prompt(model, tok.encode(p), max_new_tokens) for p in prompts]
               for name, (model, tok, _) in variants.items()}

    def run(name, ids, n):
        model, tok, kw = variants[name]
        if "decode" in kw:
            return kw["decode"](ids, n)
        return ls.generate(model, ids, n, eos_id=tok.stop_ids, seed=0, **kw)

    for name in names:
        run(name, encoded[name][0], min(4, max_new_tokens))
    for r in range(repeats):
        for i in range(len(prompts)):
            k = (r * len(prompts) + i) % len(names)
            for name in names[k:] + names[:k]:
                yield r, i, name, run(name, encoded[name][i], max_new_tokens)


# ---------------------------------------------------------------------------------------------------------
# Where a number was measured: printed beside every benchmark result.


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{cpu}, {os.cpu_count()} cores"
    return f"{dev}; torch {torch.__version__}, {torch.get_num_threads()} threads; Python {platform.python_version()}"


def device_memory(device) -> Optional[int]:
    """Bytes of memory on a device: a CUDA GPU's own, the machine's RAM for "cpu"; None where unknown (mps)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "cpu":
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, OSError, ValueError):  # not a POSIX system
            return None
    return None
