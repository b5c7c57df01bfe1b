"""
How to decode: every setting of layerskip.generate, its range written once, and what goes beyond the paper.

Settings holds one decoding setting and checks it when it is made: the command line, the demo and the benchmarks
read their flags' and controls' bounds from RANGES, so a bound is written here and nowhere else.

The paper drafts a fixed d tokens a round and samples from the plain softmax. Two kinds of hooks change that, and
the decoding loop in layerskip.py takes them from a Settings without knowing what they are:
  - a stop rule: when a round stops drafting before d (a confidence threshold, or a cost model);
  - a logits processor: a repetition penalty and no repeated n-grams, as Hugging Face's generate has them.
Neither changes greedy output; processors change the distribution sampled from, for drafts and verifier alike.
"""

import math
from dataclasses import dataclass, fields
from typing import Callable, Optional, Union

import torch

STRATEGIES = ("autoregressive", "early_exit", "self_speculative")


@dataclass(frozen=True)
class Range:
    """The values a setting may take: low..high (whole numbers if whole), or its `off` value (which turns it off)."""
    low: float
    high: Optional[float] = None
    low_open: bool = False  # (low, high] instead of [low, high]
    whole: bool = False
    off: Optional[float] = None  # a value outside the range that means "off" (temperature 0 = greedy)
    meaning: str = ""  # what the setting is, for error messages

    def check(self, name: str, value):
        """value, or a ValueError that names the setting, its range and what was given."""
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if value is None or (number and self.off is not None and value == self.off):
            return value
        ok = number and (isinstance(value, int) or math.isfinite(value))  # ints exactly, however large
        ok = ok and (not self.whole or isinstance(value, int) or value.is_integer())
        ok = ok and (value > self.low if self.low_open else value >= self.low)
        ok = ok and (self.high is None or value <= self.high)
        if not ok:
            raise ValueError(f"{name} must be {self.span()}{f' ({self.meaning})' if self.meaning else ''}, "
                             f"got {value!r}")
        return int(value) if self.whole else value

    def span(self) -> str:
        kind, show = ("a whole number", int) if self.whole else ("a number", lambda x: f"{x:g}")
        left = "(" if self.low_open else "["
        span = f"{kind} in {left}{show(self.low)}, {show(self.high)}]" if self.high is not None else (
            f"{kind} {'>' if self.low_open else '>='} {show(self.low)}")
        return span if self.off is None else f"{self.off:g} or {span}"


# Every decoding setting's range, the one place it is written. exit_layer's top is the model's L (Settings.check).
# Below 0.01, float32 logits divided by a temperature or a repetition penalty can overflow.
RANGES = {
    "exit_layer": Range(1, whole=True, meaning="blocks the draft runs, 1..L"),
    "num_speculations": Range(1, 64, whole=True, meaning="tokens drafted per round at most"),
    "temperature": Range(0.01, 100, off=0, meaning="0 = greedy"),
    "top_k": Range(1, whole=True, meaning="sample among the k most likely tokens"),
    "top_p": Range(0, 1, low_open=True, meaning="the nucleus: the most likely tokens with this probability"),
    "seed": Range(0, 2 ** 64 - 1, whole=True, meaning="the sampler's random stream"),
    "draft_threshold": Range(0, 1, low_open=True, off=0, meaning="stop drafting below this confidence; 0 = off"),
    "draft_cost": Range(0, 1, low_open=True, off=0, meaning="a draft step's cost in verifications; 0 = off"),
    "draft_gamma": Range(0, 10, low_open=True, meaning="the cost rule counts a confidence c as c^gamma"),
    "repetition_penalty": Range(0.01, 100, meaning="1 = off; CTRL used 1.2"),
    "no_repeat_ngram_size": Range(0, 64, whole=True, meaning="0 = off"),
}


@dataclass(frozen=True)
class Settings:
    """One decoding setting, checked when made. The paper's: the strategy, exit E, draft length d, and sampling
    (temperature 0 = greedy, top-k, top-p; seed: an int s gives prompt b of a batch the stream s + b, or a list has
    one seed per prompt). eos_id: one id or several. Beyond the paper: a stop rule (draft_threshold, or draft_cost
    with draft_gamma) and the logits processors (repetition_penalty, no_repeat_ngram_size)."""
    strategy: str = "autoregressive"
    exit_layer: Optional[int] = None
    num_speculations: Optional[int] = None
    temperature: float = 0.0
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    seed: Union[int, list, None] = None
    eos_id: Union[int, list, set, tuple, None] = None
    draft_threshold: Optional[float] = None
    draft_cost: Optional[float] = None
    draft_gamma: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}: choose one of {', '.join(STRATEGIES)}")
        for name in ("temperature", "draft_gamma", "repetition_penalty", "no_repeat_ngram_size"):
            if getattr(self, name) is None:
                raise ValueError(f"{name} needs a value: {RANGES[name].span()}")
        for name, bound in RANGES.items():
            value = getattr(self, name)
            if name == "seed" and isinstance(value, (list, tuple)):  # a seed per prompt
                object.__setattr__(self, name, [bound.check(name, v) for v in value])
            else:
                object.__setattr__(self, name, bound.check(name, value))  # whole numbers stored as int
        eos = [self.eos_id] if isinstance(self.eos_id, int) or self.eos_id is None else list(self.eos_id)
        if not all(e is None or (isinstance(e, int) and not isinstance(e, bool) and e >= 0) for e in eos):
            raise ValueError(f"eos_id must be a token id or several (whole numbers >= 0), got {self.eos_id!r}")
        if self.draft_threshold and self.draft_cost:
            raise ValueError("give a draft threshold or a draft cost, not both: one stop rule")
        if self.strategy != "autoregressive" and self.exit_layer is None:
            raise ValueError(f"{self.strategy} needs an exit layer: give exit_layer")
        if self.strategy == "self_speculative" and self.num_speculations is None:
            raise ValueError("self_speculative needs num_speculations: the most tokens drafted per round")

    def check(self, n_layers: int) -> "Settings":
        """The checks that need the model: the exit is one of its L blocks."""
        if self.strategy != "autoregressive" and not 1 <= self.exit_layer <= n_layers:
            raise ValueError(f"exit layer {self.exit_layer} is out of range: this model has {n_layers} layers, "
                             f"use 1..{n_layers}")
        return self

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def stop_ids(self) -> set:
        return set() if self.eos_id is None else {self.eos_id} if isinstance(self.eos_id, int) else set(self.eos_id)

    def stop_rule(self) -> Optional[Callable]:
        """The hook that ends drafting early, or None (draft to d): rule(confidences, able) -> which rows draft on."""
        if self.draft_threshold:
            return threshold_rule(self.draft_threshold)
        if self.draft_cost:
            return cost_rule(self.draft_cost, self.draft_gamma)
        return None

    def processor(self) -> Optional[Callable]:
        """The hook that changes the logits of the token after a context, or None: processor(logits, context)."""
        if self.repetition_penalty == 1.0 and not self.no_repeat_ngram_size:
            return None
        return lambda logits, context: no_repeat_ngram(
            repetition_penalty(logits, context, self.repetition_penalty), context, self.no_repeat_ngram_size)


DEFAULT_NUM_SPECULATIONS = 4  # d when neither the user nor a stored setting gives one


def recommended(model, strategy: Optional[str] = None, exit_layer: Optional[int] = None,
                num_speculations: Optional[int] = None, draft_threshold: Optional[float] = None,
                draft_cost: Optional[float] = None, draft_gamma: Optional[float] = None) -> dict:
    """The strategy, exit, d and stop rule to decode with: the checkpoint's stored recommendation (bench.py --auto,
    tuned on dev prompts as one whole) when the user names none of them, all of it or none of it. Otherwise what the
    user gave, the rest from the defaults: self-speculative when any of them is given, exit L // 4, d = 4, drafting
    to d, gamma 1. A threshold or cost of 0 means off."""
    rec = (getattr(model, "metadata", None) or {}).get("recommended") or {}
    given = dict(exit_layer=exit_layer, num_speculations=num_speculations, draft_threshold=draft_threshold,
                 draft_cost=draft_cost, draft_gamma=draft_gamma)
    if strategy in (None, "self_speculative") and rec.get("exit_layer") and all(v is None for v in given.values()):
        return dict(strategy="self_speculative", exit_layer=rec["exit_layer"],
                    num_speculations=rec.get("num_speculations") or DEFAULT_NUM_SPECULATIONS,
                    draft_threshold=rec.get("draft_threshold") or None, draft_cost=rec.get("draft_cost") or None,
                    draft_gamma=rec.get("draft_gamma") or 1.0)
    strategy = strategy or ("self_speculative" if any(v is not None for v in given.values()) else "autoregressive")
    if strategy == "autoregressive":
        return dict(strategy=strategy)
    out = dict(strategy=strategy, exit_layer=max(1, model.params.n_layers // 4) if exit_layer is None else exit_layer)
    if strategy == "self_speculative":  # a bad value given (0, say) goes on to Settings, which refuses it
        out.update(num_speculations=DEFAULT_NUM_SPECULATIONS if num_speculations is None else num_speculations,
                   draft_gamma=1.0 if draft_gamma is None else draft_gamma,
                   draft_threshold=draft_threshold or None, draft_cost=draft_cost or None)
    return out


# ---------------------------------------------------------------------------------------------------------
# Stop rules. Each round the loop asks rule(confidences, able): confidences[b] are the probabilities row b's draft
# gave its drafted tokens so far, able[b] whether row b may draft on (below d, no EOS drafted). It answers which
# rows draft one more token. The batch steps on while any row does.


def threshold_rule(threshold: float):
    """Stop a row once its draft's confidence in its token falls below threshold: an unsure draft is likely
    rejected. Each row decides alone."""
    return lambda confidences, able: [on and c[-1] >= threshold for c, on in zip(confidences, able)]


def cost_rule(draft_cost: float, gamma: float):
    """Stop when one more draft would lower the round's tokens per unit of cost (worth_drafting_on). The rows of
    a batch draft in step, so the batch decides as one."""
    def rule(confidences, able):
        go = worth_drafting_on(confidences, draft_cost, gamma, able)
        return [on and go for on in able]
    return rule


def worth_drafting_on(confidences, draft_cost: float, gamma: float = 1.0, drafting=None) -> bool:
    """The cost model. Take a_i = c_i^gamma, the draft's probability c_i of each token it drafted, calibrated (gamma
    is fitted on held-out drafts: for our 32-layer model's exit 4, about 0.4), as the chance that the verifier
    accepts it, and measure costs in verifications (a draft step costs r = draft_cost). After k drafts, all k
    survive with chance P = a_1 ... a_k, so verifying now yields T = 1 + P_1 + ... + P_k tokens (the verifier adds
    one) for C = k r + 1. One more draft adds about P a_k tokens for r more: it raises the round's tokens per unit
    cost, (T + P a_k) / (C + r) > T / C, exactly when P a_k C > r T. For a batch, confidences holds one list per
    row, drafting says which rows can draft on, and the gain P a_k and the yield T are sums over the rows."""
    if confidences and not isinstance(confidences[0], (list, tuple)):
        confidences, drafting = [confidences], [True]
    gain, T = 0.0, 0.0
    for c, on in zip(confidences, drafting):
        P = 1.0
        for a in c:
            P *= a ** gamma
            T += P
        T += 1
        gain += P * c[-1] ** gamma if on and c else 0.0
    k = max(map(len, confidences))
    return gain * (k * draft_cost + 1) > draft_cost * T


# ---------------------------------------------------------------------------------------------------------
# Logits processors: the logits [V] of the token after `context` (a list of ids), changed. The official LayerSkip
# generator applies Hugging Face's to drafts and verification alike, which keeps speculative sampling exact.


def repetition_penalty(logits, context: list[int], penalty: float):
    """CTRL's repetition penalty: a seen token's logit is divided by penalty when positive, multiplied when not."""
    if penalty == 1.0 or not context:
        return logits
    seen = torch.tensor(sorted(set(context)), device=logits.device)
    x = logits[seen]
    return logits.index_copy(0, seen, torch.where(x > 0, x / penalty, x * penalty))


def no_repeat_ngram(logits, context: list[int], n: int):
    """Ban every token that would complete an n-gram already in the context."""
    if n <= 0 or len(context) < n:
        return logits
    ctx = torch.tensor(context)
    ngrams = ctx.unfold(0, n, 1)  # [len - n + 1, n]: every n-gram of the context
    repeats = (ngrams[:, :-1] == ctx[len(context) - n + 1:]).all(-1)  # those that start like the context ends
    return logits.index_fill(0, ngrams[repeats, -1].to(logits.device), float("-inf"))
