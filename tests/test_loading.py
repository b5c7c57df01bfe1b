"""Tests of model_io.py: Meta and Hugging Face Llama layouts give transformers' logits and greedy tokens exactly,
the tokenizers round-trip text, and every bad input is one CheckpointError that names the problem."""

import base64
import json
import os
import shutil

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # transformers must never try the network here

import layerskip as ls  # noqa: E402
import model_io  # noqa: E402
from model_io import CheckpointError, load_model, save_checkpoint, token_texts  # noqa: E402

transformers = pytest.importorskip("transformers")

# Meta key names by Hugging Face key, written out here independently of model_io.HF_TO_META.
HF_TO_META_BLOCK = {"self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk",
                    "self_attn.v_proj": "attention.wv", "self_attn.o_proj": "attention.wo",
                    "mlp.gate_proj": "feed_forward.w1", "mlp.up_proj": "feed_forward.w3",
                    "mlp.down_proj": "feed_forward.w2", "input_layernorm": "attention_norm",
                    "post_attention_layernorm": "ffn_norm"}
SPLIT_DIM = {"wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "output": 0, "wo": 1, "w2": 1, "tok_embeddings": 1}
ROPE = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}  # with head_dim 16, this scales the slow, blends the middle bands


def hf_llama(vocab_size, tied, seed=0):
    """A tiny random LlamaForCausalLM: GQA, Llama 3 RoPE scaling, weights large enough that greedy choices are
    far from ties."""
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                   num_hidden_layers=3, intermediate_size=192, vocab_size=vocab_size,
                                   rope_theta=500000.0, rope_scaling=dict(ROPE), rms_norm_eps=1e-5,
                                   tie_word_embeddings=tied, max_position_embeddings=256, initializer_range=0.2,
                                   bos_token_id=1, eos_token_id=2)
    return transformers.LlamaForCausalLM(cfg).eval()


def write_meta(hf, folder, tokenizer_bytes, n_shards=1):
    """Rewrite an HF Llama in Meta's layout: params.json, consolidated.NN.pth with Meta's key names, q/k rows
    permuted back to Meta's interleaved RoPE order, matrices split across n_shards model-parallel ranks."""
    c = hf.config
    head_dim = c.hidden_size // c.num_attention_heads

    def to_meta(w, n_heads):  # inverse of transformers' permute(w, n_heads, rows, cols)
        return w.view(n_heads, 2, head_dim // 2, w.shape[1]).transpose(1, 2).reshape(w.shape)

    state = {}
    for key, w in hf.state_dict().items():
        if key == "model.embed_tokens.weight":
            name = "tok_embeddings.weight"
        elif key == "model.norm.weight":
            name = "norm.weight"
        elif key == "lm_head.weight":
            if c.tie_word_embeddings:
                continue  # Meta's tied checkpoints carry no output.weight
            name = "output.weight"
        else:
            parts = key.split(".")  # model.layers.{i}.{module}.weight
            i, module = parts[2], ".".join(parts[3:-1])
            name = f"layers.{i}.{HF_TO_META_BLOCK[module]}.weight"
            if module == "self_attn.q_proj":
                w = to_meta(w, c.num_attention_heads)
            elif module == "self_attn.k_proj":
                w = to_meta(w, c.num_key_value_heads)
        state[name] = w.clone()
    state["rope.freqs"] = torch.zeros(head_dim // 2)  # the stray buffer real Meta checkpoints carry
    folder.mkdir(parents=True, exist_ok=True)
    for r in range(n_shards):
        shard = {}
        for k, w in state.items():
            kind = k.split(".")[-2]
            shard[k] = w if w.dim() == 1 else w.chunk(n_shards, dim=SPLIT_DIM[kind])[r].clone()
        torch.save(shard, folder / f"consolidated.{r:02d}.pth")
    params = dict(dim=c.hidden_size, n_layers=c.num_hidden_layers, n_heads=c.num_attention_heads,
                  n_kv_heads=c.num_key_value_heads, vocab_size=-1, multiple_of=32, norm_eps=c.rms_norm_eps,
                  rope_theta=500000.0, use_scaled_rope=True, rope_scaling=dict(ROPE))
    (folder / "params.json").write_text(json.dumps(params))
    (folder / "tokenizer.model").write_bytes(tokenizer_bytes)
    return folder


def write_hf(hf, folder, tokenizer_bytes, **kw):
    hf.save_pretrained(folder, **kw)
    (folder / "tokenizer.model").write_bytes(tokenizer_bytes)
    return folder


@pytest.fixture(scope="module")
def tied_hf(tiny_tokenizer):
    return hf_llama(tiny_tokenizer.vocab_size, tied=True, seed=1)


@pytest.fixture(scope="module")
def untied_hf(tiny_tokenizer):
    return hf_llama(tiny_tokenizer.vocab_size, tied=False, seed=2)


def prompt_ids(tokenizer):
    return tokenizer.encode("First Citizen:\nBefore we proceed any further, hear me speak.")


def assert_same_logits(model, hf, ids):
    with torch.no_grad():
        expected = hf(torch.tensor([ids])).logits[0]
        got = model(torch.tensor([ids]))[0]
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def assert_same_greedy(model, hf, ids, tokenizer, n=24):
    ours = ls.generate(model, ids, n, eos_id=tokenizer.eos_id).tokens
    with torch.no_grad():
        theirs = hf.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=tokenizer.eos_id,
                             pad_token_id=0)[0, len(ids):].tolist()
    assert ours == theirs[:len(ours)] and (len(ours) == n or ours[-1] == tokenizer.eos_id)


# ---------------------------------------------------------------------------------------------------------
# Hugging Face and Meta layouts against transformers


@pytest.mark.parametrize("tied", [True, False])
def test_hf_layout_matches_transformers(tmp_path, tiny_tokenizer, tied_hf, untied_hf, tied):
    """An HF safetensors dir (tied or untied) gives transformers' logits (atol 1e-4) and greedy tokens."""
    hf = tied_hf if tied else untied_hf
    model, tok = load_model(write_hf(hf, tmp_path / "hf", tiny_tokenizer.model_proto))
    p = model.params
    assert (p.use_scaled_rope, p.rope_scale_factor, p.rope_original_max_seq_len, p.rope_theta) == (True, 32, 64, 5e5)
    assert (p.tie_word_embeddings, p.n_kv_heads, p.max_seq_len, tok.vocab_size) == (tied, 2, 256, 600)
    assert model.trained_context == 256  # max_position_embeddings
    assert model.layers[0].feed_forward.w1.weight.shape == (192, 64)
    ids = prompt_ids(tok)
    assert_same_logits(model, hf, ids)
    assert_same_greedy(model, hf, ids, tok)


@pytest.mark.parametrize("tied,n_shards", [(False, 1), (False, 2), (True, 2)])
def test_meta_layout_matches_transformers(tmp_path, tiny_tokenizer, tied_hf, untied_hf, tied, n_shards):
    """A Meta dir (1 or 2 shards, tied or not, vocab -1) gives transformers' logits and greedy tokens."""
    hf = tied_hf if tied else untied_hf
    folder = write_meta(hf, tmp_path / "meta", tiny_tokenizer.model_proto, n_shards)
    model, tok = load_model(folder)
    assert (model.params.tie_word_embeddings, model.params.vocab_size, model.params.max_seq_len) == (tied, 600, 4096)
    assert model.trained_context == 131072  # scaled RoPE: Llama 3.1+, trained to 128K
    ids = prompt_ids(tok)
    assert_same_logits(model, hf, ids)
    assert_same_greedy(model, hf, ids, tok)


def test_hf_sharded_safetensors_and_pytorch_bin(tmp_path, tiny_tokenizer, untied_hf):
    """Sharded safetensors (index.json) and pytorch_model.bin load to transformers' logits."""
    ids = prompt_ids(tiny_tokenizer)
    sharded = write_hf(untied_hf, tmp_path / "sharded", tiny_tokenizer.model_proto, max_shard_size="100KB")
    assert len(list(sharded.glob("model-*.safetensors"))) > 1
    assert_same_logits(load_model(sharded)[0], untied_hf, ids)
    pt = write_hf(untied_hf, tmp_path / "bin", tiny_tokenizer.model_proto)
    (pt / "model.safetensors").unlink()
    torch.save(untied_hf.state_dict(), pt / "pytorch_model.bin")
    model, _ = load_model(pt, dtype=torch.bfloat16)
    assert model.tok_embeddings.weight.dtype == torch.bfloat16
    assert_same_logits(load_model(pt)[0], untied_hf, ids)


def test_unpermute_inverts_transformers_permute():
    """model_io.unpermute undoes convert_llama_weights_to_hf.permute: rows of each head go back to Meta's order."""
    w = torch.arange(8 * 3, dtype=torch.float32).view(8, 3)  # 2 heads of head_dim 4, 3 input columns
    hf = w.view(2, 4 // 2, 2, 3).transpose(1, 2).reshape(8, 3)  # transformers' permute
    assert hf[:, 0].tolist() == [0, 6, 3, 9, 12, 18, 15, 21]  # even channels first, then odd, per head
    assert torch.equal(model_io.unpermute(hf, 2), w)


def test_meta_rope_scaling_factor_and_context_defaults():
    """Scaled RoPE factor is 32 for 3.2 1B/3B shapes, else 8; rope_scaling overrides; Llama 2 theta 1e4."""
    l32 = dict(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, vocab_size=128256, ffn_dim_multiplier=1.5,
               multiple_of=256, norm_eps=1e-5, rope_theta=500000.0, use_scaled_rope=True)
    assert model_io.meta_model_args(l32, 128256, 8192).rope_scale_factor == 32.0
    l31 = dict(l32, dim=4096, n_layers=32, ffn_dim_multiplier=1.3, multiple_of=1024)
    assert model_io.meta_model_args(l31, 128256, 8192).rope_scale_factor == 8.0
    over = model_io.meta_model_args(dict(l31, rope_scaling={"factor": 16.0, "high_freq_factor": 2.0}), 1, 8192)
    assert (over.rope_scale_factor, over.rope_high_freq_factor, over.rope_low_freq_factor) == (16.0, 2.0, 1.0)
    l2 = model_io.meta_model_args(dict(dim=4096, n_layers=32, n_heads=32, vocab_size=-1, multiple_of=256), 32000,
                                  4096)
    assert (l2.rope_theta, l2.use_scaled_rope, l2.vocab_size, l2.n_kv_heads) == (10000.0, False, 32000, None)


def test_hf_intermediate_size_maps_to_meta_ffn_rule():
    """ffn_args makes Meta's FFN sizing rule give exactly HF's intermediate_size."""
    for dim, hidden in [(2048, 8192), (4096, 11008), (4096, 14336), (64, 100), (64, 192), (96, 255)]:
        args = ls.ModelArgs(dim=dim, n_heads=1, **model_io.ffn_args(dim, hidden))
        with torch.device("meta"):
            assert ls.FeedForward(args).w1.weight.shape[0] == hidden


# ---------------------------------------------------------------------------------------------------------
# Tokenizers

MERGES = [b"th", b"he", b"the", b" the", b"at", b" c"]  # ranks 256.. after the 256 single bytes


def ranks_file_text(merges=MERGES):
    """A tiktoken ranks file: the 256 single bytes, then a few merges, one "base64 rank" per line."""
    tokens = [bytes([b]) for b in range(256)] + list(merges)
    return "".join(f"{base64.b64encode(t).decode()} {r}\n" for r, t in enumerate(tokens))


def test_tiktoken_tokenizer_ids_and_round_trip(tmp_path):
    """A hand-made tiktoken ranks file: literal ids, Meta's special ids, exact multi-byte round trip."""
    pytest.importorskip("tiktoken")
    (tmp_path / "tokenizer.model").write_text(ranks_file_text())
    tok = model_io.load_tokenizer_model(tmp_path / "tokenizer.model")  # told apart from sentencepiece by content
    assert tok.kind == "tiktoken"
    assert tok.encode("the cat") == [262, 258, 261, 260]  # <|begin_of_text|>, "the", " c", "at"
    assert (tok.bos_id, tok.eos_id, sorted(tok.stop_ids), tok.vocab_size) == (262, 263, [263, 270, 271], 518)
    text = "the héllo ∑ wörld <|eot_id|>\n\tthe"
    ids = tok.encode(text, bos=False)
    assert tok.eos_id not in ids and tok.decode(ids) == text  # special-token text stays plain text
    assert "".join(token_texts(tok, ids)) == text  # "é", "∑" span 2-3 byte tokens: no broken pieces
    assert token_texts(tok, tok.encode("é", bos=False)) == ["", "é"]
    again = model_io.tokenizer_from_dict(tok.to_dict())
    assert again.encode(text) == tok.encode(text) and again.stop_ids == tok.stop_ids


def test_sentencepiece_tokenizer_round_trip(tmp_path, tiny_tokenizer):
    """The sentencepiece tokenizer: Llama 2 ids, exact round trip, pieces that keep leading spaces."""
    tok = tiny_tokenizer
    assert (tok.bos_id, tok.eos_id, tok.stop_ids, tok.vocab_size) == (1, 2, {2}, 600)
    text = "First Citizen:\n  Speak, speak."
    ids = tok.encode(text)
    assert ids[0] == 1 and tok.decode(ids) == text
    context, rest = ids[:4], ids[4:]
    assert "".join(token_texts(tok, rest, context)) == text[len(tok.decode(context)):]
    (tmp_path / "tokenizer.model").write_bytes(tok.model_proto)
    assert model_io.load_tokenizer_model(tmp_path / "tokenizer.model").encode(text) == ids
    assert model_io.tokenizer_from_dict(tok.to_dict()).encode(text) == ids


def test_tokenizer_json_through_tokenizers(tmp_path, untied_hf):
    """An HF dir with only tokenizer.json loads it via the tokenizers library and round-trips text."""
    tokenizers = pytest.importorskip("tokenizers")
    tk = tokenizers.Tokenizer(tokenizers.models.BPE())
    tk.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(["def add(a, b):\n    return a + b\n"] * 20, trainer)
    folder = tmp_path / "hf"
    untied_hf.save_pretrained(folder)
    (folder / "tokenizer.json").write_text(tk.to_str())
    model, tok = load_model(folder)
    text = "def sub(a, b):\n    return a - b\n"
    ids = tok.encode(text)
    # no tokenizer_config.json and no post-processor: the model was not trained with BOS, none is prepended
    assert tok.kind == "tokenizers" and ids[0] != 1 and tok.decode(ids + [2]) == text
    assert model_io.tokenizer_from_dict(tok.to_dict()).encode(text) == ids
    (folder / "tokenizer_config.json").write_text('{"add_bos_token": true}')  # the config says BOS: BOS
    tok = load_model(folder)[1]
    assert tok.encode(text) == [1] + ids and model_io.tokenizer_from_dict(tok.to_dict()).encode(text) == [1] + ids
    tk.post_processor = tokenizers.processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    (folder / "tokenizer_config.json").unlink()  # no config: the post-processor, which puts <s> first, decides
    (folder / "tokenizer.json").write_text(tk.to_str())
    assert load_model(folder)[1].encode(text) == [1] + ids


def test_meta_layout_with_tiktoken_tokenizer_and_our_checkpoint(tmp_path):
    """A Llama 3-style Meta dir sizes vocab from tiktoken; our checkpoints carry tiktoken too."""
    pytest.importorskip("tiktoken")
    torch.manual_seed(0)
    args = ls.ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=518, multiple_of=16,
                        rope_theta=500000.0, max_seq_len=64)
    ours = ls.Transformer(args).eval()
    folder = tmp_path / "meta"
    folder.mkdir()
    torch.save(ours.state_dict(), folder / "consolidated.00.pth")
    (folder / "params.json").write_text(json.dumps(dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                                        vocab_size=-1, multiple_of=16, rope_theta=500000.0)))
    (folder / "tokenizer.model").write_text(ranks_file_text())
    model, tok = load_model(folder)
    assert (tok.kind, model.params.vocab_size, model.params.max_seq_len) == ("tiktoken", 518, 8192)
    ids = tok.encode("the cat sat")
    with torch.no_grad():
        torch.testing.assert_close(model(torch.tensor([ids])), ours(torch.tensor([ids])), atol=1e-5, rtol=0)
    save_checkpoint(tmp_path / "ours.pt", model, tok)
    again, tok2 = load_model(tmp_path / "ours.pt", max_seq_len=128)
    assert tok2.kind == "tiktoken" and tok2.encode("the cat") == ids[:4] and again.params.max_seq_len == 128
    assert again.trained_context == 8192 and model.trained_context == 8192  # as saved, not the override


# ---------------------------------------------------------------------------------------------------------
# Bad input: one CheckpointError (a ValueError) naming the problem and the fix


def test_bad_paths_and_layouts(tmp_path, tiny_checkpoint):
    """Missing path, unknown layout, a Meta file for its dir, a truncated file: CheckpointError."""
    with pytest.raises(CheckpointError, match="no such file or directory"):
        load_model(tmp_path / "nope.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a model directory of a known layout: expected params.json"):
        load_model(tmp_path / "empty")
    (tmp_path / "consolidated.00.pth").write_bytes(b"\0" * 100)
    with pytest.raises(CheckpointError, match="give the directory that holds it"):
        load_model(tmp_path / "consolidated.00.pth")
    data = tiny_checkpoint.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(tmp_path / "cut.pt")
    assert issubclass(CheckpointError, ValueError)


def test_bad_weights_and_configs(tmp_path, tiny_tokenizer, untied_hf):
    """Truncated/corrupt weights, too-large tokenizer, unknown key, odd head_dim: named errors."""
    proto = tiny_tokenizer.model_proto
    hf = write_hf(untied_hf, tmp_path / "hf", proto)
    data = (hf / "model.safetensors").read_bytes()
    (hf / "model.safetensors").write_bytes(data[:len(data) // 3])
    with pytest.raises(CheckpointError, match="model.safetensors: cannot be read as weights.*truncated or corrupt"):
        load_model(hf)
    meta = write_meta(untied_hf, tmp_path / "meta", proto)
    (meta / "consolidated.00.pth").write_bytes(b"not a zip file at all")
    with pytest.raises(CheckpointError, match="consolidated.00.pth: cannot be read as weights"):
        load_model(meta)

    small = hf_llama(300, tied=True)  # 300 embeddings, a 600-token tokenizer
    with pytest.raises(CheckpointError, match="tokenizer has 600 tokens but the model embeds only 300"):
        load_model(write_hf(small, tmp_path / "small", proto))

    odd = write_hf(untied_hf, tmp_path / "odd", proto)
    state = {k: v.clone() for k, v in untied_hf.state_dict().items()}
    state["model.layers.0.self_attn.q_norm.weight"] = torch.ones(16)
    from safetensors.torch import save_file
    save_file(state, odd / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"does not know: \['model.layers.0.self_attn.q_norm.weight'\]"):
        load_model(odd)

    cfg = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps(dict(cfg, head_dim=32)))
    with pytest.raises(CheckpointError, match="head_dim 32 x 4 heads != hidden_size 64"):
        load_model(odd)
    shutil.rmtree(odd)


def test_train_output_directory_loads_model_pt_else_ckpt_pt(tmp_path, tiny_tokenizer):
    """A train.py --out_dir folder is a model: its model.pt (the export) if there, else its ckpt.pt."""
    torch.manual_seed(0)
    model = ls.Transformer(ls.ModelArgs(dim=32, n_layers=2, n_heads=4, vocab_size=600, multiple_of=16,
                                        max_seq_len=64))
    out = tmp_path / "toy"
    save_checkpoint(out / "ckpt.pt", model, tiny_tokenizer, step=10, metadata={"file": "ckpt.pt"})
    loaded, tok = load_model(out)
    assert loaded.metadata == {"file": "ckpt.pt"} and tok.vocab_size == 600 and loaded.trained_context == 64
    save_checkpoint(out / "model.pt", model, tiny_tokenizer, half=True, metadata={"file": "model.pt"})
    loaded, _ = load_model(out, max_seq_len=128)
    assert loaded.metadata == {"file": "model.pt"} and loaded.params.max_seq_len == 128
    assert load_model(out)[0].metadata == {"file": "model.pt"}  # layerskip.load_model("out/toy") too
    (out / "model.pt").unlink()
    (out / "ckpt.pt").unlink()
    with pytest.raises(CheckpointError, match=r"toy: not a model directory .* or model.pt / ckpt.pt \(train.py\)"):
        load_model(out)


def test_empty_tokenizer_corrupt_index_incomplete_checkpoint(tmp_path, tiny_tokenizer, untied_hf, tiny_checkpoint):
    """An empty tokenizer.model, a corrupt or weightless index.json, a checkpoint with our marker but no model
    args or an unreadable tokenizer: each a CheckpointError that names the file, never a crash later on."""
    with pytest.raises(CheckpointError, match=r"meta/tokenizer.model: the file is empty"):
        load_model(write_meta(untied_hf, tmp_path / "meta", b""))
    with pytest.raises(CheckpointError, match=r"hf/tokenizer.model: the file is empty"):
        load_model(write_hf(untied_hf, tmp_path / "hf", b"\n"))
    with pytest.raises(CheckpointError, match="the sentencepiece model is empty"):
        model_io.SentencePieceTokenizer(b"")

    sharded = write_hf(untied_hf, tmp_path / "sharded", tiny_tokenizer.model_proto, max_shard_size="100KB")
    index = sharded / "model.safetensors.index.json"
    index.write_text(index.read_text()[:100])
    with pytest.raises(CheckpointError, match=r"sharded/model.safetensors.index.json: not valid JSON"):
        load_model(sharded)
    index.write_text('{"metadata": {"total_size": 1}}')
    with pytest.raises(CheckpointError, match=r"sharded/model.safetensors.index.json: no weight_map"):
        load_model(sharded)
    index.write_text("[]")
    with pytest.raises(CheckpointError, match=r"sharded/model.safetensors.index.json: not a JSON object"):
        load_model(sharded)

    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    torch.save({k: v for k, v in ckpt.items() if k != "model_args"}, tmp_path / "no_args.pt")
    with pytest.raises(CheckpointError, match=r"no_args.pt: a layerskip checkpoint without model_args"):
        load_model(tmp_path / "no_args.pt")
    torch.save(dict(ckpt, tokenizer={"kind": "sentencepiece", "model": b"\0garbage"}), tmp_path / "bad_tok.pt")
    with pytest.raises(CheckpointError, match=r"bad_tok.pt: its tokenizer cannot be loaded \(RuntimeError"):
        load_model(tmp_path / "bad_tok.pt")
    torch.save(dict(ckpt, tokenizer={"kind": "sentencepiece"}), tmp_path / "no_tok.pt")
    with pytest.raises(CheckpointError, match=r"no_tok.pt: its tokenizer cannot be loaded \(KeyError"):
        load_model(tmp_path / "no_tok.pt")
