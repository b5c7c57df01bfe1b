"""
Serve several users at once: requests that arrive together decode together, as one batch.

A Batcher owns a worker thread. Callers submit a prompt with their decoding setting and get back an iterator of
their own rounds (layerskip.Round), live, as the batch decodes them. The worker takes the oldest waiting request,
joins every other waiting request with the same model and setting (up to batch_size of them), and decodes them
with one layerskip.generate_stream over the list; each round's events go to their requests' own queues. Requests
that arrive while a batch decodes wait for the next one. Each row's tokens are those of decoding it alone
(layerskip's batched decoding is exact), so a user sees the same text whoever else is served beside them.

    batcher = Batcher(batch_size=8, max_waiting=64)
    for event in batcher.submit(model, prompt_ids, 64, eos_id=tok.stop_ids, strategy="self_speculative", ...):
        print(event.tokens)
"""

import queue
import threading
from dataclasses import dataclass, field
from typing import Iterator, Optional

import layerskip as ls
from settings import Settings

DONE = object()  # the end of a request's stream


class Busy(RuntimeError):
    """The waiting line is full: the caller should try again shortly."""


@dataclass
class Request:
    model: object
    prompt_ids: list
    max_new_tokens: int
    seed: Optional[int]
    setting: dict  # generate_stream's other keyword arguments, the same for every request of a batch
    events: queue.Queue = field(default_factory=queue.Queue)

    def key(self):
        return id(self.model), sorted((k, repr(v)) for k, v in self.setting.items())


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

    def submit(self, model, prompt_ids, max_new_tokens: int, seed: Optional[int] = None, **setting) -> Iterator:
        """Queue a request and return its rounds as they are decoded. Its arguments are checked here, at the call
        (generate_stream's ValueError), and a full waiting line raises Busy, both before anything waits."""
        ls.generate_stream(model, prompt_ids, max_new_tokens, Settings(seed=seed, **setting))  # checks, decodes nothing
        request = Request(model, list(prompt_ids), max_new_tokens, seed, setting)
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
            key = self.waiting[0].key()
            batch = [r for r in self.waiting if r.key() == key][:self.batch_size]
            self.waiting = [r for r in self.waiting if r not in batch]
            return batch

    def work(self):
        while True:
            batch = self.next_batch()
            self.batches, self.largest = self.batches + 1, max(self.largest, len(batch))
            first = batch[0]
            try:
                stream = ls.generate_stream(first.model, [r.prompt_ids for r in batch], [r.max_new_tokens for r in batch],
                                            Settings(seed=[r.seed for r in batch], **first.setting))
                for rounds in stream:
                    for request, event in zip(batch, rounds):
                        if event is not None:
                            request.events.put(event)
                for request in batch:
                    request.events.put(DONE)
            except Exception as e:  # noqa: BLE001 - every waiting client hears of it, the worker lives on
                for request in batch:
                    request.events.put(e)
