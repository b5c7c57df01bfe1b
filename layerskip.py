"""
LayerSkip in one file: a Llama decoder trained with layer dropout and an early-exit loss, decoded with
early exit and self-speculative decoding.

    Elhoushi et al., "LayerSkip: Enabling Early Exit Inference and Self-Speculative Decoding", ACL 2024.
    https://arxiv.org/abs/2404.16710

Read it top to bottom, in the paper's order:
  1. the model (a plain Llama: RMSNorm, RoPE, grouped-query attention, SwiGLU), with one shared LM head g
  2. layer dropout, eq. 1-4: deeper blocks are skipped more often during training
  3. the early-exit loss, eq. 5-6, and its rotational and gradual curricula
  4. caches: a static KV cache per block and the exit-state buffer (the paper's "KVQ cache")
  5. sampling and the acceptance rule of speculative decoding
  6. decoding: autoregressive, early exit, and self-speculative (draft with blocks 0..E-1, verify with E..L-1)
  7. the logit lens: what every exit would predict, and how many layers a token really needs
How to decode is a Settings (settings.py, beside this file): the paper's knobs, every range written once, and what
goes beyond the paper (stop rules that end drafting early, logits processors), which the loop takes as hooks.

Two numberings meet in this file, and they differ by one:
  - block index l = 0..L-1 (the paper's eq. 1-6): x_{l+1} = x_l + f_l(x_l) is the output of block l; training
    keys layer-dropout rates and exit-loss weights by l;
  - exit E = 1..L (decoding, the CLI, the demo): a count of blocks, an exit at E runs blocks 0..E-1 and then the
    shared head g = output(norm(.)).
Exit E reads the output of block l = E - 1. Convert only with exit_of_block / block_of_exit below.
"""

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from settings import Settings


def exit_of_block(l: int) -> int:
    """The exit E that reads block l's output: E = l + 1 blocks run."""
    return l + 1


def block_of_exit(E: int) -> int:
    """The block l whose output exit E reads: l = E - 1."""
    return E - 1


# ---------------------------------------------------------------------------------------------------------
# 1. The model: a Llama decoder. Field and module names follow Meta's params.json and checkpoint keys, so
#    Meta weights load strictly and Hugging Face weights need one rename table.


@dataclass
class ModelArgs:
    dim: int = 256
    n_layers: int = 12
    n_heads: int = 8
    n_kv_heads: Optional[int] = None  # grouped-query attention; None = n_heads (plain multi-head)
    vocab_size: int = 4096
    multiple_of: int = 32  # the SwiGLU hidden size is rounded up to a multiple of this
    ffn_dim_multiplier: Optional[float] = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0  # Llama 2: 1e4, Llama 3: 5e5
    use_scaled_rope: bool = False  # Llama 3.1+ frequency scaling for long contexts
    rope_scale_factor: float = 8.0  # 8 for Llama 3.1, 32 for Llama 3.2 1B/3B
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_seq_len: int = 8192
    max_seq_len: int = 512
    tie_word_embeddings: bool = False  # Llama 3.2 shares the output matrix with the embedding

    def __post_init__(self):  # a shape no attention can use is refused here, not deep inside a matmul
        kv = self.n_kv_heads or self.n_heads
        if self.dim % self.n_heads or self.head_dim % 2 or self.n_heads % kv:
            raise ValueError(f"dim {self.dim}, n_heads {self.n_heads}, n_kv_heads {kv}: each head needs a whole, even "
                             f"number of channels (RoPE), and each key/value head a whole group of query heads")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


def at_least_fp32(x):
    return x.to(torch.promote_types(x.dtype, torch.float32))


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # x / sqrt(mean(x^2) + eps), computed in (at least) float32 even when the model runs in bf16/fp16
        return F.rms_norm(at_least_fp32(x), (x.shape[-1],), eps=self.eps).type_as(x) * self.weight


def rope_frequencies(args: ModelArgs) -> torch.Tensor:
    """Rotation frequency of each pair of head channels, with Llama 3.1's long-context scaling if asked for."""
    d = args.head_dim
    freqs = 1.0 / (args.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    if args.use_scaled_rope:
        # Slow (long-wavelength) frequencies are divided by the factor, fast ones kept, the band between
        # blended smoothly; identical to Meta's apply_scaling.
        wavelen = 2 * math.pi / freqs
        low_wavelen = args.rope_original_max_seq_len / args.rope_low_freq_factor
        high_wavelen = args.rope_original_max_seq_len / args.rope_high_freq_factor
        smooth = (args.rope_original_max_seq_len / wavelen - args.rope_low_freq_factor) / (
            args.rope_high_freq_factor - args.rope_low_freq_factor)
        blended = (1 - smooth) * freqs / args.rope_scale_factor + smooth * freqs
        freqs = torch.where(wavelen < high_wavelen, freqs,
                            torch.where(wavelen > low_wavelen, freqs / args.rope_scale_factor, blended))
    return freqs.float()


def rope_rotations(args: ModelArgs, device=None):
    """e^(i * angle) of every position's rotation angles, [max_seq_len, head_dim/2], complex64 (float32 parts)."""
    t = torch.arange(args.max_seq_len, dtype=torch.float32, device=device)
    angles = torch.outer(t, rope_frequencies(args).to(device))
    return torch.polar(torch.ones_like(angles), angles)


def apply_rope(x, rotations):
    """Rotate interleaved channel pairs (x0,x1), (x2,x3), ... as Meta's Llama does: read each pair as the complex
    number x0 + i x1 and multiply it by e^(i * angle), one kernel instead of eight (Meta's code does the same;
    torch.compile runs this one op eagerly). x: [B, T, H, D]; rotations: [T, D/2], or [B, T, D/2] per row."""
    pairs = torch.view_as_complex(at_least_fp32(x).unflatten(-1, (-1, 2)))  # [B, T, H, D/2]
    return torch.view_as_real(pairs * rotations[..., None, :]).flatten(-2).type_as(x)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads = args.n_heads
        self.n_kv_heads = args.n_kv_heads or args.n_heads
        self.head_dim = args.head_dim
        self.wq = nn.Linear(args.dim, self.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(self.n_heads * self.head_dim, args.dim, bias=False)

    def forward(self, x, rope, kv_cache=None, where=None, mask=None):
        """x [B, T, dim]; with a cache, the new tokens sit where `where` (a Positions) says and mask is its mask."""
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, heads, T, head_dim]
        if kv_cache is not None:
            k, v = kv_cache.update(where, k, v)  # keys and values of every position up to the newest
        causal = mask is None and T > 1 and k.shape[2] == T  # no past: SDPA's own causal mask
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           enable_gqa=self.n_kv_heads != self.n_heads)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        hidden = int(2 * 4 * args.dim / 3)  # SwiGLU sized as Meta sizes it
        if args.ffn_dim_multiplier is not None:
            hidden = int(args.ffn_dim_multiplier * hidden)
        hidden = args.multiple_of * math.ceil(hidden / args.multiple_of)
        self.w1 = nn.Linear(args.dim, hidden, bias=False)  # gate
        self.w2 = nn.Linear(hidden, args.dim, bias=False)  # down
        self.w3 = nn.Linear(args.dim, hidden, bias=False)  # up

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)

    def forward(self, x, rope, kv_cache=None, where=None, mask=None):
        x = x + self.attention(self.attention_norm(x), rope, kv_cache, where, mask)
        return x + self.feed_forward(self.ffn_norm(x))


class Transformer(nn.Module):
    def __init__(self, params: ModelArgs):
        super().__init__()
        self.params = params
        self.tok_embeddings = nn.Embedding(params.vocab_size, params.dim)
        self.layers = nn.ModuleList(TransformerBlock(params) for _ in range(params.n_layers))
        self.norm = RMSNorm(params.dim, params.norm_eps)
        self.output = nn.Linear(params.dim, params.vocab_size, bias=False)
        if params.tie_word_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.rope_rotations = rope_rotations(params)  # not a buffer: see _apply
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled init of the residual projections
            if name.endswith(("attention.wo.weight", "feed_forward.w2.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * params.n_layers))

    def _apply(self, fn, recurse=True):
        """After .to(), .cuda(), .half(), to_empty(): rebuild the RoPE table on the new device, in float32 parts (a
        bf16 table would blur the angles of long positions)."""
        super()._apply(fn, recurse)
        self.rope_rotations = rope_rotations(self.params, self.tok_embeddings.weight.device)
        return self

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def head(self, h):
        """The LM head g shared by every exit: final RMSNorm, then the output projection (trap: never skip the norm)."""
        return at_least_fp32(self.output(self.norm(h)))

    def run_blocks(self, h, start: int, end: int, pos=0, cache=None, keep_exit: bool = False):
        """Blocks start..end-1 on hidden states h [B, T, dim] at positions pos..pos+T-1, reading and writing the
        KV cache if one is given. One function for prefill, drafting (0..E-1) and verification (E..L-1). pos is
        one int for every row, or a list with each row's own (rows of a batch at different lengths: Positions).
        keep_exit: also keep the output, block end-1's, as the exit states of these positions (cache.exit_h)."""
        where = Positions(pos, h.shape[1], h.device, self.params.max_seq_len)
        rope = where.rope(self.rope_rotations)
        mask = where.mask(h.dtype) if cache is not None else None
        for l in range(start, end):
            h = self.layers[l](h, rope, cache.kv[l] if cache is not None else None, where, mask)
        if keep_exit:
            where.write(cache.exit_h, h, dim=1)
        return h

    def forward(self, tokens, targets=None, *, exit_weights=None, drop_rates=None, seed=0, step=0):
        """Without targets: the last layer's logits [B, T, vocab]. With targets, the training loss: (loss, {block l:
        its exit's CE}), the early-exit loss (eq. 5, section 3) over the blocks' outputs under layer dropout (eq. 1,
        section 2). drop_rates[l]: block l's skip probability, in training mode only (default: none); exit_weights
        {l: weight} (default: the last layer alone); seed and step key the dropout draws: pass a step that is unique
        per micro-batch."""
        h = self.tok_embeddings(tokens)
        if targets is None:
            return self.head(self.run_blocks(h, 0, len(self.layers)))
        rates = drop_rates if drop_rates is not None and self.training else [0.0] * len(self.layers)
        rope = Positions(0, tokens.shape[1], h.device, self.params.max_seq_len).rope(self.rope_rotations)
        outputs = layer_dropout(self.layers, h, rope, rates, seed, step)
        return early_exit_loss(self.head, outputs, targets, exit_weights or {len(self.layers) - 1: 1.0})


# ---------------------------------------------------------------------------------------------------------
# 2. Layer dropout (paper §4.1.1). Skip block l with probability p_{l,t} = S(t) D(l) p_max: never the first
#    block, the last one with p_max; from scratch the rates also grow over training.


def layer_dropout_rates(n_layers: int, p_max: float, step: Optional[int] = None,
                        total_steps: Optional[int] = None) -> list[float]:
    """Per-block skip probabilities, eq. 2-4. step=None: S(t)=1 (continual pretraining, finetuning)."""
    # eq. 4: S(t) = 2^(t/(T-1)) - 1 from 0 at the first step to 1 at the last (from scratch only)
    S = 1.0 if step is None else (2 ** (step / max(total_steps - 1, 1)) - 1)
    # eq. 3: D(l) = 2^(l/(L-1)) - 1 from 0 at block 0 to 1 at block L-1
    D = [2 ** (l / max(n_layers - 1, 1)) - 1 for l in range(n_layers)]
    return [S * d * p_max for d in D]  # eq. 2


def layer_dropout_mask(batch: int, p: float, seed: int, step: int, layer: int) -> torch.Tensor:
    """Which samples skip this block: a pure function of (seed, step, layer), so that every data-parallel rank
    draws the same pattern (the paper seeds every GPU alike) and a resumed run draws what it would have drawn."""
    g = torch.Generator().manual_seed(((seed * 1_000_003 + step) * 1_000_003 + layer) % 2**63)
    return torch.rand(batch, generator=g) < p  # True = skip


def layer_dropout(blocks, h, rope, rates: list[float], seed: int, step: int):
    """Run the blocks on h [B, T, dim] with layer dropout, yielding each block's output x_{l+1} in turn. Eq. 1:
    x_{l+1} = x_l + M(p_l) f_l(x_l), per sample, with no 1/(1-p) rescaling. A skipped sample passes block l
    unchanged, so block l runs only on the kept rows: a real compute saving."""
    B = h.shape[0]
    for l, (block, p) in enumerate(zip(blocks, rates, strict=True)):
        if p > 0:
            kept = (~layer_dropout_mask(B, p, seed, step, l)).nonzero().squeeze(1).to(h.device)
            if len(kept) == B:
                h = block(h, rope)
            elif len(kept) > 0:
                h = h.index_copy(0, kept, block(h[kept], rope))
            # else: every sample skips block l
        else:
            h = block(h, rope)
        yield h


# ---------------------------------------------------------------------------------------------------------
# 3. Early-exit loss (paper §4.1.2). Every exit uses the same head g; later exits weigh quadratically more,
#    and a curriculum C(t, l) decides which exits are trained at step t.


def early_exit_scale(n_layers: int, e_scale: float) -> list[float]:
    """Un-normalised e(l): e_scale * l(l+1)/2 below the last block, (L-1) + e_scale (L-2)(L-1)/2 for it (eq. 6)."""
    L = n_layers
    e = [e_scale * l * (l + 1) / 2 for l in range(L - 1)]
    return e + [(L - 1) + e_scale * (L - 2) * (L - 1) / 2]


def early_exit_weights(n_layers: int, e_scale: float, enabled) -> dict[int, float]:
    """Normalised weights ẽ(t, l) = C e(l) / sum_i C e(i) over the enabled exits (eq. 6); they sum to 1."""
    e = early_exit_scale(n_layers, e_scale)
    total = sum(e[l] for l in enabled)
    if total == 0:  # a one-block model: e(0) = 0, so the only exit takes all the weight
        return {n_layers - 1: 1.0}
    return {l: e[l] / total for l in sorted(enabled)}


def early_exit_loss(head, outputs, targets, exit_weights: dict[int, float]):
    """Eq. 5: loss = sum_l ẽ(t, l) CE(g(x_{l+1}), targets), every exit through the one head g, summed one exit at a
    time as the blocks' outputs arrive: no stacked [exits, B, T, vocab] tensor (autograd still keeps each trained
    exit's softmax until backward, so memory grows with the exits). Returns (loss, {l: exit l's CE})."""
    loss, exit_losses = 0.0, {}
    for l, h in enumerate(outputs):
        w = exit_weights.get(l, 0.0)
        if w > 0:
            ce = F.cross_entropy(head(h).flatten(0, 1), targets.flatten(), ignore_index=-1)
            loss = loss + w * ce
            exit_losses[l] = ce.detach()
    return loss, exit_losses


CURRICULA = ("none", "rotational", "gradual")


def early_exit_curriculum(n_layers: int, step: int, curriculum: str = "none", rotation: int = 1,
                          total_steps: Optional[int] = None) -> list[int]:
    """The exits C(t, l) enabled at this step; the last block is always on.
    none: every exit. rotational: every R-th block, shifted by one block per step. gradual: top-down, one more
    block every T/(2L) steps, all on from T/2."""
    L = n_layers
    if curriculum == "none":
        on = range(L)
    elif curriculum == "rotational":
        on = [l for l in range(L) if (l - step) % rotation == 0]
    elif curriculum == "gradual":
        on = [l for l in range(L) if step >= (L - 1 - l) * total_steps / (2 * L)]
    else:
        raise ValueError(f"unknown curriculum {curriculum!r}: choose one of {', '.join(CURRICULA)}")
    return sorted(set(on) | {L - 1})


# ---------------------------------------------------------------------------------------------------------
# 4. Caches. Keys and values live in static buffers written at absolute positions (as in gpt-fast): rejecting
#    drafts needs no copy, the next round simply overwrites the stale slots. Self-speculative decoding shares
#    one KV cache between draft and verify, and keeps the exit states x_E of drafted tokens ("exit query cache"
#    in the paper) so that verification continues from block E without re-running blocks 0..E-1.


class Positions:
    """Where a step's T new tokens sit: row b's at positions pos[b] .. pos[b] + T - 1, the one place that knows rows
    can differ. One int for all rows (batch 1, prefill, training) is the plain case: slices and a causal mask.
    Rows at different lengths (ragged prompts, different numbers of accepted drafts) get their own RoPE angles,
    cache slots and mask. A row with fewer than T real tokens is right-padded: the padding writes cache slots past
    the row's real length, which no real query of that row sees (each query sees the keys up to its own position)
    and which the row's next real tokens overwrite."""

    def __init__(self, pos, T: int, device, context: Optional[int] = None):
        self.T, self.context, self.device = T, context, device
        if isinstance(pos, int):
            self.start, self.end = pos, pos + T  # keys 0..end-1 are valid after the write
            self.index = None
        else:
            start = torch.as_tensor(pos, device=device)
            self.index = start[:, None] + torch.arange(T, device=device)  # [B, T]: row b's token t at index[b, t]
            self.rows = torch.arange(len(start), device=device)[:, None]
            self.end = int(start.max()) + T

    def rope(self, table):
        """The rotations of these positions: [T, D/2], or [B, T, D/2] per row."""
        if self.index is None:
            if self.end > self.context:  # a slice past the table would silently be short
                raise ValueError(f"positions {self.start}..{self.end - 1} are past the context window of "
                                 f"{self.context} tokens: use shorter inputs or a larger max_seq_len")
            return table[self.start:self.end]
        return table[self.index.clamp(max=self.context - 1)]  # only padding can be past the window: any angle

    def mask(self, dtype):
        """Which keys 0..end-1 each new query sees: its own row's, up to its own position. None where SDPA needs no
        mask (one query sees every key; without a past, is_causal does it)."""
        if self.index is None:
            if self.T == 1 or self.end == self.T:
                return None
            allowed = torch.ones(self.T, self.end, dtype=torch.bool, device=self.device).tril(self.end - self.T)
        else:  # [B, 1, T, S]: causal within each row's own length
            allowed = (torch.arange(self.end, device=self.device) <= self.index[..., None])[:, None]
        return torch.zeros(allowed.shape, dtype=dtype, device=self.device).masked_fill(~allowed, float("-inf"))

    def write(self, buffer, x, dim: int):
        """buffer[b, ..., index[b, t], ...] = x[b, ..., t, ...] along dimension dim (the sequence dimension)."""
        if self.index is None:
            buffer.narrow(dim, self.start, self.T).copy_(x)
        else:  # advanced indices on dims 0 and `dim` (1 or 2) put [B, T] first
            buffer[(self.rows,) + (slice(None),) * (dim - 1) + (self.index,)] = x.movedim(dim, 1)

    def read(self, buffer, dim: int = 1):
        """buffer's entries at these positions, [B, T, ...] (the inverse of write along dim 1)."""
        if self.index is None:
            return buffer.narrow(dim, self.start, self.T)
        return buffer[self.rows, self.index]


class KVCache:
    def __init__(self, batch, n_kv_heads, max_len, head_dim, dtype, device):
        self.k = torch.zeros(batch, n_kv_heads, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)

    def update(self, where: Positions, k, v):
        """Write the keys/values [B, heads, T, head_dim] of the new positions; return those of positions 0..end-1."""
        where.write(self.k, k, dim=2)
        where.write(self.v, v, dim=2)
        return self.k[:, :, :where.end], self.v[:, :, :where.end]


class Cache:
    """One KV cache per block plus the exit-state buffer: together the paper's KVQ cache. Row b of the batch is
    sequence b; keep(rows) drops the others (finished sequences leave a batch)."""

    def __init__(self, model: Transformer, max_len: int, batch: int = 1):
        p, w = model.params, model.tok_embeddings.weight
        self.kv = [KVCache(batch, p.n_kv_heads or p.n_heads, max_len, p.head_dim, w.dtype, w.device)
                   for _ in range(p.n_layers)]
        self.exit_h = torch.zeros(batch, max_len, p.dim, dtype=w.dtype, device=w.device)

    def keep(self, rows: list[int]):
        index = torch.tensor(rows, dtype=torch.long, device=self.exit_h.device)
        for kv in self.kv:
            kv.k, kv.v = kv.k[index], kv.v[index]
        self.exit_h = self.exit_h[index]

    def rows(self, b: int) -> "Cache":
        """Row b alone, as a cache of batch 1 whose writes land in this one."""
        view = copy.copy(self)
        view.kv = [copy.copy(kv) for kv in self.kv]
        for mine, kv in zip(view.kv, self.kv):
            mine.k, mine.v = kv.k[b:b + 1], kv.v[b:b + 1]
        view.exit_h = self.exit_h[b:b + 1]
        return view

    def read_exit(self, pos, T: int):
        """The exit states of T positions from pos, [B, T, dim]."""
        return Positions(pos, T, self.exit_h.device).read(self.exit_h)


# ---------------------------------------------------------------------------------------------------------
# 5. Sampling. Greedy is an exact argmax. With temperature > 0, self-speculative decoding accepts a draft
#    token with probability min(1, p/q) and otherwise resamples from max(p - q, 0), which makes its output
#    follow the full model's distribution exactly (Leviathan et al. 2023, Chen et al. 2023).


def probabilities(logits, temperature: float, top_k: Optional[int] = None, top_p: Optional[float] = None):
    """Softmax of logits [..., V] after temperature, top-k and top-p (nucleus) filtering."""
    logits = logits.float()
    logits = (logits - logits.max(-1, keepdim=True).values) / temperature  # the top logit is 0: no overflow at small T
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_p, order = torch.sort(probs, dim=-1, descending=True)
        outside = sorted_p.cumsum(-1) - sorted_p >= top_p  # tokens after the nucleus is full (top one always kept)
        probs = probs.scatter(-1, order, sorted_p.masked_fill(outside, 0.0))
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def sample(logits, temperature, top_k, top_p, rng):
    """Next token from logits [V], and the distribution it was drawn from (None for greedy)."""
    if temperature == 0:
        return int(logits.argmax()), None
    probs = probabilities(logits, temperature, top_k, top_p)
    return int(torch.multinomial(probs, 1, generator=rng)), probs


def verify(drafts: list[int], draft_probs, logits, temperature=0.0, top_k=None, top_p=None,
           rng=None) -> tuple[int, int]:
    """Compare d drafted tokens with the verifier's logits [d+1, V] (one row per draft plus one after the last).
    Returns (number accepted, the verifier's own next token): a correction at the first rejected draft,
    or a bonus token when all d were accepted. Every round thus yields at least one token. Greedy (temperature
    0) needs neither the drafts' distributions nor rng: verify(drafts, None, logits)."""
    if temperature == 0:  # greedy: accept the longest prefix on which draft and verifier agree
        target = logits.argmax(-1).tolist()
        n = 0
        while n < len(drafts) and drafts[n] == target[n]:
            n += 1
        return n, target[n]
    p = probabilities(logits, temperature, top_k, top_p)
    for i, tok in enumerate(drafts):
        q = draft_probs[i]
        if torch.rand((), generator=rng, device=p.device) * q[tok] < p[i, tok]:  # accept with min(1, p/q)
            continue
        residual = (p[i] - q).clamp_min(0.0)  # rejected: resample from normalise(max(p - q, 0))
        if residual.sum() <= 0:  # p == q up to rounding: then p itself is the right distribution
            residual = p[i]
        return i, int(torch.multinomial(residual / residual.sum(), 1, generator=rng))
    return len(drafts), int(torch.multinomial(p[len(drafts)], 1, generator=rng))  # bonus token from p


@dataclass
class Sampler:
    """How one sequence's next tokens are chosen, by drafts and verifier alike: its logits processor (a hook from
    settings.py, or None) with the tokens before each position, then an argmax (temperature 0) or a draw from its
    own seeded generator rng."""
    temperature: float = 0.0
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    processor: Optional[Callable] = None
    rng: Optional[torch.Generator] = None

    @property
    def plain_greedy(self) -> bool:
        """An argmax of the logits as they are."""
        return self.temperature == 0 and self.processor is None

    def token(self, logits, context) -> tuple[int, Optional[torch.Tensor]]:
        """The token after context, and the distribution it was drawn from (None for greedy)."""
        if self.processor is not None:
            logits = self.processor(logits, context)
        return sample(logits, self.temperature, self.top_k, self.top_p, self.rng)

    def accept(self, drafts, draft_probs, logits, context) -> tuple[int, int]:
        """verify(), with row i of the verifier's logits processed after context + drafts[:i], as the draft was."""
        if self.processor is not None:
            logits = torch.stack([self.processor(row, context + drafts[:i]) for i, row in enumerate(logits)])
        return verify(drafts, draft_probs, logits, self.temperature, self.top_k, self.top_p, self.rng)


# ---------------------------------------------------------------------------------------------------------
# 6. Decoding. One generator of events serves every caller (command line, demo, benchmarks); generate() drains it.

@dataclass
class Round:
    """One round of decoding: the drafted tokens, how many the verifier accepted, and its own token (None when
    the round ended at an EOS draft). Autoregressive and early-exit steps are rounds without drafts."""
    drafted: list[int]
    accepted: int
    token: Optional[int]

    @property
    def tokens(self) -> list[int]:
        return self.drafted[:self.accepted] + ([] if self.token is None else [self.token])


@dataclass
class Generation:
    tokens: list[int]
    seconds: float
    rounds: int
    drafted: int
    accepted: int
    events: list[Round] = field(default_factory=list, repr=False)

    @classmethod
    def from_events(cls, events: list[Round], seconds: float) -> "Generation":
        return cls(tokens=[t for e in events for t in e.tokens], seconds=seconds, rounds=len(events),
                   drafted=sum(len(e.drafted) for e in events), accepted=sum(e.accepted for e in events),
                   events=events)

    @property
    def tokens_per_s(self) -> float:
        return len(self.tokens) / self.seconds if self.seconds > 0 else float("inf")

    @property
    def time_per_token(self) -> float:
        return self.seconds / max(len(self.tokens), 1)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_round(self) -> float:
        return len(self.tokens) / max(self.rounds, 1)


def generate_stream(model: Transformer, prompt_ids, max_new_tokens, settings: Settings = Settings(),
                    batch_size: Optional[int] = None) -> Iterator:
    """Decode after prompt_ids as settings say, yielding one Round per model round. Stops at an EOS (which is
    emitted), max_new_tokens, or the context window. A batch: prompt_ids may be a list of prompts (lists of ids, of
    any lengths), decoded together; each round then yields a list with every prompt's Round, None for a prompt that
    has finished. max_new_tokens may be a list with one budget per prompt. batch_size: decode at most this many at
    once, a waiting prompt taking the place of each one that finishes (default: all at once). A prompt's tokens are
    those of decoding it alone. Bad input raises a ValueError that says what to do, here at the call; nothing runs
    through the model until the first round is asked for."""
    batched = is_batch(prompt_ids)
    prompts = [list(p) for p in prompt_ids] if batched else [list(prompt_ids)]
    n, s = len(prompts), settings.check(model.params.n_layers)
    budgets = list(max_new_tokens) if isinstance(max_new_tokens, (list, tuple)) else [max_new_tokens] * n
    seeds = list(s.seed) if isinstance(s.seed, (list, tuple)) else [
        None if s.seed is None else (s.seed + b) % 2**64 for b in range(n)]  # prompt b's stream: seed + b
    L, ctx = model.params.n_layers, model.params.max_seq_len
    if len(budgets) != n or len(seeds) != n:
        raise ValueError(f"give one max_new_tokens and one seed per prompt ({n} prompts)")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if any(m < 0 for m in budgets):
        raise ValueError(f"max_new_tokens must be 0 or more, got {min(budgets)}")
    for b, p in enumerate(prompts):
        if not 0 < len(p) < ctx:
            raise ValueError(f"{f'prompt {b}' if batched else 'the prompt'} has {len(p)} tokens: give 1 to {ctx - 1} "
                             f"(the context window holds {ctx})")
    device = model.tok_embeddings.weight.device
    samplers = [Sampler(s.temperature, s.top_k, s.top_p, s.processor(), random_stream(seed, device)) for seed in seeds]
    ends = [min(ctx, len(p) + m) for p, m in zip(prompts, budgets)]  # a sequence never grows past its end

    @torch.inference_mode()  # the rounds below run under it
    def rounds():  # nothing runs until the first round is asked for: the call itself only checks
        if s.strategy == "self_speculative":
            rows = Rows(model, prompts, ends, samplers, s.stop_ids, L, s.num_speculations + 1, batch_size)
            yield from self_speculative_rounds(model, rows, s.exit_layer, s.num_speculations, s.stop_rule())
        else:
            E = L if s.strategy == "autoregressive" else s.exit_layer
            rows = Rows(model, prompts, ends, samplers, s.stop_ids, E, 1, batch_size)
            yield from autoregressive_rounds(model, rows, E)
    return rounds() if batched else (events[0] for events in rounds())


def is_batch(prompt_ids) -> bool:
    """Several prompts (a list of id lists), not one (a list of ids)."""
    return isinstance(prompt_ids, (list, tuple)) and len(prompt_ids) > 0 and isinstance(prompt_ids[0], (list, tuple))


def random_stream(seed: Optional[int], device) -> torch.Generator:
    """A generator of its own for one sequence: seeded, or fresh (without touching torch's global generator)."""
    rng = torch.Generator(device=device)
    if seed is not None:
        rng.manual_seed(seed)
    else:
        rng.seed()
    return rng


def token_tensor(ids: list[int], model: Transformer) -> torch.Tensor:
    """[1, T] token ids on the model's device."""
    return torch.tensor([ids], dtype=torch.long, device=model.tok_embeddings.weight.device)


class Rows:
    """The sequences decoded together, row b of the batch being seqs[b]. Its first cached[b] tokens have been
    through every block (their keys and values are in the cache): all but the newest, which is the next round's
    input (a new prompt's others go through the blocks at once, alone: start). A row whose sequence is done (an
    EOS, its end) leaves the batch, or hands its place (and its cache row) to the next waiting prompt when at most
    batch_size are decoded at once. With one sequence all of this is plain decoding; Positions handles rows at
    different lengths."""

    def __init__(self, model, prompts, ends, samplers, stop, blocks: int, slack: int,
                 batch_size: Optional[int] = None):
        self.model, self.stop, self.n, self.blocks = model, stop, len(prompts), blocks
        self.prompts, self.all_ends, self.all_samplers = prompts, ends, samplers
        self.waiting = [i for i, (p, end) in enumerate(zip(prompts, ends)) if len(p) < end][::-1]  # a stack
        self.ids, self.seqs, self.ends, self.samplers, self.cached = [], [], [], [], []
        B = min(batch_size or self.n, len(self.waiting))
        self.cache = Cache(model, max(ends, default=0) + slack, batch=B)  # slack: a round's padding, past an end
        for b in range(B):
            self.start(b)

    def start(self, b: int):
        """The next waiting prompt takes row b. All but its last token go through blocks 0..blocks-1 now, alone
        (prefill: rows of other lengths would pad it); the last is its first round's input. The cache row's old
        contents sit past the new prompt's positions, unseen, and are overwritten as it grows."""
        i = self.waiting.pop()
        prompt = list(self.prompts[i])
        if len(prompt) > 1:
            self.model.run_blocks(self.model.tok_embeddings(token_tensor(prompt[:-1], self.model)), 0, self.blocks,
                                  0, self.cache.rows(b))
        row = (i, prompt, self.all_ends[i], self.all_samplers[i], len(prompt) - 1)
        for name, value in zip(("ids", "seqs", "ends", "samplers", "cached"), row):
            getattr(self, name)[b:b + 1] = [value]

    def __len__(self):
        return len(self.seqs)

    def positions(self, offsets=None):
        """Row b's next position, cached[b] + offsets[b]: one int when every row is at the same one."""
        pos = [c + (offsets[b] if offsets else 0) for b, c in enumerate(self.cached)]
        return pos[0] if len(set(pos)) == 1 else pos

    def embed(self, tokens: list[int]) -> torch.Tensor:
        """One token per row, [B, 1, dim]."""
        return self.model.tok_embeddings(torch.tensor(tokens, device=self.model.tok_embeddings.weight.device)[:, None])

    def advance(self, events: list["Round"]) -> list[Optional["Round"]]:
        """Append each row's round and roll back: slots after the accepted tokens hold rejected drafts and are
        overwritten next round, and the newest token, not yet through any block, is the next round's input. Rows
        that are done take the next waiting prompt or leave the batch. Returns the rounds in the caller's order,
        None for prompts not decoded in this round."""
        out, keep = [None] * self.n, []
        for b, event in enumerate(events):
            self.seqs[b] += event.tokens
            self.cached[b] = len(self.seqs[b]) - 1
            out[self.ids[b]] = event
            if event.tokens[-1] not in self.stop and len(self.seqs[b]) < self.ends[b]:
                keep.append(b)
            elif self.waiting:
                self.start(b)
                keep.append(b)
        if len(keep) < len(events):
            for name in ("ids", "seqs", "ends", "samplers", "cached"):
                setattr(self, name, [getattr(self, name)[b] for b in keep])
            if keep:  # the last rows finishing end decoding: nothing to keep
                self.cache.keep(keep)
        return out


def autoregressive_rounds(model, rows: Rows, E: int) -> Iterator[list]:
    """One token per row and round from blocks 0..E-1: E = L is plain autoregressive decoding, E < L early exit."""
    while rows:
        x = [seq[-1] for seq in rows.seqs]  # each row's newest token, the only one not yet through the blocks
        h = model.run_blocks(rows.embed(x), 0, E, rows.positions(), rows.cache)
        logits = model.head(h[:, 0])  # [B, vocab]
        yield rows.advance([Round(drafted=[], accepted=0, token=sampler.token(row, seq)[0])
                            for sampler, row, seq in zip(rows.samplers, logits, rows.seqs)])


def self_speculative_rounds(model, rows: Rows, E: int, num_speculations: int, keep_drafting) -> Iterator[list]:
    """Draft with blocks 0..E-1, verify with blocks E..L-1 from the cached exit states, accept, roll back."""
    L = model.params.n_layers
    while rows:
        B = len(rows)
        # Draft: up to d tokens per row with blocks 0..E-1 and the shared head. Each step writes the early blocks'
        # KV and keeps the exit states x_E of its input for verification. d shrinks so that a round can never
        # emit more than max_new_tokens or pass the context window. A row stops drafting at d, at an EOS draft or
        # when its stop rule says so; its last draft still needs blocks 0..E-1 (its KV and exit state), so a row
        # steps once more after its last draft. In a batch the rows step together until every row is done; a row
        # done early steps on a copy of its last token at its next free slot (padding: Positions).
        d = [min(num_speculations, end - len(seq) - 1) for seq, end in zip(rows.seqs, rows.ends)]
        x = [seq[-1] for seq in rows.seqs]  # each row's newest token, the only one not yet through the blocks
        pending = [True] * B  # rows whose x still needs blocks 0..E-1
        drafting = [db > 0 for db in d]
        seen = [0] * B  # tokens of this round that blocks 0..E-1 have seen, per row
        drafts, draft_probs, confidences = [[] for _ in range(B)], [[] for _ in range(B)], [[] for _ in range(B)]
        while any(pending):
            pos = rows.positions(seen)
            h = model.run_blocks(rows.embed(x), 0, E, pos, rows.cache, keep_exit=True)
            seen = [s + p for s, p in zip(seen, pending)]
            sampling = [b for b in range(B) if pending[b] and drafting[b]]  # rows that draft one more token
            pending = [False] * B
            if not sampling:
                continue
            logits = model.head(h[sampling, 0])  # [rows drafting, vocab]
            samplers = [rows.samplers[b] for b in sampling]
            if all(s.plain_greedy for s in samplers):  # one argmax for every row
                picks = [(token, None) for token in logits.argmax(-1).tolist()]
            else:
                picks = [s.token(row, rows.seqs[b] + drafts[b]) for s, b, row in zip(samplers, sampling, logits)]
            if keep_drafting is not None:  # the stop rule reads the draft's confidence in its own token
                tokens = torch.tensor([[token] for token, _ in picks], device=logits.device)
                greedy_confidence = torch.softmax(logits, -1).gather(-1, tokens)[:, 0].tolist()
            for i, (b, (token, probs)) in enumerate(zip(sampling, picks)):
                drafts[b].append(token)
                draft_probs[b].append(probs)
                if keep_drafting is not None:
                    confidences[b].append(float(probs[token]) if probs is not None else greedy_confidence[i])
                x[b], pending[b] = token, True
            able = [pending[b] and len(drafts[b]) < d[b] and drafts[b][-1] not in rows.stop for b in range(B)]
            drafting = able if keep_drafting is None else keep_drafting(confidences, able)
        # Verify: blocks E..L-1 run once over the round's positions (its first token and the drafts), starting
        # from the cached exit states; row b's verifier predicts after each of its n = seen[b] tokens.
        pos = rows.positions()
        h = model.run_blocks(rows.cache.read_exit(pos, max(seen)), E, L, pos, rows.cache)
        logits = model.head(h)  # [B, max(seen), vocab]
        events = []
        for b in range(B):
            accepted, token = rows.samplers[b].accept(drafts[b], draft_probs[b], logits[b, :seen[b]], rows.seqs[b])
            if accepted and drafts[b][accepted - 1] in rows.stop:
                token = None  # an accepted EOS draft ends the text: no token after it
            events.append(Round(drafted=drafts[b], accepted=accepted, token=token))
        yield rows.advance(events)


def generate(model: Transformer, prompt_ids, max_new_tokens, settings: Optional[Settings] = None,
             batch_size: Optional[int] = None, **keywords):
    """Decode and return the new tokens with their statistics: a Generation, or one per prompt for a list of
    prompts (each timed to the round that finished it). The setting is `settings`, or made from the keywords:
    generate(model, ids, 64, strategy="self_speculative", exit_layer=4, num_speculations=3, eos_id=2)."""
    if settings is not None and keywords:
        raise TypeError(f"give a Settings or keywords, not both (got settings and {', '.join(keywords)})")
    settings = settings or Settings(**keywords)
    start = time.perf_counter()
    stream = generate_stream(model, prompt_ids, max_new_tokens, settings, batch_size)
    if not is_batch(prompt_ids):
        events = list(stream)
        return Generation.from_events(events, time.perf_counter() - start)
    events, seconds = [[] for _ in prompt_ids], [0.0] * len(prompt_ids)
    for rounds in stream:
        for b, event in enumerate(rounds):
            if event is not None:
                events[b].append(event)
                seconds[b] = time.perf_counter() - start
    return [Generation.from_events(e, s) for e, s in zip(events, seconds)]


# ---------------------------------------------------------------------------------------------------------
# 7. Logit lens (paper Fig. 2): apply the shared head after every block and watch the prediction settle.


@dataclass
class LogitLens:
    top1: torch.Tensor  # [L, T] token exit E = row + 1 would predict at each position
    prob: torch.Tensor  # [L, T] its probability
    layers_needed: torch.Tensor  # [T] the earliest exit E from which every later exit predicts the final token

    @property
    def mean_layers_needed(self) -> float:
        return self.layers_needed.float().mean().item()


@torch.inference_mode()
def logit_lens(model: Transformer, token_ids: list[int]) -> LogitLens:
    """Every exit's top-1 next-token prediction and its probability at every position of token_ids. Position t
    predicts token t + 1: for the generated tokens of ids = prompt + new, read columns len(prompt) - 1 .. -2."""
    h = model.tok_embeddings(token_tensor(token_ids, model))
    top1, prob = [], []
    for l in range(model.params.n_layers):
        h = model.run_blocks(h, l, l + 1)
        p, t = torch.softmax(model.head(h[0]), dim=-1).max(dim=-1)
        top1.append(t)
        prob.append(p)
    top1, prob = torch.stack(top1), torch.stack(prob)
    # layers needed: L minus the number of exits, counted back from the last, that already predict the final token
    L = top1.shape[0]
    settled = (top1 == top1[-1:]).flip(0).cumprod(0).sum(0)  # exits L, L-1, ... in a row that agree with exit L
    return LogitLens(top1=top1.cpu(), prob=prob.cpu(), layers_needed=(L - settled + 1).cpu())
