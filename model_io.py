"""
Tokenizers and checkpoints: everything that turns files into a (model, tokenizer) pair and back.

Our checkpoints are one torch.save file holding plain data (model args, weights, the tokenizer's bytes, the
training state) and are always loaded with weights_only=True, so no pickled code ever runs. They are written
atomically: a stop during writing never leaves a half-written file under the real name.
"""

import os
from dataclasses import asdict, fields
from pathlib import Path

import torch

from layerskip import ModelArgs, Transformer, rope_tables

FORMAT = "layerskip-checkpoint-v1"


class CheckpointError(ValueError):
    """A checkpoint or model directory that cannot be used; the message names the problem and the fix."""


# ---------------------------------------------------------------------------------------------------------
# Tokenizers: one small interface over sentencepiece (ours, Llama 2) and tiktoken (Llama 3).


class SentencePieceTokenizer:
    kind = "sentencepiece"

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm
        self.model_proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.vocab_size = self.sp.vocab_size()
        self.bos_id, self.eos_id = self.sp.bos_id(), self.sp.eos_id()
        self.stop_ids = {self.eos_id}

    @classmethod
    def from_file(cls, path):
        return cls(Path(path).read_bytes())

    def encode(self, text: str, bos: bool = True) -> list[int]:
        return ([self.bos_id] if bos else []) + self.sp.encode(text)

    def decode(self, ids) -> str:
        return self.sp.decode([i for i in ids if i not in (self.bos_id, self.eos_id)])

    def to_dict(self) -> dict:
        return {"kind": self.kind, "model": self.model_proto}


def token_texts(tokenizer, ids, context=()) -> list[str]:
    """The text each token adds, such that "".join(pieces) == decode(context + ids)[len(decode(context)):].
    Decoding piece by piece would lose sentencepiece's leading spaces and split multi-byte characters."""
    pieces, prev = [], tokenizer.decode(list(context))
    ids_so_far = list(context)
    for i in ids:
        ids_so_far.append(i)
        text = tokenizer.decode(ids_so_far)
        pieces.append(text[len(prev):])
        prev = text
    return pieces


def tokenizer_from_dict(d: dict):
    if d.get("kind") == "sentencepiece":
        return SentencePieceTokenizer(d["model"])
    raise CheckpointError(f"unknown tokenizer kind {d.get('kind')!r} in checkpoint")


# ---------------------------------------------------------------------------------------------------------
# Our checkpoints


def atomic_save(obj, path):
    """torch.save to a temporary file beside path, fsync it, then rename over path (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
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
    return ckpt


def model_args_from_dict(d: dict) -> ModelArgs:
    known = {f.name for f in fields(ModelArgs)}
    return ModelArgs(**{k: v for k, v in d.items() if k in known})


def build_model(ckpt: dict, device="cpu", dtype=None) -> Transformer:
    """A Transformer with the checkpoint's args and weights (strict load: unknown or missing keys are named)."""
    args = model_args_from_dict(ckpt["model_args"])
    with torch.device("meta"):
        model = Transformer(args)
    state = dict(ckpt["model"])
    if args.tie_word_embeddings:
        state.setdefault("output.weight", state["tok_embeddings.weight"])
    missing = set(model.state_dict()) - set(state)
    unknown = set(state) - set(model.state_dict())
    if missing or unknown:
        raise CheckpointError(f"checkpoint weights do not match its model args: missing {sorted(missing)[:5]}, "
                              f"unknown {sorted(unknown)[:5]}")
    dtype = dtype or next(iter(state.values())).dtype
    if dtype == torch.float16 and torch.device(device).type == "cpu":
        dtype = torch.float32  # half-precision storage, float32 compute on CPU
    model = model.to_empty(device=device).to(dtype)
    model.load_state_dict(state, strict=True)
    if args.tie_word_embeddings:
        model.output.weight = model.tok_embeddings.weight
    model.rope_cos, model.rope_sin = rope_tables(args, device)  # not in the state dict; float32 on purpose
    return model.eval()


def load_model(path, device="cpu", dtype=None):
    """(model, tokenizer) from one of our checkpoints. dtype: None = as stored (fp16 is computed in fp32 on CPU)."""
    ckpt = load_checkpoint(path)
    model = build_model(ckpt, device, dtype)
    tokenizer = tokenizer_from_dict(ckpt["tokenizer"])
    if tokenizer.vocab_size > model.params.vocab_size:
        raise CheckpointError(f"{path}: tokenizer has {tokenizer.vocab_size} tokens but the model only "
                              f"{model.params.vocab_size}; the checkpoint pairs the wrong tokenizer")
    model.metadata = ckpt.get("metadata", {})
    return model, tokenizer
