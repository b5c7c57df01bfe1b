"""model_io.py: Meta and Hugging Face Llama layouts give transformers' logits and greedy tokens, the tokenizers
round-trip text, and one table of bad files, each a CheckpointError that names the file and the problem."""

import base64
import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # transformers must never try the network here

import layerskip as ls  # noqa: E402
import model_io  # noqa: E402
from conftest import tiny_model  # noqa: E402
from model_io import CheckpointError, load_model, save_checkpoint, token_texts  # noqa: E402

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.integration

# Meta key names by Hugging Face key, written out here independently of model_io.HF_TO_META.
HF_TO_META = {"self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk",
              "self_attn.v_proj": "attention.wv", "self_attn.o_proj": "attention.wo",
              "mlp.gate_proj": "feed_forward.w1", "mlp.up_proj": "feed_forward.w3", "mlp.down_proj": "feed_forward.w2",
              "input_layernorm": "attention_norm", "post_attention_layernorm": "ffn_norm",
              "model.embed_tokens": "tok_embeddings", "model.norm": "norm", "lm_head": "output"}
SPLIT_DIM = {"wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "output": 0, "wo": 1, "w2": 1, "tok_embeddings": 1}
ROPE = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}  # with head_dim 16, this scales the slow, blends the middle bands


def hf_llama(vocab_size, tied, seed=0):
    """A tiny random LlamaForCausalLM: GQA, Llama 3 RoPE scaling, large weights (greedy choices far from ties)."""
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                   num_hidden_layers=3, intermediate_size=192, vocab_size=vocab_size,
                                   rope_theta=500000.0, rope_scaling=dict(ROPE), rms_norm_eps=1e-5,
                                   tie_word_embeddings=tied, max_position_embeddings=256, initializer_range=0.2,
                                   bos_token_id=1, eos_token_id=2)
    return transformers.LlamaForCausalLM(cfg).eval()


def write_meta(hf, folder, tokenizer_bytes, n_shards=1):
    """An HF Llama in Meta's layout: Meta's key names, q/k rows in Meta's interleaved RoPE order, n_shards ranks."""
    c = hf.config
    head_dim = c.hidden_size // c.num_attention_heads
    state = {"rope.freqs": torch.zeros(head_dim // 2)}  # the stray buffer real Meta checkpoints carry
    for key, w in hf.state_dict().items():
        if key == "lm_head.weight" and c.tie_word_embeddings:
            continue  # Meta's tied checkpoints carry no output.weight
        module = key.removesuffix(".weight").split(".")
        name = f"layers.{module[2]}.{HF_TO_META['.'.join(module[3:])]}" if module[1:2] == ["layers"] else \
            HF_TO_META[".".join(module)]
        if name.endswith((".wq", ".wk")):  # the inverse of transformers' permute(w, n_heads, rows, cols)
            heads = c.num_attention_heads if name.endswith("wq") else c.num_key_value_heads
            w = w.view(heads, 2, head_dim // 2, w.shape[1]).transpose(1, 2).reshape(w.shape)
        state[f"{name}.weight"] = w.clone()
    folder.mkdir(parents=True, exist_ok=True)
    for r in range(n_shards):
        torch.save({k: w if w.dim() == 1 else w.chunk(n_shards, dim=SPLIT_DIM[k.split(".")[-2]])[r].clone()
                    for k, w in state.items()}, folder / f"consolidated.{r:02d}.pth")
    params = dict(dim=c.hidden_size, n_layers=c.num_hidden_layers, n_heads=c.num_attention_heads,
                  n_kv_heads=c.num_key_value_heads, vocab_size=-1, multiple_of=32, norm_eps=c.rms_norm_eps,
                  rope_theta=500000.0, use_scaled_rope=True, rope_scaling=dict(ROPE))
    (folder / "params.json").write_text(json.dumps(params))
    (folder / "tokenizer.model").write_bytes(tokenizer_bytes)
    return folder


def write_hf(hf, folder, tokenizer_bytes, bin=False, **kw):
    """save_pretrained's folder (safetensors, sharded with max_shard_size; bin: pytorch_model.bin instead)."""
    hf.save_pretrained(folder, **kw)
    if bin:
        (folder / "model.safetensors").unlink()
        torch.save(hf.state_dict(), folder / "pytorch_model.bin")
    (folder / "tokenizer.model").write_bytes(tokenizer_bytes)
    return folder


@pytest.fixture(scope="module")
def untied_hf(tiny_tokenizer):
    return hf_llama(tiny_tokenizer.vocab_size, tied=False, seed=2)


LAYOUTS = {  # name: (tied, write(hf, folder, tokenizer), the context window and trained context it loads with)
    "hf": (False, write_hf, 256, 256),
    "hf tied": (True, write_hf, 256, 256),
    "hf sharded": (False, lambda *a: write_hf(*a, max_shard_size="100KB"), 256, 256),
    "hf pytorch_model.bin": (False, lambda *a: write_hf(*a, bin=True), 256, 256),
    "meta": (False, write_meta, 4096, 131072),  # scaled RoPE: Llama 3.1 on, trained to 128K
    "meta 2 shards": (False, lambda *a: write_meta(*a, n_shards=2), 4096, 131072),
    "meta 2 shards tied": (True, lambda *a: write_meta(*a, n_shards=2), 4096, 131072),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_llama_layout_gives_transformers_logits_and_greedy_tokens(tmp_path, tiny_tokenizer, untied_hf, layout):
    """Each layout (tied or not, GQA, Llama 3 RoPE, shards, vocab -1) gives transformers' logits and greedy tokens."""
    tied, write, window, trained = LAYOUTS[layout]
    hf = hf_llama(tiny_tokenizer.vocab_size, tied=True, seed=1) if tied else untied_hf
    model, tok = load_model(write(hf, tmp_path / "model", tiny_tokenizer.model_proto))
    p = model.params
    assert (p.use_scaled_rope, p.rope_scale_factor, p.rope_original_max_seq_len, p.rope_theta) == (True, 32, 64, 5e5)
    assert (p.tie_word_embeddings, p.max_seq_len, model.trained_context) == (tied, window, trained)
    ids = tok.encode("First Citizen:\nBefore we proceed any further, hear me speak.")
    with torch.no_grad():
        torch.testing.assert_close(model(torch.tensor([ids]))[0], hf(torch.tensor([ids])).logits[0], atol=1e-4, rtol=0)
        theirs = hf.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False, eos_token_id=tok.eos_id,
                             pad_token_id=0)[0, len(ids):].tolist()
    ours = ls.generate(model, ids, 24, eos_id=tok.eos_id).tokens
    assert ours == theirs[:len(ours)] and (len(ours) == 24 or ours[-1] == tok.eos_id)


def test_meta_rope_defaults_and_hf_ffn_size():
    """RoPE factor 32 for Llama 3.2 1B/3B, else 8, or rope_scaling's; Llama 2 theta 1e4; HF's FFN size kept exactly."""
    l32 = dict(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, vocab_size=128256, ffn_dim_multiplier=1.5,
               multiple_of=256, norm_eps=1e-5, rope_theta=500000.0, use_scaled_rope=True)
    assert model_io.meta_model_args(l32, 128256, 8192).rope_scale_factor == 32.0
    l31 = dict(l32, dim=4096, n_layers=32, ffn_dim_multiplier=1.3, multiple_of=1024)
    assert model_io.meta_model_args(l31, 128256, 8192).rope_scale_factor == 8.0
    over = model_io.meta_model_args(dict(l31, rope_scaling={"factor": 16.0, "high_freq_factor": 2.0}), 1, 8192)
    assert (over.rope_scale_factor, over.rope_high_freq_factor, over.rope_low_freq_factor) == (16.0, 2.0, 1.0)
    l2 = model_io.meta_model_args(dict(dim=4096, n_layers=32, n_heads=32, vocab_size=-1, multiple_of=256), 32000, 4096)
    assert (l2.rope_theta, l2.use_scaled_rope, l2.vocab_size, l2.n_kv_heads) == (10000.0, False, 32000, None)
    for dim, hidden in [(2048, 8192), (4096, 11008), (4096, 14336), (64, 100), (64, 192), (96, 255)]:
        args = ls.ModelArgs(dim=dim, n_heads=1, **model_io.ffn_args(dim, hidden))
        with torch.device("meta"):
            assert ls.FeedForward(args).w1.weight.shape[0] == hidden


# ---------------------------------------------------------------------------------------------------------
# Tokenizers

TOKENS = [bytes([i]) for i in range(256)] + [b"th", b"he", b"the", b" the", b"at", b" c"]  # merges: ranks 256..
RANKS = "".join(f"{base64.b64encode(t).decode()} {r}\n" for r, t in enumerate(TOKENS))  # a tiktoken ranks file


def test_sentencepiece_tokenizer(tiny_tokenizer):
    """data/prepare.py's tokenizer: Llama 2's ids; code, spaces, tabs and unseen characters round-trip, never through
    <unk>; pieces keep their spaces; "<s>" is text unless special=True; an empty model is refused."""
    tok, sp = tiny_tokenizer, tiny_tokenizer.sp
    assert [sp.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"] and sp.pad_id() == -1
    assert (tok.bos_id, tok.eos_id, tok.stop_ids, tok.vocab_size) == (1, 2, {2}, 600)
    code = "class A:\n    def f(self):  # two  spaces\n\n\n\tdef g():\n\t\treturn 'x'\n"
    for text in [code, "naïve ☃ 😀 \r\n", "\n"]:
        ids = tok.encode(text)
        assert ids[0] == 1 and tok.decode(ids) == text and 0 not in ids
    text = "First Citizen:\n  Speak, speak."
    ids = tok.encode(text)
    assert "".join(token_texts(tok, ids[4:], ids[:4])) == text[len(tok.decode(ids[:4])):]
    plain = tok.encode("hi there", bos=False)  # a chat template's "<s>"/"</s>": control ids only with special=True
    assert tok.encode("<s>hi there</s>", bos=False, special=True) == [1] + plain + [2]
    assert 1 not in tok.encode("<s>hi", bos=False) and tok.encode("hi there", bos=False, special=True) == plain
    with pytest.raises(CheckpointError, match="the sentencepiece model is empty"):
        model_io.SentencePieceTokenizer(b"")


def test_tokenizer_json_through_tokenizers(tmp_path, untied_hf):
    """An HF dir with only tokenizer.json loads it via the tokenizers library and round-trips text."""
    tokenizers = pytest.importorskip("tokenizers")
    tk = tokenizers.Tokenizer(tokenizers.models.BPE())
    tk.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(["def add(a, b):\n    return a + b\n"] * 20, trainer)
    untied_hf.save_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text(tk.to_str())
    tok = load_model(tmp_path)[1]
    text = "def sub(a, b):\n    return a - b\n"
    ids = tok.encode(text)
    # no tokenizer_config.json and no post-processor: the model was not trained with BOS, none is prepended
    assert tok.kind == "tokenizers" and ids[0] != 1 and tok.decode(ids + [2]) == text
    (tmp_path / "tokenizer_config.json").write_text('{"add_bos_token": true}')  # the config says BOS: BOS
    tok = load_model(tmp_path)[1]
    assert tok.encode(text) == [1] + ids and model_io.tokenizer_from_dict(tok.to_dict()).encode(text) == [1] + ids
    tk.post_processor = tokenizers.processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    (tmp_path / "tokenizer_config.json").unlink()  # no config: the post-processor, which puts <s> first, decides
    (tmp_path / "tokenizer.json").write_text(tk.to_str())
    assert load_model(tmp_path)[1].encode(text) == [1] + ids


def test_tiktoken_tokenizer_in_a_meta_layout_and_our_checkpoint(tmp_path):
    """A tiktoken ranks file in a Meta dir: literal and special ids, multi-byte round trips, kept by our checkpoints."""
    pytest.importorskip("tiktoken")
    ours = tiny_model(n_layers=2, vocab_size=518, dtype=torch.float32, rope_theta=500000.0)
    torch.save(ours.state_dict(), tmp_path / "consolidated.00.pth")  # tmp_path: a Meta folder
    (tmp_path / "params.json").write_text(json.dumps(dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                                          vocab_size=-1, multiple_of=16, rope_theta=500000.0)))
    (tmp_path / "tokenizer.model").write_text(RANKS)
    model, tok = load_model(tmp_path)  # tiktoken told apart from sentencepiece by the file's content
    assert (tok.kind, model.params.vocab_size, model.params.max_seq_len) == ("tiktoken", 518, 8192)
    assert tok.encode("the cat") == [262, 258, 261, 260]  # <|begin_of_text|>, "the", " c", "at"
    assert (tok.bos_id, tok.eos_id, sorted(tok.stop_ids), tok.vocab_size) == (262, 263, [263, 270, 271], 518)
    text = "the héllo ∑ wörld <|eot_id|>\n\tthe"
    assert tok.eos_id not in tok.encode(text, bos=False) and tok.decode(tok.encode(text, bos=False)) == text
    assert "".join(token_texts(tok, tok.encode(text, bos=False))) == text  # "é", "∑": no broken multi-byte pieces
    assert token_texts(tok, tok.encode("é", bos=False)) == ["", "é"]
    save_checkpoint(tmp_path / "ours.pt", model, tok)
    again, tok2 = load_model(tmp_path / "ours.pt", max_seq_len=128)
    assert tok2.kind == "tiktoken" and tok2.encode(text) == tok.encode(text) and tok2.stop_ids == tok.stop_ids
    assert again.params.max_seq_len == 128 and again.trained_context == model.trained_context == 8192  # not 128


def test_train_output_directory_loads_model_pt_else_ckpt_pt(tmp_path, tiny_tokenizer):
    """A train.py --out_dir folder is a model: its model.pt (the export) if there, else its ckpt.pt."""
    model = tiny_model(n_layers=2, vocab_size=600, dtype=torch.float32)
    out = tmp_path / "toy"
    save_checkpoint(out / "ckpt.pt", model, tiny_tokenizer, step=10, metadata={"file": "ckpt.pt"})
    loaded, tok = load_model(out)
    assert loaded.metadata == {"file": "ckpt.pt"} and tok.vocab_size == 600 and loaded.trained_context == 64
    save_checkpoint(out / "model.pt", model, tiny_tokenizer, half=True, metadata={"file": "model.pt"})
    loaded, _ = load_model(out, max_seq_len=128)
    assert loaded.metadata == {"file": "model.pt"} and loaded.params.max_seq_len == 128
    assert load_model(out, dtype=torch.bfloat16)[0].tok_embeddings.weight.dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------------------------
# Bad files: one CheckpointError (a ValueError) naming the file, the problem and the fix


@pytest.fixture(scope="module")
def broken(tmp_path_factory, tiny_tokenizer, tiny_checkpoint, untied_hf):
    """A folder of broken models, each broken one way."""
    d, proto = tmp_path_factory.mktemp("broken"), tiny_tokenizer.model_proto
    (d / "empty").mkdir()  # no params.json, no config.json, and not a train.py --out_dir: no model.pt nor ckpt.pt
    (d / "consolidated.00.pth").write_bytes(b"\0" * 100)
    data = tiny_checkpoint.read_bytes()
    (d / "cut.pt").write_bytes(data[:len(data) // 2])
    hf = write_hf(untied_hf, d / "hf-cut", proto)
    (hf / "model.safetensors").write_bytes((hf / "model.safetensors").read_bytes()[:100_000])
    (write_meta(untied_hf, d / "meta-bad-weights", proto) / "consolidated.00.pth").write_bytes(b"not a zip file")
    write_hf(hf_llama(300, tied=True), d / "small", proto)  # 300 embeddings, a 600-token tokenizer
    odd = write_hf(untied_hf, d / "unknown-key", proto)
    from safetensors.torch import save_file
    save_file({**untied_hf.state_dict(), "model.layers.0.self_attn.q_norm.weight": torch.ones(16)},
              odd / "model.safetensors")
    heads = write_hf(untied_hf, d / "head-dim", proto)
    (heads / "config.json").write_text(json.dumps({**json.loads((heads / "config.json").read_text()), "head_dim": 32}))
    write_meta(untied_hf, d / "meta-empty-tok", b"")
    sharded = write_hf(untied_hf, d / "index-no-json", proto, max_shard_size="100KB")
    (sharded / "model.safetensors.index.json").write_text('{"weight_map": {"model.norm.weight": ')
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    torch.save({k: v for k, v in ckpt.items() if k != "model_args"}, d / "no_args.pt")
    torch.save(dict(ckpt, tokenizer={"kind": "sentencepiece", "model": b"\0garbage"}), d / "bad_tok.pt")
    torch.save(dict(ckpt, model_args=ckpt["model_args"] | {"n_kv_heads": 3}), d / "kv_heads.pt")  # 4 % 3 != 0
    torch.save(dict(ckpt, model_args=ckpt["model_args"] | {"dim": 36}), d / "odd_head_dim.pt")  # 36 / 4 heads = 9
    return d


BROKEN = [  # (path in the broken folder, what the error says)
    ("nope.pt", "no such file or directory"),
    ("empty", r"empty: not a model directory of a known layout: expected params.json .* ckpt.pt \(train.py\)"),
    ("consolidated.00.pth", "give the directory that holds it"),
    ("cut.pt", "truncated or corrupt"),
    ("hf-cut", "model.safetensors: cannot be read as weights.*truncated or corrupt"),
    ("meta-bad-weights", "consolidated.00.pth: cannot be read as weights"),
    ("small", "tokenizer has 600 tokens but the model embeds only 300"),
    ("unknown-key", r"does not know: \['model.layers.0.self_attn.q_norm.weight'\]"),
    ("head-dim", "head_dim 32 x 4 heads != hidden_size 64"),
    ("meta-empty-tok", "meta-empty-tok/tokenizer.model: the file is empty"),
    ("index-no-json", "index-no-json/model.safetensors.index.json: not valid JSON"),
    ("no_args.pt", "no_args.pt: a layerskip checkpoint without model_args"),
    ("bad_tok.pt", r"bad_tok.pt: its tokenizer cannot be loaded \(RuntimeError"),
    ("kv_heads.pt", "kv_heads.pt: the checkpoint's model: dim 64, n_heads 4, n_kv_heads 3: each head needs a whole"),
    ("odd_head_dim.pt", "odd_head_dim.pt: the checkpoint's model: dim 36, n_heads 4, n_kv_heads 2: each head needs"),
]


@pytest.mark.parametrize("name, match", BROKEN, ids=[n for n, _ in BROKEN])
def test_a_broken_model_is_one_checkpoint_error(broken, name, match):
    with pytest.raises(CheckpointError, match=match):
        load_model(broken / name)

