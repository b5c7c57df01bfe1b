"""
Export a model to Hugging Face transformers (LlamaForCausalLM) or to Meta's Llama layout.

    python export.py checkpoints/layerskip-python-deep.pt out/hf --format hf     # then AutoModelForCausalLM
    python export.py out/toy out/toy-meta --format meta                          # params.json + consolidated.00.pth
    python export.py checkpoints/layerskip-python.pt out/hf --format hf --force  # replace an earlier export

CHECKPOINT is anything model_io.load_model reads: one of our checkpoints, a train.py output folder, or a Meta /
Hugging Face Llama folder. Weights are written in float32 unless the model is bfloat16 (fp16 checkpoints widen to
float32 exactly); --dtype picks another. The export is written into a hidden folder beside OUT_DIR and renamed into
place at the end, so a failure leaves nothing half-written. A non-empty OUT_DIR is replaced only with --force, only
once the new export is complete, and only if it is an earlier export. docs/export.md: loading the result, and what
each file holds.
"""

import json
import os
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from common import DTYPES, ArgumentParser, fail
from model_io import HF_TO_META, LLAMA3_PAT_STR, LLAMA3_SPECIAL_TOKENS, CheckpointError, load_model

FORMATS = ("hf", "meta")


# ---------------------------------------------------------------------------------------------------------
# What both layouts need: a model they can represent, weights in one dtype.


def export_dtype(model, name=None) -> torch.dtype:
    """--dtype, else the model's own dtype: float32 (exact for fp16 checkpoints, which load as float32 on CPU),
    bfloat16 kept as it is."""
    return DTYPES[name] if name else model.tok_embeddings.weight.dtype


def context_length(model) -> int:
    """The context the model was trained with: Meta / HF sources can exceed the window model_io allocates."""
    return max(model.params.max_seq_len, getattr(model, "trained_context", None) or 0)


def meta_state_dict(model, dtype) -> dict:
    """Our weights under Meta's names (ours already), tied head dropped, contiguous copies in dtype."""
    state = model.state_dict()
    if model.params.tie_word_embeddings:
        state.pop("output.weight", None)  # the embedding itself; Meta's tied checkpoints carry no output.weight
    return {k: v.detach().to("cpu", dtype).contiguous().clone() for k, v in state.items()}


# ---------------------------------------------------------------------------------------------------------
# Hugging Face: config.json, model.safetensors, generation_config.json and the tokenizer.

META_TO_HF = {meta: hf for hf, meta in HF_TO_META.items()}


def permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Meta's q/k rows -> Hugging Face's: the inverse of model_io.unpermute. HF's rotate_half pairs channel j with
    j + head_dim/2, so each head's interleaved pairs (2j, 2j+1) are regrouped into two halves."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def hf_key(key: str) -> str:
    """HF's name for one of our (Meta's) weight names."""
    if key.startswith("layers."):
        _, i, rest = key.split(".", 2)
        return f"model.layers.{i}.{META_TO_HF[rest]}"
    return META_TO_HF[key]


def hf_state_dict(model, dtype=torch.float32) -> dict:
    """HF LlamaForCausalLM weights: renamed, q/k rows permuted for rotate-half RoPE; a tied head is saved once,
    as model.embed_tokens.weight (what save_pretrained writes)."""
    p = model.params
    state = {}
    for key, w in meta_state_dict(model, dtype).items():
        if key.endswith("attention.wq.weight"):
            w = permute(w, p.n_heads)
        elif key.endswith("attention.wk.weight"):
            w = permute(w, p.n_kv_heads or p.n_heads)
        state[hf_key(key)] = w.contiguous()
    return state


def hf_rope(p) -> dict:
    """rope_theta and, for Llama 3.1's scaled RoPE, rope_scaling, in the names of transformers 4.x (5.x reads them)."""
    rope = {"rope_theta": p.rope_theta, "rope_scaling": None}
    if p.use_scaled_rope:
        rope["rope_scaling"] = {"rope_type": "llama3", "factor": p.rope_scale_factor,
                                "low_freq_factor": p.rope_low_freq_factor, "high_freq_factor": p.rope_high_freq_factor,
                                "original_max_position_embeddings": p.rope_original_max_seq_len}
    return rope


def layerskip_fields(model) -> dict:
    """The checkpoint's stored decoding setting (bench.py --auto), for config.json's "layerskip" field; {} if none."""
    rec = (getattr(model, "metadata", None) or {}).get("recommended") or {}
    return {k: rec[k] for k in ("exit_layer", "num_speculations", "draft_threshold", "draft_cost", "draft_gamma")
            if k in rec}


def hf_config(model, tok, dtype=torch.float32) -> dict:
    """config.json of a LlamaForCausalLM with our shape, RoPE, ids and (if stored) our decoding recommendation."""
    p = model.params
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": p.vocab_size, "hidden_size": p.dim, "num_hidden_layers": p.n_layers,
        "num_attention_heads": p.n_heads, "num_key_value_heads": p.n_kv_heads or p.n_heads, "head_dim": p.head_dim,
        "intermediate_size": model.layers[0].feed_forward.w1.out_features,  # our FeedForward's hidden size
        "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "rms_norm_eps": p.norm_eps,
        "max_position_embeddings": context_length(model),
        **hf_rope(p), "tie_word_embeddings": p.tie_word_embeddings,
        "bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "torch_dtype": str(dtype).removeprefix("torch."),
        "use_cache": True, "initializer_range": 0.02, "pretraining_tp": 1,
    }
    if layerskip_fields(model):
        config["layerskip"] = layerskip_fields(model)
    return config


def generation_config(model, tok) -> dict:
    """Greedy by default; every stop id of the tokenizer ends the text. With a stored recommendation, its draft length
    and threshold become transformers' settings for generate(assistant_early_exit=E), whose defaults are 20 and 0.4
    (transformers has no cost-model stop rule: with one stored, it drafts up to d with its default threshold)."""
    stops = sorted(tok.stop_ids)
    config = {"bos_token_id": tok.bos_id, "eos_token_id": stops[0] if len(stops) == 1 else stops, "do_sample": False}
    rec = layerskip_fields(model)
    if rec.get("num_speculations"):
        config["num_assistant_tokens"] = rec["num_speculations"]
    if rec.get("draft_threshold"):
        config["assistant_confidence_threshold"] = rec["draft_threshold"]
    return config


def write_json(path, obj):
    Path(path).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def export_hf(model, tok, out, dtype=torch.float32):
    """A folder that transformers loads offline: weights, config, generation config, tokenizer."""
    from safetensors.torch import save_file
    out = Path(out)
    write_hf_tokenizer(tok, out, context_length(model))  # first: the likeliest to be refused
    write_json(out / "config.json", hf_config(model, tok, dtype))
    write_json(out / "generation_config.json", generation_config(model, tok))
    save_file(hf_state_dict(model, dtype), out / "model.safetensors", metadata={"format": "pt"})


# ---------------------------------------------------------------------------------------------------------
# The tokenizer for transformers. Ours is a sentencepiece BPE model: we read its settings with sentencepiece's
# protobuf schema and build tokenizer.json with the tokenizers library the way transformers' converter does
# (vocabulary by id, merges ranked by piece score, byte fallback, a Metaspace pre-tokenizer), then check it
# against sentencepiece before writing anything.


def spm_settings(model_proto: bytes) -> dict:
    """The sentencepiece settings that decide how text is split, and each piece's type (1 normal, 2 unknown,
    3 control, 4 user-defined, 5 unused, 6 byte), read with sentencepiece's own protobuf schema."""
    try:
        from sentencepiece import sentencepiece_model_pb2 as pb
    except ImportError:
        raise CheckpointError("exporting a sentencepiece tokenizer needs protobuf: pip install protobuf") from None
    m = pb.ModelProto()
    try:
        m.ParseFromString(model_proto)
    except Exception:  # protobuf's DecodeError
        raise CheckpointError("the sentencepiece model cannot be read: it is corrupt") from None
    t, n = m.trainer_spec, m.normalizer_spec
    return {"bpe": t.model_type == pb.TrainerSpec.BPE, "byte_fallback": t.byte_fallback,
            "charsmap": bool(n.precompiled_charsmap), "add_dummy_prefix": n.add_dummy_prefix,
            "remove_extra_whitespaces": n.remove_extra_whitespaces, "escape_whitespaces": n.escape_whitespaces,
            "types": [p.type for p in m.pieces]}


def spm_tokenizer_json(tok, s: dict):
    """A tokenizers.Tokenizer equal to sentencepiece on this model: the settings LlamaTokenizer rebuilds itself
    from in transformers 5 (BPE, byte fallback, Metaspace), plus a post-processor that prepends BOS."""
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE
    sp = tok.sp
    vocab = {sp.id_to_piece(i): i for i in range(sp.vocab_size())}
    normal = {sp.id_to_piece(i): (sp.get_score(i), i) for i, t in enumerate(s["types"]) if t == 1}
    ranked = sorted((-score, i, piece[:k], piece[k:]) for piece, (score, i) in normal.items()
                    for k in range(1, len(piece)) if piece[:k] in normal and piece[k:] in normal)
    t = Tokenizer(BPE(vocab=vocab, merges=[(a, b) for _, _, a, b in ranked], unk_token=sp.id_to_piece(sp.unk_id()),
                      fuse_unk=True, byte_fallback=s["byte_fallback"]))
    t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=False)  # " " -> "▁"
    t.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    specials = [sp.id_to_piece(i) for i, ty in enumerate(s["types"]) if ty in (2, 3)]
    t.add_special_tokens([AddedToken(piece, special=True, normalized=False) for piece in specials])
    bos = sp.id_to_piece(tok.bos_id)
    t.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                     special_tokens=[(bos, tok.bos_id)])
    return t


SAMPLE_TEXTS = ["def add(a, b):\n    return a + b\n", "class A:\n\tdef f(self):  # two  spaces\n\t\tpass\n\n",
                "  leading and trailing  ", "héllo wörld: naïve café, 漢字, emoji 🙂 ✓", "x = [1, 22, 333]\r\n"]


def check_spm_tokenizer(tok, t):
    """tokenizer.json must give sentencepiece's ids on sample texts and on the text of every piece."""
    sp = tok.sp
    texts = SAMPLE_TEXTS + [sp.decode([i]) for i in range(sp.vocab_size())]
    for text, got in zip(texts, t.encode_batch(texts, add_special_tokens=True)):
        if got.ids != tok.encode(text):
            raise CheckpointError(f"the tokenizer cannot be exported faithfully: tokenizers and sentencepiece split "
                                  f"{text[:30]!r} differently")


def write_spm_tokenizer(tok, out, max_len: int):
    """tokenizer.model, tokenizer.json, tokenizer_config.json and special_tokens_map.json for a sentencepiece
    tokenizer; ids equal ours (BOS first, no EOS) in transformers 5 (LlamaTokenizer) and the tokenizers library."""
    s = spm_settings(tok.model_proto)
    if len(s["types"]) != tok.vocab_size:
        raise CheckpointError("the sentencepiece model's pieces cannot be read: it is corrupt")
    unsupported = [name for name, bad in (("a unigram (not BPE) model", not s["bpe"]),
                                          ("a normalization rule other than identity", s["charsmap"]),
                                          ("remove_extra_whitespaces", s["remove_extra_whitespaces"]),
                                          ("escape_whitespaces off", not s["escape_whitespaces"]),
                                          ("user-defined pieces", 4 in s["types"]),
                                          # transformers' Metaspace drops it before a leading space, sentencepiece not
                                          ("a dummy prefix (Llama 2's)", s["add_dummy_prefix"])) if bad]
    if unsupported:
        raise CheckpointError(f"the sentencepiece tokenizer has {', '.join(unsupported)}: transformers' "
                              f"LlamaTokenizer would split some texts differently; export with --format meta, or use "
                              f"the original model's Hugging Face tokenizer files")
    t = spm_tokenizer_json(tok, s)
    check_spm_tokenizer(tok, t)
    sp = tok.sp
    names = {"bos_token": sp.id_to_piece(tok.bos_id), "eos_token": sp.id_to_piece(tok.eos_id),
             "unk_token": sp.id_to_piece(sp.unk_id())}
    (out / "tokenizer.model").write_bytes(tok.model_proto)
    t.save(str(out / "tokenizer.json"))
    write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "LlamaTokenizer", **names, "pad_token": None, "add_bos_token": True,
        "add_eos_token": False, "legacy": False, "add_prefix_space": False, "clean_up_tokenization_spaces": False,
        # "</s>" in a text is text, as it is to sentencepiece and to us, not the end-of-text id
        "split_special_tokens": True, "model_max_length": max_len, "padding_side": "left"})
    write_json(out / "special_tokens_map.json", names)


def write_tokenizers_tokenizer(tok, out, max_len: int):
    """tokenizer.json as it is (a Hugging Face download's, or the BPE model_io built from a GGUF file's vocabulary and
    merges), with a post-processor that puts BOS first exactly when the model was trained with it, and
    tokenizer_config.json with the BOS rule and the chat template."""
    from tokenizers import Tokenizer, processors
    t = Tokenizer.from_str(tok.json_text)
    bos = tok.piece(tok.bos_id)
    t.post_processor = (processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                      special_tokens=[(bos, tok.bos_id)]) if tok.add_bos else None)
    t.save(str(out / "tokenizer.json"))
    names = {"bos_token": bos, "eos_token": tok.piece(tok.eos_id)}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **names, "add_bos_token": tok.add_bos,
              "add_eos_token": False, "clean_up_tokenization_spaces": False, "model_max_length": max_len}
    write_json(out / "tokenizer_config.json", {**config, "chat_template": tok.chat_template} if tok.chat_template
               else config)
    write_json(out / "special_tokens_map.json", names)


def write_hf_tokenizer(tok, out, max_len: int):
    if tok.kind == "sentencepiece":
        write_spm_tokenizer(tok, Path(out), max_len)
        if tok.chat_template:  # transformers 5 reads the template from its own file
            (Path(out) / "chat_template.jinja").write_text(tok.chat_template)
        return
    if tok.kind == "tokenizers":
        return write_tokenizers_tokenizer(tok, Path(out), max_len)
    raise CheckpointError(f"its {tok.kind} tokenizer cannot be exported to transformers faithfully here (only "
                          f"sentencepiece and tokenizer.json ones can): export with --format meta, or copy the "
                          f"original model's tokenizer files")


# ---------------------------------------------------------------------------------------------------------
# Meta: params.json, consolidated.00.pth, tokenizer.model (what model_io.load_meta and Meta's code read).


def meta_params(model) -> dict:
    """params.json: ModelArgs already uses Meta's names; the inverse of model_io.meta_model_args."""
    a = asdict(model.params)
    params = {k: a[k] for k in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of",
                                "ffn_dim_multiplier", "norm_eps", "rope_theta")}
    params["n_kv_heads"] = params["n_kv_heads"] or params["n_heads"]
    if a["use_scaled_rope"]:  # Meta's code hard-codes the factors; model_io reads explicit ones from rope_scaling
        params["use_scaled_rope"] = True
        params["rope_scaling"] = {k: v for k, v in hf_rope(model.params)["rope_scaling"].items() if k != "rope_type"}
    return params


def meta_tokenizer_bytes(tok) -> bytes:
    """tokenizer.model: sentencepiece's model file, or Llama 3's tiktoken ranks (only with Llama 3's specials and
    split pattern, which is all that a Meta folder can say)."""
    if tok.kind == "sentencepiece":
        return tok.model_proto
    if tok.kind == "tiktoken" and tok.special_tokens == LLAMA3_SPECIAL_TOKENS and tok.pat_str == LLAMA3_PAT_STR:
        return tok.ranks_text.encode()
    raise CheckpointError(f"Meta's layout holds a tokenizer.model (sentencepiece, or tiktoken with Llama 3's special "
                          f"tokens); this {tok.kind} tokenizer is neither: export with --format hf")


def export_meta(model, tok, out, dtype=torch.float32):
    """A Meta Llama folder, one model-parallel shard: our state dict needs no renaming and no permutation."""
    out = Path(out)
    (out / "tokenizer.model").write_bytes(meta_tokenizer_bytes(tok))
    write_json(out / "params.json", meta_params(model))
    torch.save(meta_state_dict(model, dtype), out / "consolidated.00.pth")
    # what params.json cannot hold (Meta's code would refuse unknown keys there): the context length we trained
    # with and our decoding recommendation; model_io.load_meta reads it back
    write_json(out / "layerskip.json", {"max_seq_len": context_length(model), "recommended": layerskip_fields(model)})


# ---------------------------------------------------------------------------------------------------------
# Safe writing: a hidden sibling folder, renamed over OUT_DIR once complete.


def check_out_dir(out: Path, checkpoint: Path, force: bool):
    """Refuse before any work: OUT_DIR a file, holding the checkpoint, non-empty without --force, or (with --force)
    not an earlier export: --force replaces a folder whole, so it must not be, say, out/ full of training runs."""
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out} is a file: give a folder to export into")
    blocking = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise CheckpointError(f"{out} would be a folder under {blocking}, which is a file: give a folder path")
    if checkpoint.resolve().is_relative_to(out.resolve()):
        raise CheckpointError(f"{out} holds the checkpoint {checkpoint}: export into another folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not force:
        raise CheckpointError(f"{out} exists and is not empty: give a new folder, or --force to replace it")
    earlier = (out / "config.json").is_file() or (out / "params.json").is_file()
    if not earlier or any(p.is_dir() for p in out.iterdir()):
        raise CheckpointError(f"{out} is not an earlier export (no config.json or params.json, or sub-folders): "
                              f"--force replaces only those; give a new folder")


def replace_dir(tmp: Path, out: Path):
    """Put the finished export at out; an old out is moved aside first and removed only after the swap."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:  # an error or Ctrl-C between the two renames: put the old export back
        if old.exists() and not out.exists():
            os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def share_files(folder: Path):
    """Give every file the permissions of an ordinary new file: safetensors writes its file private (0600)."""
    umask = os.umask(0)
    os.umask(umask)
    for f in folder.iterdir():
        f.chmod(0o666 & ~umask)


def export(checkpoint, out_dir, fmt: str, force: bool = False, dtype: str = None) -> Path:
    """Load checkpoint and write it to out_dir in fmt ("hf" or "meta"), atomically. Raises CheckpointError."""
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    checkpoint, out = Path(checkpoint), Path(out_dir)
    check_out_dir(out, checkpoint, force)
    model, tok = load_model(checkpoint)  # a shape Llama's attention cannot use is refused there
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        tmp.mkdir()
        (export_hf if fmt == "hf" else export_meta)(model, tok, tmp, export_dtype(model, dtype))
        share_files(tmp)
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a success
    return out


def main(argv=None):
    p = ArgumentParser(description=__doc__)
    p.add_argument("checkpoint", help="our checkpoint, a train.py output folder, or a Meta / HF Llama folder")
    p.add_argument("out_dir", help="the folder to write (created; a hidden sibling is used until it is complete)")
    p.add_argument("--format", required=True, choices=FORMATS, help="hf: transformers' LlamaForCausalLM; "
                   "meta: params.json + consolidated.00.pth + tokenizer.model")
    p.add_argument("--force", action="store_true", help="replace a non-empty OUT_DIR once the export is complete")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="weights dtype (default: float32, or bfloat16 for a "
                   "bfloat16 model; fp16 checkpoints widen to float32 exactly)")
    args = p.parse_args(argv)
    try:
        out = export(args.checkpoint, args.out_dir, args.format, args.force, args.dtype)
    except (CheckpointError, ValueError, OSError) as e:
        fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        sys.exit(130)
    print(f"wrote {out} ({args.format}): " + ", ".join(sorted(f.name for f in out.iterdir())))


if __name__ == "__main__":
    main()
