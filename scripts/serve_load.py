"""
Load test of the demo's API: N clients call /generate at once, against a server that batches requests
(demo_app.py --batch_size B) and against one that decodes one request at a time (--batch_size 1), both started
here on 127.0.0.1, one after the other, on the same machine. Reports per server: requests served and refused,
latency p50 / p95 (submit to last update), total tokens/s (every client's new tokens over the wall time of the
whole burst), and whether every client's text equals its prompt decoded alone (layerskip.generate, batch 1).

    python scripts/serve_load.py                         # 32 clients, batch 8 vs 1, the first 32 HumanEval prompts
    python scripts/serve_load.py --clients 16 --batch_size 4 --max_new_tokens 32
"""

import json
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import layerskip as ls  # noqa: E402
from common import ArgumentParser, checked, fail, int_range, machine, prompt_set  # noqa: E402
from model_io import load_model  # noqa: E402
from settings import Settings, recommended  # noqa: E402

CHECKPOINT = "checkpoints/layerskip-python-deep.pt"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(batch_size: int, max_queue: int, log):
    """demo_app.py on a free loopback port, one torch thread; returns (process, url) once it answers."""
    from gradio_client import Client
    port = free_port()
    proc = subprocess.Popen([sys.executable, "demo_app.py", "--host", "127.0.0.1", "--port", str(port),
                             "--batch_size", str(batch_size), "--max_queue", str(max_queue)], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1"))
    url, deadline = f"http://127.0.0.1:{port}", time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            fail(f"demo_app.py --batch_size {batch_size} exited with code {proc.returncode}: see {log.name}")
        try:
            Client(url, verbose=False)
            return proc, url
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(1)
    proc.kill()
    fail(f"demo_app.py did not answer within 180 s: see {log.name}")


def burst(url: str, prompts: list[str], max_new_tokens: int) -> dict:
    """Every prompt from its own client thread, all released at once; each client's latency and final text."""
    from gradio_client import Client
    n = len(prompts)
    clients = [Client(url, verbose=False) for _ in range(n)]
    results, gate = [None] * n, threading.Barrier(n + 1)

    def one(i):
        gate.wait()
        t0 = time.perf_counter()
        try:
            _, _, text, error = clients[i].submit(prompt=prompts[i], max_new_tokens=max_new_tokens,
                                                  api_name="/generate").result(timeout=1800)
            results[i] = dict(seconds=time.perf_counter() - t0, text=text, error=error)
        except Exception as e:  # noqa: BLE001 - a refused or failed request is counted, not raised
            results[i] = dict(seconds=time.perf_counter() - t0, text=None, error=f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    gate.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return dict(wall=time.perf_counter() - start, results=results)


def main(argv=None):
    p = ArgumentParser(description=__doc__)
    p.add_argument("--clients", type=int_range(1, 256), default=32, help="concurrent clients (default 32)")
    p.add_argument("--batch_size", type=int_range(2, 256), default=8, help="the batching server's batch size")
    p.add_argument("--max_new_tokens", type=int_range(1, 256), default=64, help="tokens each client asks for")
    p.add_argument("--prompts", default="humaneval", help="humaneval, dev, or a file with one prompt a line")
    p.add_argument("--json", help="write the numbers to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    prompts = checked(prompt_set, args.prompts)[:2 * args.clients]
    model, tok = load_model(ROOT / CHECKPOINT)
    fits = [q for q in prompts if len(tok.encode(q)) + args.max_new_tokens < model.params.max_seq_len]
    if not fits:
        fail(f"--prompts {args.prompts}: no prompt leaves room for {args.max_new_tokens} new tokens")
    prompts = (fits * args.clients)[:args.clients]
    stored = recommended(model)  # the demo's defaults: the stored setting, greedy, seed 0
    setting = Settings(**stored, eos_id=tok.stop_ids, seed=0)
    print(f"# {shlex.join(['python', 'scripts/serve_load.py', *(sys.argv[1:] if argv is None else argv)])}")
    print(f"# machine: {machine()}; demo at its defaults (the stored setting: {stored})")
    alone = [ls.generate(model, tok.encode(q), args.max_new_tokens, setting).tokens
             for q in prompts]  # what each client must see: its prompt decoded alone, as the demo shows it
    want = [tok.decode(tok.encode(q) + new)[len(tok.decode(tok.encode(q))):] for q, new in zip(prompts, alone)]
    report = {"clients": args.clients, "max_new_tokens": args.max_new_tokens, "machine": machine(), "servers": {}}
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        for B in (args.batch_size, 1):
            with open(Path(tmp) / f"server-{B}.log", "w") as log:
                proc, url = start_server(B, max(64, 2 * args.clients), log)
                try:
                    out = burst(url, prompts, args.max_new_tokens)
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)
            ok = [r for r in out["results"] if r["text"] is not None and not r["error"]]
            tokens = sum(len(new) for new, r in zip(alone, out["results"]) if r in ok)
            lat = sorted(r["seconds"] for r in ok)
            row = {"served": len(ok), "refused": args.clients - len(ok),
                   "identical": sum(r["text"] == w for r, w in zip(out["results"], want)),
                   "p50_s": statistics.median(lat) if lat else None,
                   "p95_s": lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else None,
                   "wall_s": out["wall"], "tokens_per_s": tokens / out["wall"],
                   "errors": sorted({r["error"] for r in out["results"] if r["error"]})[:3]}
            report["servers"][f"batch_size {B}"] = row
            print(f"--batch_size {B}: served {row['served']}/{args.clients}, identical to batch 1: "
                  f"{row['identical']}/{args.clients}, latency p50 {row['p50_s']:.1f} s, p95 {row['p95_s']:.1f} s, "
                  f"{row['tokens_per_s']:.1f} tokens/s in all ({row['wall_s']:.1f} s wall)"
                  + (f"; errors: {row['errors']}" if row["errors"] else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
