"""
Peak memory (--memory): each decoder in a fresh process, so that one's peak does not hide the other's. A spawned
process starts with the resource usage (ru_maxrss) of the process that started it, so the peak is read from the
fresh process's own memory map instead (/proc/self/status on Linux).
"""

import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor

import torch

import layerskip as ls
from common import crop_prompt
from model_io import load_model


def resident_bytes(field: str) -> int:
    """VmHWM (peak) or VmRSS (now) of this process, from /proc/self/status; elsewhere ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field + ":"))
    except (OSError, StopIteration):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def peak_memory(checkpoint, prompt, max_new_tokens, kwargs, threads) -> dict:
    """Load the model, decode the prompt once, and return the process's peak memory (CUDA: peak allocation) and
    how far decoding rose above the memory held once the model was loaded. Meant for a fresh process."""
    torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tok = load_model(checkpoint, device=device)
    ids = crop_prompt(model, tok.encode(prompt), max_new_tokens)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        loaded = torch.cuda.memory_allocated()
    else:
        loaded = resident_bytes("VmRSS")
    ls.generate(model, ids, max_new_tokens, eos_id=tok.stop_ids, seed=0, **kwargs)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else resident_bytes("VmHWM")
    return {"peak_bytes": peak, "above_loaded_bytes": peak - loaded}


def measure_memory(checkpoint, settings: dict, prompt, max_new_tokens, threads) -> dict:
    """{name: peak_memory(...)} for each name -> generate kwargs, each in its own fresh ('spawn') process."""
    out = {}
    for name, kwargs in settings.items():
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            out[name] = pool.submit(peak_memory, str(checkpoint), prompt, max_new_tokens, kwargs, threads).result()
    return out


def print_memory(mem: dict):
    a, s = mem["autoregressive"], mem["self_speculative"]
    print(f"peak memory: autoregressive {a['peak_bytes'] / 2**20:.1f} MiB, self-speculative "
          f"{s['peak_bytes'] / 2**20:.1f} MiB ({100 * (s['peak_bytes'] / a['peak_bytes'] - 1):+.1f}%); decoding "
          f"above the loaded model: {a['above_loaded_bytes'] / 2**20:.1f} vs {s['above_loaded_bytes'] / 2**20:.1f} MiB")
