"""
Peers (--peers): Hugging Face transformers decoding the same weights, greedy, in the same interleaved run as ours.
export.py writes the Hugging Face folder (run as a program: a script does not import another); transformers loads
it. transformers is optional: only --peers needs it.
"""

import subprocess
import sys
import time
from pathlib import Path

import torch

import layerskip as ls
from benchmarks.timing import self_speculative_name, summarize
from common import fail

PEER_AR = "transformers autoregressive"
ASSISTANT_SETTINGS = ("num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold")
EXPORT = Path(__file__).resolve().parents[1] / "export.py"


def peer_early_exit_name(E: int) -> str:
    return f"transformers assistant_early_exit={E}"


def check_peers_installed():
    """transformers is optional: only --peers needs it, and 4.47 or newer for generate(assistant_early_exit=E)."""
    try:
        import transformers
    except ImportError:
        fail("--peers times Hugging Face transformers on the same weights, and it is not installed: "
             "pip install transformers")
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    if (major, minor) < (4, 47):
        fail(f"--peers needs transformers 4.47 or newer for assistant_early_exit, found {transformers.__version__}: "
             f"pip install -U transformers")


def load_peer(checkpoint, folder):
    """transformers' LlamaForCausalLM on the checkpoint's weights, float32, exported into `folder` by export.py.
    A failed export is a one-line error, before anything is timed."""
    import transformers
    out = Path(folder) / "hf"
    proc = subprocess.run([sys.executable, str(EXPORT), str(checkpoint), str(out),
                           "--format", "hf"], capture_output=True, text=True)
    if proc.returncode:
        why = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        fail(f"--peers converts --checkpoint {checkpoint} for transformers, and that failed: {why}")
    # transformers' own notices would break into the table: a progress bar while it loads, and a deprecation
    # warning that its assistant_early_exit path raises inside generate (from its own call, not ours)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    dtype = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"  # 4.x's name
    return transformers.AutoModelForCausalLM.from_pretrained(out, **{dtype: torch.float32}).eval()


def peer_setting(hf) -> dict:
    """The draft length, its schedule and the confidence threshold generate(assistant_early_exit=E) will use: the
    export's generation_config.json (our stored d and threshold), else transformers' defaults, which transformers 5
    fills in at generate time (4.x has them in GenerationConfig itself)."""
    import transformers
    gc = hf.generation_config
    defaults = gc._get_default_generation_params() if hasattr(gc, "_get_default_generation_params") else {}
    unset = [key for key in ASSISTANT_SETTINGS if getattr(gc, key, None) is None]
    return {"transformers": transformers.__version__,
            **{key: defaults.get(key) if key in unset else getattr(gc, key) for key in ASSISTANT_SETTINGS},
            "transformers_defaults": unset}


def up_to_stop(tokens: list, stop_ids) -> list:
    """tokens up to and including the first stop id (transformers pads a finished row on after it)."""
    return tokens[:next((k + 1 for k, t in enumerate(tokens) if t in stop_ids), len(tokens))]


def peer_decode(hf, stop_ids, **generate_kwargs):
    """A decode function for common.interleaved_runs: transformers' greedy generate on our token ids, stopping at
    our stop ids, as an ls.Generation of the new tokens up to and including the first stop id. It reports no
    rounds or drafts, so its acceptance is unknown."""
    stops = sorted(stop_ids)

    def decode(ids, max_new_tokens):
        x = torch.tensor([ids])
        start = time.perf_counter()
        out = hf.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=max_new_tokens,
                          eos_token_id=stops, pad_token_id=stops[0], **generate_kwargs)
        seconds = time.perf_counter() - start
        return ls.Generation(tokens=up_to_stop(out[0, len(ids):].tolist(), stop_ids), seconds=seconds, rounds=0,
                             drafted=0, accepted=0)
    return decode


def peer_batch_decode(hf, stop_ids):
    """transformers' batched greedy generate (left-padded, with an attention mask) on our token ids: the new
    tokens of each row up to and including its first stop id."""
    stops = sorted(stop_ids)

    def decode(batch, max_new_tokens):
        T = max(map(len, batch))
        x = torch.tensor([[stops[0]] * (T - len(ids)) + ids for ids in batch])
        mask = torch.tensor([[0] * (T - len(ids)) + [1] * len(ids) for ids in batch])
        out = hf.generate(x, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                          eos_token_id=stops, pad_token_id=stops[0])[:, T:].tolist()
        return [up_to_stop(row, stop_ids) for row in out]
    return decode


def peer_variants(hf, model, tok, exit_layer: int, processors: dict) -> dict:
    """transformers' autoregressive and early-exit self-speculative decoding, at our exit and with our logits
    processors (the same two, under the same names); encoded and cropped with our model and tokenizer."""
    return {PEER_AR: (model, tok, {"decode": peer_decode(hf, tok.stop_ids, **processors)}),
            peer_early_exit_name(exit_layer): (model, tok, {"decode": peer_decode(
                hf, tok.stop_ids, assistant_early_exit=exit_layer, **processors)})}


def peer_results(totals: dict, outputs: dict, setting: dict) -> dict:
    """Ours against transformers' on the same weights (medians over passes of ratios within a pass), and whether
    each of its greedy outputs equals our autoregressive output, token for token."""
    ee, ss = peer_early_exit_name(setting["exit_layer"]), self_speculative_name(setting)
    vs_their_ar, vs_their_ee = summarize(totals, PEER_AR), summarize(totals, ee)
    return {"identical": {n: outputs[n] == outputs["autoregressive"] for n in (PEER_AR, ee)},
            "self_speculative_over_theirs": vs_their_ee[ss]["speedup"],
            "autoregressive_over_theirs": vs_their_ar["autoregressive"]["speedup"],
            "their_speedup": vs_their_ar[ee]["speedup"]}


def print_peers(results: dict, setting: dict, peer: dict):
    """transformers' setting, the equality checks and the ratios of tokens/s, under a table with peer rows."""
    r = results["peers"]
    used = ", ".join(f"{k} {peer[k]}" + (" (transformers' default)" if k in peer["transformers_defaults"] else "")
                     for k in ASSISTANT_SETTINGS)
    print(f"transformers {peer['transformers']} on the same weights (export.py --format hf, float32); its "
          f"assistant_early_exit={setting['exit_layer']} drafts with {used}")
    print("greedy output identical to our autoregressive output, token for token: "
          + ", ".join(f"{n} {same}" for n, same in r["identical"].items()))
    print(f"our self-speculative tokens/s = {r['self_speculative_over_theirs']:.2f} x transformers "
          f"assistant_early_exit's; our autoregressive = {r['autoregressive_over_theirs']:.2f} x transformers "
          f"autoregressive; transformers' own speedup {r['their_speedup']:.2f}x, ours "
          f"{results['summary'][self_speculative_name(setting)]['speedup']:.2f}x")
