"""
Serve several users at once: requests that arrive together decode together, as one batch; and the models a
server may load (Models: only the checkpoints it serves, a few kept loaded).

A Batcher owns a worker thread. Callers submit a prompt with their decoding setting (a settings.Settings) and get
back an iterator of their own rounds (layerskip.Round) with the seconds their batch has decoded so far, live. The
worker takes the oldest waiting request, joins every other waiting request with the same model and the same setting
but for its seed (up to batch_size of them), and decodes them with one layerskip.generate_stream over the list, each
row with its own seed; each round's events go to their requests' own queues. Requests that arrive while a batch
decodes wait for the next one. Each row's tokens are those of decoding it alone (layerskip's batched decoding is
exact), so a user sees the same text whoever else is served beside them.

    batcher = Batcher(batch_size=8, max_waiting=64)
    setting = Settings(strategy="self_speculative", exit_layer=4, num_speculations=3, eos_id=tok.stop_ids, seed=0)
    for event, seconds in batcher.submit(model, prompt_ids, 64, setting):
        print(event.tokens, f"{seconds:.2f} s")
"""

import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import layerskip as ls
from model_io import INSTALLED_MODELS, installed_model, load_model
from settings import Settings

DONE = object()  # the end of a request's stream


def timed(stream) -> Iterator:
    """generate_stream's rounds alone, as a Batcher gives them: (round, seconds spent decoding so far). Only the
    time inside the stream counts, not the caller's between rounds."""
    seconds = 0.0
    while True:
        t0 = time.perf_counter()
        event = next(stream, None)
        seconds += time.perf_counter() - t0
        if event is None:
            return
        yield event, seconds


class Busy(RuntimeError):
    """The waiting line is full: the caller should try again shortly."""


@dataclass
class Request:
    model: object
    prompt_ids: list
    max_new_tokens: int
    settings: Settings
    events: queue.Queue = field(default_factory=queue.Queue)

    def joins(self, other: "Request") -> bool:
        """Whether this request may share other's batch: the same model and setting, the seed aside."""
        return self.model is other.model and replace(self.settings, seed=None) == replace(other.settings, seed=None)


class Batcher:
    def __init__(self, batch_size: int = 8, max_waiting: int = 64):
        if batch_size < 1 or max_waiting < 1:
            raise ValueError(f"batch_size and max_waiting must be at least 1, got {batch_size} and {max_waiting}")
        self.batch_size, self.max_waiting = batch_size, max_waiting
        self.waiting: list[Request] = []
        self.lock = threading.Condition()
        self.batches = 0  # batches decoded so far, and the largest: what the tests and the load test read
        self.largest = 0
        threading.Thread(target=self.work, daemon=True, name="batcher").start()

    def submit(self, model, prompt_ids, max_new_tokens: int, settings: Settings = Settings()) -> Iterator:
        """Queue a request and return its rounds as they are decoded. Its arguments are checked here, at the call
        (generate_stream's ValueError), and a full waiting line raises Busy, both before anything waits."""
        if isinstance(settings.seed, (list, tuple)):
            raise ValueError("a request has one prompt: give one seed (an int), not a list")
        ls.generate_stream(model, prompt_ids, max_new_tokens, settings)  # checks, decodes nothing
        request = Request(model, list(prompt_ids), max_new_tokens, settings)
        with self.lock:
            if len(self.waiting) >= self.max_waiting:
                raise Busy(f"the server is busy: {len(self.waiting)} requests are waiting; try again shortly")
            self.waiting.append(request)
            self.lock.notify()
        return self.stream(request)

    @staticmethod
    def stream(request: Request) -> Iterator:
        while (event := request.events.get()) is not DONE:
            if isinstance(event, Exception):
                raise event
            yield event

    def next_batch(self) -> list[Request]:
        """The oldest waiting request and up to batch_size - 1 more that can share its batch, in arrival order."""
        with self.lock:
            while not self.waiting:
                self.lock.wait()
            batch = [r for r in self.waiting if r.joins(self.waiting[0])][:self.batch_size]
            self.waiting = [r for r in self.waiting if r not in batch]
            return batch

    def work(self):
        while True:
            batch = self.next_batch()
            self.batches, self.largest = self.batches + 1, max(self.largest, len(batch))
            try:
                settings = replace(batch[0].settings, seed=[r.settings.seed for r in batch])  # a seed per row
                start = time.perf_counter()  # a request's time is its batch's, from here to its round
                stream = ls.generate_stream(batch[0].model, [r.prompt_ids for r in batch],
                                            [r.max_new_tokens for r in batch], settings)
                for rounds in stream:
                    for request, event in zip(batch, rounds):
                        if event is not None:
                            request.events.put((event, time.perf_counter() - start))
                for request in batch:
                    request.events.put(DONE)
            except Exception as e:  # noqa: BLE001 - every waiting client hears of it, the worker lives on
                for request in batch:
                    request.events.put(e)


# ---------------------------------------------------------------------------------------------------------
# The models a server may load: only the served checkpoints, at most MAX_MODELS loaded at once.

ROOT = Path(__file__).resolve().parent
MAX_MODELS = 2  # models kept loaded, the least recently used dropped first
REFUSED = ("this checkpoint is not served here: choose a model from the menu (whoever runs the demo can add "
           "others with --checkpoint, or allow any path with --allow_any_checkpoint)")


def resolve(path) -> Path:
    """A path as typed, or in the repository if not found from here; an installed model's short name is its file."""
    if str(path).strip() in INSTALLED_MODELS:
        return installed_model(str(path).strip())
    p = Path(str(path).strip()).expanduser()
    return ROOT / p if not p.is_absolute() and not p.exists() and (ROOT / p).exists() else p


def shipped() -> list[Path]:
    return sorted((ROOT / "checkpoints").glob("*.pt"))


class Models:
    """The checkpoints the app may load (shipped, launch-given, any with allow_any_checkpoint), and those loaded."""

    def __init__(self, served: list, allow_any: bool = False, device: str = "cpu"):
        self.allow_any, self.device, self.served = allow_any, device, set()
        self.loaded, self.lock = OrderedDict(), threading.Lock()
        self.serve(*served)

    def serve(self, *paths):
        self.served.update(str(resolve(p).resolve()) for p in paths)

    def is_served(self, path) -> bool:
        try:
            key = str(resolve(path).resolve())
            return self.allow_any or key in self.served | {str(p.resolve()) for p in shipped()}
        except (OSError, ValueError, RuntimeError):  # a NUL byte, a symlink loop: not a served path either
            return False

    def get(self, path):
        """(model, tokenizer), loaded on first use; a ValueError if not served or not loadable."""
        if not path or not str(path).strip():
            raise ValueError("no checkpoint chosen: pick a model from the menu")
        if not self.is_served(path):  # before looking at the file: the answer must not tell whether it exists
            raise ValueError(REFUSED)
        if not (p := resolve(path)).exists():
            hint = (" The shipped models are committed with the repository; train your own with `python train.py "
                    "--preset toy` and serve out/toy/model.pt." if p.parent.resolve() == ROOT / "checkpoints" else "")
            raise ValueError(f"{path}: no such file or directory.{hint}")
        key = str(p.resolve())
        with self.lock:  # two sessions asking at once load it once
            if key not in self.loaded:
                loaded = load_model(p, device=self.device)  # first: a file that fails evicts nothing
                while len(self.loaded) >= MAX_MODELS:
                    self.loaded.popitem(last=False)
                self.loaded[key] = loaded
            self.loaded.move_to_end(key)
            return self.loaded[key]
