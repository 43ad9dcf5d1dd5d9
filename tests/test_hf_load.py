"""Hugging Face folders in: seedbed.read.load and `seedbed read` on GPT-2 family folders, `seedbed watch` on a series.

Models are random, built locally with transformers and saved with save_pretrained; nothing downloads.
"""

from __future__ import annotations

import json
import os
import pickle
import sqlite3
from pathlib import Path

import pytest
import torch
from conftest import cli, tiny_dict

from seedbed.conditions import parse
from seedbed.errors import SeedbedError
from seedbed.export import to_hf
from seedbed.grow import grow
from seedbed.hooks import run_with_cache
from seedbed.read import load
from seedbed.read.hf import model_from_folder
from seedbed.watch.series import series_folders

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: the hub is never contacted
os.environ["TRANSFORMERS_OFFLINE"] = "1"
transformers = pytest.importorskip("transformers")  # a guard only: the test extra installs it

TOL = 1e-4
SIZES = {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 40, "vocab_size": 61}
HOOKS = ["hook_embed", "hook_pos_embed", "ln_final.hook_normalized"] + [
    f"blocks.{l}.{h}" for l in range(2) for h in (
        "hook_resid_pre", "ln1.hook_normalized", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_pattern",
        "attn.hook_z", "hook_attn_out", "hook_resid_mid", "mlp.hook_pre", "mlp.hook_post", "hook_mlp_out", "hook_resid_post")
]


@torch.no_grad()
def gpt2_folder(path: Path, seed: int = 0, safetensors: bool = True, **config) -> Path:
    """A random GPT-2 with every weight moved off its init (biases, LayerNorm gains), saved as save_pretrained does."""
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(**{**SIZES, "activation_function": "gelu_new", **config})
    model = transformers.GPT2LMHeadModel(cfg)
    for p in model.parameters():
        p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(path)
    if not safetensors:  # an older folder: the same tensors as a pickle (transformers 5 writes safetensors only)
        torch.save(model.state_dict(), path / "pytorch_model.bin")
        (path / "model.safetensors").unlink()
    return path


def tokens(vocab: int = SIZES["vocab_size"], n: int = SIZES["n_positions"]) -> torch.Tensor:
    return torch.randint(0, vocab, (3, n), generator=torch.Generator().manual_seed(0))


def hf_logits(folder: Path, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return transformers.AutoModelForCausalLM.from_pretrained(folder).eval()(x).logits


def one_line_error(proc, *words: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


# ── GPT-2 family: equal logits ───────────────────────────────────────────────
@pytest.mark.parametrize(
    "config",
    [{}, {"tie_word_embeddings": False}, {"activation_function": "gelu"}, {"activation_function": "relu"},
     {"activation_function": "gelu_pytorch_tanh", "n_inner": 24}],
    ids=["gelu_new-tied", "untied", "gelu", "relu", "gelu_pytorch_tanh-n_inner"],
)
def test_logits_equal_transformers(tmp_path, config):
    folder = gpt2_folder(tmp_path / "m", **config)
    grown = load(folder)
    assert grown.hf and grown.step == 0 and grown.model.cfg.tied_embeddings == config.get("tie_word_embeddings", True)
    x = tokens()
    with torch.no_grad():
        diff = (grown.model(x) - hf_logits(folder, x)).abs().max().item()
    print(f"\n{config or 'gelu_new, tied'}: max |logit difference| to transformers {diff:.2e}")
    assert diff <= TOL
    if not config.get("tie_word_embeddings", True):
        assert not torch.equal(grown.model.unembed.weight, grown.model.embed.weight)


def test_pytorch_bin_loads_tensors_only(tmp_path):
    """pytorch_model.bin (older folders) is read with weights_only=True: the same model as the safetensors file."""
    a = gpt2_folder(tmp_path / "st", seed=3)
    b = gpt2_folder(tmp_path / "bin", seed=3, safetensors=False)
    assert (b / "pytorch_model.bin").exists() and not (b / "model.safetensors").exists()
    x = tokens()
    with torch.no_grad():
        assert torch.equal(load(a).model(x), load(b).model(x))


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    folder = gpt2_folder(tmp_path / "m", safetensors=False)

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"wte.weight": Exploit()}))
    with pytest.raises(SeedbedError, match="cannot be read as weights"):
        load(folder)
    assert not (tmp_path / "pwned").exists()


def test_step_comes_from_the_folder_name(tmp_path):
    grown = load(gpt2_folder(tmp_path / "step3000", seed=1))
    assert grown.step == 3000
    with pytest.raises(SeedbedError, match="of step 3000"):
        load(tmp_path / "step3000", step=1000)


# ── TransformerLens 4's bridge on the same folder: equal hook activations ────
@pytest.mark.slow
def test_hooks_equal_transformer_lens_bridge(tmp_path):
    pytest.importorskip("transformer_lens")  # a guard only: the test extra installs it
    from transformer_lens.model_bridge import TransformerBridge

    folder = gpt2_folder(tmp_path / "m", seed=5)
    bridge = TransformerBridge.boot_transformers(str(folder), device="cpu")
    ours = load(folder).model
    x = tokens()
    with torch.no_grad():
        bridge_logits, theirs = bridge.run_with_cache(x)
        logits, cache = run_with_cache(ours, x, HOOKS)
    # seedbed's hook_normalized is after the LayerNorm's weight and bias; TransformerLens's before them, so the
    # bridge's ln*.hook_out is what it is compared with
    twin = {name: name.replace("hook_normalized", "hook_out") for name in HOOKS}
    diffs = {name: (cache[name] - theirs[twin[name]]).abs().max().item() for name in HOOKS}
    worst = max(diffs, key=diffs.get)
    print(f"\nlogits vs bridge {(logits - bridge_logits).abs().max().item():.2e}; worst hook {worst} {diffs[worst]:.2e}")
    assert (logits - bridge_logits).abs().max().item() <= TOL
    assert all(d <= TOL for d in diffs.values()), diffs


# ── export → load: bit-equal logits ─────────────────────────────────────────
@pytest.mark.parametrize("arch", [{"attn_only": False}, {"attn_only": False, "tied_embeddings": True, "act": "gelu_new"}, {}],
                         ids=["mlp", "tied-gelu_new", "attn-only"])
def test_export_then_load_gives_bit_equal_logits(tmp_path, arch):
    cond = parse(tiny_dict(schedule={"steps": 4, "batch_size": 8, "warmup_steps": 1, "eval_every": 4}, architecture=arch))
    grow(cond, runs_dir=tmp_path / "runs", name="r", progress=False)
    grown = load(tmp_path / "runs" / "r")
    back = load(to_hf(grown, tmp_path / "hf"))
    x = torch.randint(0, grown.model.cfg.d_vocab, (4, grown.model.cfg.n_ctx), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(back.model(x), grown.model(x))


# ── a series: seedbed watch ─────────────────────────────────────────────────
@pytest.mark.slow
def test_watch_a_series_of_three_checkpoints(tmp_path):
    series = tmp_path / "pythia-like"
    for i, step in enumerate((1000, 2000, 4000)):
        gpt2_folder(series / f"step{step}", seed=i)
    (series / "notes.txt").write_text("not a checkpoint")
    proc = cli("watch", str(series), "--out", "watched", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "step 4,000:" in proc.stdout and "report →" in proc.stdout
    out = tmp_path / "watched"
    page = (out / "report.html").read_text()
    assert "Emergences" in page and "induction" in page
    db = sqlite3.connect(out / "run.sqlite")
    steps = [s for (s,) in db.execute("SELECT DISTINCT step FROM metrics WHERE name = 'watch/induction/L1H0' ORDER BY step")]
    names = {n for (n,) in db.execute("SELECT DISTINCT name FROM metrics")}
    assert steps == [1000, 2000, 4000]
    assert {"watch/answer_loss", "watch/icl_score", "watch/previous_token/L0H0", "watch/weight_norm"} <= names
    # the observations are the model's: the first checkpoint's induction scores, measured again here, agree
    from seedbed.watch.observers import HeadScores

    first = HeadScores(bos=None)(load(series / "step1000").model, 1000)
    (stored,) = db.execute("SELECT value FROM metrics WHERE name = 'watch/induction/L1H2' AND step = 1000").fetchone()
    assert stored == pytest.approx(first["watch/induction/L1H2"], abs=1e-6)


@pytest.mark.slow
def test_read_cli_on_a_folder(tmp_path):
    folder = gpt2_folder(tmp_path / "step500")
    proc = cli("read", str(folder), "--out", "pics", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "step 500" in proc.stdout and "L1H3" in proc.stdout and "Hugging Face" in proc.stdout
    assert list((tmp_path / "pics").glob("L*H*.png"))


# ── bad input: one line, exit 2 ─────────────────────────────────────────────
@pytest.mark.slow
def test_a_folder_that_is_no_model(tmp_path):
    (tmp_path / "empty").mkdir()
    one_line_error(cli("read", "empty", cwd=tmp_path), "empty")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text("{not json")
    with pytest.raises(SeedbedError, match="not valid JSON"):
        load(tmp_path / "junk")
    folder = gpt2_folder(tmp_path / "noweights")
    (folder / "model.safetensors").unlink()
    with pytest.raises(SeedbedError, match="no model.safetensors"):
        load(folder)


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path):
    folder = gpt2_folder(tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "n_layer": 3}))
    with pytest.raises(SeedbedError, match="has no tensor 'h.2.ln_1.weight'"):
        model_from_folder(folder)
    (folder / "config.json").write_text(json.dumps({**config, "n_embd": 64}))
    with pytest.raises(SeedbedError, match="config.json makes it"):
        model_from_folder(folder)


def test_remote_code_and_links_are_refused(tmp_path):
    folder = gpt2_folder(tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModelForCausalLM": "modeling.Evil"}}))
    with pytest.raises(SeedbedError, match="never runs code"):
        load(folder)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").rename(tmp_path / "elsewhere.safetensors")
    (folder / "model.safetensors").symlink_to(tmp_path / "elsewhere.safetensors")
    with pytest.raises(SeedbedError, match="symbolic link"):
        load(folder)


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind, words",
    [("neox", ["'gpt_neox'", "rotary position embeddings", "parallel attention"]),
     ("neo", ["'gpt_neo'", "local attention"]),
     ("gpt2-inverse-layer", ["scale_attn_by_inverse_layer_idx"])],
)
def test_unsupported_architectures_are_one_line(tmp_path, kind, words):
    if kind == "neox":
        cfg = transformers.GPTNeoXConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=61)
        transformers.GPTNeoXForCausalLM(cfg).save_pretrained(tmp_path / "m")
    elif kind == "neo":
        cfg = transformers.GPTNeoConfig(hidden_size=32, num_layers=2, num_heads=4, vocab_size=61, attention_types=[[["global", "local"], 1]])
        transformers.GPTNeoForCausalLM(cfg).save_pretrained(tmp_path / "m")
    else:
        gpt2_folder(tmp_path / "m", scale_attn_by_inverse_layer_idx=True)
    one_line_error(cli("read", "m", cwd=tmp_path), *words)


@pytest.mark.slow
def test_a_series_needs_two_checkpoints(tmp_path):
    gpt2_folder(tmp_path / "series" / "step1000")
    one_line_error(cli("watch", "series", cwd=tmp_path), "at least 2 checkpoints")
    gpt2_folder(tmp_path / "final")
    with pytest.raises(SeedbedError, match="does not say its step"):
        series_folders([tmp_path / "series" / "step1000", tmp_path / "final"])
    assert not (tmp_path / "runs").exists()  # nothing written
