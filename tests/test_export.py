"""export.py: Hugging Face and Meta exports give our logits, token ids and greedy text in transformers, read back
bit for bit, and a bad export is a one-line error that leaves nothing behind."""

import base64
import io
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # transformers must never try the network here

import export  # noqa: E402
import layerskip as ls  # noqa: E402
import model_io  # noqa: E402
from conftest import ROOT, assert_one_line_error, tiny_model  # noqa: E402
from model_io import SentencePieceTokenizer, load_checkpoint, load_model, save_checkpoint  # noqa: E402

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.integration

DEEP, TWELVE = ROOT / "checkpoints/layerskip-python-deep.pt", ROOT / "checkpoints/layerskip-python.pt"
PROMPT = 'def fibonacci(n: int) -> int:\n    """Return the n-th Fibonacci number."""\n'
TEXTS = [PROMPT, "class A:\n\tdef f(self):\n\t\treturn {'k': [1, 2]}  # two  spaces\n\n\n",
         "    indented\n        deeper\n", "  leading and trailing  ", "unicode: naïve café, 漢字, emoji 🙂 ✓ →",
         "a </s> b <s> c", "", "\r\n\r\n", "x"]


def random_model(tokenizer, seed, **kw):
    """A random float32 3-layer model, norm weights not all ones (so that a swapped norm would show)."""
    model = tiny_model(n_layers=3, vocab_size=tokenizer.vocab_size, dim=64, max_seq_len=128, seed=seed,
                       dtype=torch.float32, **kw)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.2 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """The shipped models (fp16, with a stored setting) and two tiny fp32 ones: tied, scaled RoPE, a setting; untied."""
    tok = model_io.tokenizer_from_dict(load_checkpoint(DEEP)["tokenizer"])
    folder = tmp_path_factory.mktemp("ckpts")
    rope = dict(rope_theta=500000.0, use_scaled_rope=True, rope_scale_factor=32.0, rope_original_max_seq_len=64)
    save_checkpoint(folder / "tied.pt", random_model(tok, 1, tie_word_embeddings=True, **rope), tok,
                    metadata={"recommended": {"exit_layer": 2, "num_speculations": 3, "draft_threshold": 0.3}})
    save_checkpoint(folder / "untied.pt", random_model(tok, 2, n_kv_heads=4), tok)
    return {"deep": DEEP, "12-layer": TWELVE, "tiny-tied-llama3-rope": folder / "tied.pt",
            "tiny-untied": folder / "untied.pt"}


@pytest.fixture(scope="module")
def exported(checkpoints, tmp_path_factory):
    """exported(name, fmt): the folder export.export wrote for that checkpoint (each written once per module)."""
    root, done = tmp_path_factory.mktemp("exports"), {}

    def get(name, fmt="hf"):
        if (name, fmt) not in done:
            done[name, fmt] = export.export(checkpoints[name], root / f"{name}-{fmt}", fmt)
        return done[name, fmt]
    return get


NAMES = ["deep", "12-layer", "tiny-tied-llama3-rope", "tiny-untied"]


# ---------------------------------------------------------------------------------------------------------
# Hugging Face: transformers reproduces our model


@pytest.mark.parametrize("name", NAMES)
def test_transformers_decodes_the_hf_export_as_we_do(checkpoints, exported, name):
    """transformers gives our logits (1e-4; q/k rows permuted right, tied or untied head, plain or Llama 3.1 RoPE), its
    greedy generate (plain, and assistant_early_exit at the stored exit) our tokens, its tokenizer our ids and text."""
    model, tok = load_model(checkpoints[name], dtype=torch.float32)
    hf = transformers.AutoModelForCausalLM.from_pretrained(exported(name), dtype=torch.float32).eval()
    ht = transformers.AutoTokenizer.from_pretrained(exported(name))
    ids = tok.encode(PROMPT)
    with torch.no_grad():
        long = torch.tensor([tok.encode(PROMPT + "    if n < 2:\n        return n\n")])
        assert (hf(long).logits[0] - model(long)[0]).abs().max().item() < 1e-4
        ours = ls.generate(model, ids, 24, eos_id=tok.eos_id).tokens
        assert hf.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=24,
                           pad_token_id=tok.eos_id)[0, len(ids):].tolist() == ours
        stored = (model.metadata.get("recommended") or {}).get("exit_layer")
        assert getattr(hf.config, "layerskip", {}).get("exit_layer") == stored
        if stored:
            assert hf.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=24, assistant_early_exit=stored,
                               pad_token_id=tok.eos_id)[0, len(ids):].tolist() == ours

    assert type(ht).__name__ in ("LlamaTokenizer", "LlamaTokenizerFast")
    for text in TEXTS:  # BOS first, no EOS
        ids = ht(text)["input_ids"]
        assert ids == tok.encode(text) and ht.decode(ids, skip_special_tokens=True) == tok.decode(ids) == text, text


def test_what_the_files_say(exported):
    """config.json has the setting, a tied head is saved once, params.json only Meta's keys."""
    from safetensors import safe_open
    deep = json.loads((exported("deep") / "config.json").read_text())
    assert deep["layerskip"] == {"exit_layer": 4, "num_speculations": 24, "draft_threshold": None, "draft_cost": 0.122,
                                 "draft_gamma": 0.5}  # the cost-model stop rule that bench.py --auto stored
    assert json.loads((exported("deep") / "generation_config.json").read_text()) == {
        "bos_token_id": 1, "eos_token_id": 2, "do_sample": False, "num_assistant_tokens": 24}  # the stored d, for
    # generate(assistant_early_exit=E); transformers has no cost rule, so it keeps its own default threshold
    assert "layerskip" not in json.loads((exported("tiny-untied") / "config.json").read_text())
    assert "num_assistant_tokens" not in json.loads((exported("tiny-untied") / "generation_config.json").read_text())
    for name, has_head in (("deep", False), ("tiny-untied", True)):
        with safe_open(exported(name) / "model.safetensors", "pt") as f:
            assert ("lm_head.weight" in f.keys()) == has_head
    assert sorted(p.name for p in exported("deep").iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "special_tokens_map.json", "tokenizer.json",
        "tokenizer.model", "tokenizer_config.json"]
    assert json.loads((exported("deep", "meta") / "params.json").read_text()) == {
        "dim": 128, "n_layers": 32, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 2048, "multiple_of": 32,
        "ffn_dim_multiplier": None, "norm_eps": 1e-05, "rope_theta": 10000.0}


# ---------------------------------------------------------------------------------------------------------
# Both layouts read back bit for bit


def stored_weights(path) -> dict:
    """The weights as the checkpoint stores them, with a tied head spelled out as model_io builds it."""
    ckpt = load_checkpoint(path)
    state = dict(ckpt["model"])
    if ckpt["model_args"]["tie_word_embeddings"]:
        state["output.weight"] = state["tok_embeddings.weight"]
    return state


@pytest.mark.parametrize("fmt", ["hf", "meta"])
@pytest.mark.parametrize("name", NAMES)
def test_export_reads_back_bit_for_bit(checkpoints, exported, name, fmt):
    """load_model(export) has every stored weight bit for bit once cast back (float32 exports: fp16 widens exactly),
    the same model args, tokenizer, setting and trained context, and the same logits."""
    stored = stored_weights(checkpoints[name])
    back, back_tok = load_model(exported(name, fmt))
    state = back.state_dict()
    assert state.keys() == stored.keys()
    for k, v in stored.items():
        assert state[k].dtype == torch.float32 and torch.equal(state[k].to(v.dtype), v), k
    ours, tok = load_model(checkpoints[name])
    # config.json states the FFN's hidden size, not Meta's rounding rule: only multiple_of may differ
    assert replace(back.params, multiple_of=ours.params.multiple_of) == ours.params
    assert back_tok.encode(PROMPT) == tok.encode(PROMPT) and back.trained_context == ours.trained_context
    setting = ("exit_layer", "num_speculations", "draft_threshold", "draft_cost", "draft_gamma")
    recommended = ours.metadata.get("recommended") or {}
    assert back.metadata.get("recommended", {}) == {k: v for k, v in recommended.items() if k in setting}
    ids = torch.tensor([tok.encode(PROMPT)])
    with torch.no_grad():
        torch.testing.assert_close(back(ids), ours(ids), atol=1e-5, rtol=0)


def test_float16_export_keeps_the_stored_bits(tmp_path, capsys):
    """python export.py --dtype float16 writes the shipped fp16 weights as stored, and says what it wrote."""
    from safetensors.torch import load_file
    export.main([str(DEEP), str(tmp_path / "hf"), "--format", "hf", "--dtype", "float16"])
    export.main([str(DEEP), str(tmp_path / "meta"), "--format", "meta", "--dtype", "float16"])
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"wrote {tmp_path / 'meta'} (meta): ")
    assert sorted(p.name for p in (tmp_path / "meta").iterdir()) == ["consolidated.00.pth", "layerskip.json",
                                                                     "params.json", "tokenizer.model"]
    assert all(v.dtype == torch.float16 for v in load_file(tmp_path / "hf/model.safetensors").values())
    stored, meta = stored_weights(DEEP), torch.load(tmp_path / "meta/consolidated.00.pth", weights_only=True)
    assert meta.keys() == stored.keys() - {"output.weight"}  # tied: Meta's layout has no output.weight
    assert all(torch.equal(meta[k], stored[k]) for k in meta)
    assert json.loads((tmp_path / "hf/config.json").read_text())["torch_dtype"] == "float16"


# ---------------------------------------------------------------------------------------------------------
# Tokenizers that cannot go everywhere


def default_sentencepiece():
    """A sentencepiece BPE model with sentencepiece's defaults (NFKC, dummy prefix, extra spaces removed)."""
    import sentencepiece as spm
    text = (ROOT / "data/shakespeare/input.txt").read_text()[:60_000]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter([text[i:i + 2000] for i in range(0, len(text), 2000)]),
                                   model_writer=buf, model_type="bpe", vocab_size=400, byte_fallback=True,
                                   hard_vocab_limit=False, minloglevel=2)
    return SentencePieceTokenizer(buf.getvalue())


def byte_tiktoken():
    """A tiktoken (Llama 3-style) tokenizer of the 256 single bytes."""
    pytest.importorskip("tiktoken")
    return model_io.TiktokenTokenizer("".join(f"{base64.b64encode(bytes([i])).decode()} {i}\n" for i in range(256)))


@pytest.mark.parametrize("make, says", [(default_sentencepiece, ("dummy prefix", "remove_extra_whitespaces")),
                                        (byte_tiktoken, ("tiktoken tokenizer", "--format meta"))])
def test_a_tokenizer_transformers_would_misread_goes_to_meta_not_hf(tmp_path, capsys, make, says):
    """A tokenizer LlamaTokenizer would misread: --format hf is one line naming why, nothing left; meta reads back."""
    tok = make()
    save_checkpoint(tmp_path / "m.pt", random_model(tok, 3), tok)
    line = assert_one_line_error(export.main, [tmp_path / "m.pt", tmp_path / "hf", "--format", "hf"], capsys, says[0])
    assert says[1] in line and not (tmp_path / "hf").exists() and leftovers(tmp_path) == []
    export.main([str(tmp_path / "m.pt"), str(tmp_path / "meta"), "--format", "meta"])
    back = load_model(tmp_path / "meta")[1]
    assert back.to_dict() == tok.to_dict() and back.encode("héllo\n") == tok.encode("héllo\n")


# ---------------------------------------------------------------------------------------------------------
# The command line; bad exports: one line, exit 2, nothing left behind


def leftovers(folder):
    """Hidden temporary or set-aside folders an export may have left beside its OUT_DIR."""
    return sorted(p.name for p in Path(folder).iterdir() if p.name.startswith(".") and ("tmp-" in p.name or
                                                                                        "old-" in p.name))


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


BAD = {  # case: (make(tmp_path) -> (checkpoint, OUT_DIR), words the line says, more flags)
    "corrupt checkpoint": (lambda t: (write(t / "bad.pt", "not a checkpoint"), t / "out"), "cannot be read", []),
    "OUT_DIR not empty": (lambda t: (DEEP, write(t / "out/keep.txt", "x").parent), "or --force to replace it", []),
    "--force on a folder not an export": (lambda t: (DEEP, write(t / "out/run1/config.json", "{}").parents[1]),
                                          "not an earlier export", ["--force"]),
    "OUT_DIR under a file": (lambda t: (DEEP, write(t / "notes.txt", "x") / "sub"), "notes.txt, which is a file", []),
    "OUT_DIR holds the checkpoint": (lambda t: (DEEP, ROOT / "checkpoints"), "holds the checkpoint", ["--force"]),
}


@pytest.mark.parametrize("case", BAD)
def test_a_bad_export_is_one_line_and_leaves_nothing(tmp_path, capsys, case):
    """Exit 2, one line naming the problem, no temporary folder, and whatever was at OUT_DIR untouched."""
    make, message, flags = BAD[case]
    checkpoint, out = make(tmp_path)

    def files():
        return [(p, p.stat().st_mtime_ns) for folder in (tmp_path, ROOT / "checkpoints") for p in folder.rglob("*")]
    before = files()
    assert_one_line_error(export.main, [checkpoint, out, "--format", "hf", *flags], capsys, message)
    assert files() == before and leftovers(tmp_path) == leftovers(ROOT) == []


def test_failure_midway_keeps_the_previous_export(tmp_path, capsys, monkeypatch):
    """A failure while writing with --force leaves the previous OUT_DIR as it was; a later --force replaces it."""
    out = tmp_path / "out"
    write(out / "config.json", "{}")  # an earlier export, as far as --force can tell
    write(out / "old.txt", "previous export")

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")
    with monkeypatch.context() as m:
        m.setattr(export, "hf_state_dict", disk_full)
        assert_one_line_error(export.main, [DEEP, out, "--format", "hf", "--force"], capsys, "No space left")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "old.txt"] and leftovers(tmp_path) == []
    export.main([str(DEEP), str(out), "--format", "hf", "--force"])
    assert not (out / "old.txt").exists() and (out / "model.safetensors").exists() and leftovers(tmp_path) == []
