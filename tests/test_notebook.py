"""Notebooks: every `_repr_html_` escapes what it shows and fetches nothing; examples/grow-read-patch.ipynb runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_dict

import seedbed
from seedbed.errors import SeedbedError
from seedbed.read import (
    AttentionPattern,
    HeadReading,
    PatchingResult,
    attention_pattern,
    patching_result,
    read_heads,
    repeated_tokens,
)
from seedbed.read import html as H
from seedbed.trials.result import TrialResult

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>&"\''
NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "grow-read-patch.ipynb"


def safe(out: str) -> None:
    """What every output must be: no script or handler, no tag the hostile text could have made, nothing fetched."""
    tags = [re.sub(r'"([^"]?)[^"]*"', r'"\1"', t) for t in re.findall(r"<[a-zA-Z][^>]*>", out)]  # real tags; values cut to 1 char
    assert not [t for t in tags if re.match(r"<(script|img|iframe|link|object|embed|style)\b", t, re.IGNORECASE)], "a tag that runs or fetches"
    assert not [t for t in tags if re.search(r"\son\w+\s*=", t, re.IGNORECASE)], "an event handler"
    assert not [t for t in tags if re.search(r"""\s(src|href)\s*=\s*(?!"#")""", t, re.IGNORECASE)], "a link out"
    assert not re.search(r"https?://", out)


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    runs = tmp_path_factory.mktemp("nb") / "runs"
    run = seedbed.grow(tiny_dict(name="nb"), runs_dir=runs, progress=False)
    return seedbed.load(run)


# ── the shared helpers ─────────────────────────────────────────────────────
def test_heatmap_draws_each_cell_escapes_labels_and_leaves_zeros_blank():
    values = [[0.0, 0.5], [1.0, float("nan")]]
    svg = H.heatmap(values, [HOSTILE, "b"], ["c", HOSTILE], 0.0, 1.0)
    safe(svg)
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count("<rect") == 3 + 1  # 0.5, 1.0 and the NaN (grey); 0.0 left blank; plus the frame
    assert "&lt;script" in svg and H.NAN in svg
    assert H.colour(1.0, 0.0, 1.0) == "#1f5fa8" and H.colour(0.0, 0.0, 1.0) == "#ffffff"
    assert H.colour(-1.0, -1.0, 1.0) == "#1f5fa8" and H.colour(1.0, -1.0, 1.0) == "#b3261e"


def test_heatmap_draws_at_most_max_cells_and_says_so():
    n = H.MAX_CELLS + 4
    svg = H.heatmap([[1.0] * n] * n, [str(i) for i in range(n)], [str(i) for i in range(n)], 0.0, 1.0)
    assert svg.count("<rect") == H.MAX_CELLS**2 + 1
    assert H.cut_note(n, n) and not H.cut_note(3, 3)


def test_token_labels_spell_out_whitespace_and_cut_long_tokens():
    assert H.token_label("\n") == "\\n" and H.token_label("") == "·"
    assert len(H.token_label("x" * 50)) == H.LABEL_CHARS


# ── each object ───────────────────────────────────────────────────────────
def test_grown_model_shows_its_run_step_and_shape(grown):
    out = grown._repr_html_()
    safe(out)
    assert "Grown model" in out and f"step {grown.step}" in out and "2 layers × 2 heads" in out


def test_head_scores_table_has_every_head_and_bolds_standouts(grown):
    reading = read_heads(grown)
    assert reading.step == grown.step and reading.run == "nb"
    out = reading._repr_html_()
    safe(out)
    assert out.count("<tr>") == 1 + 2 * 2  # the header and one row per head
    assert all(f"L{l}H{h}" in out for l in range(2) for h in range(2))
    fake = HeadReading({"induction": torch.tensor([[0.9, 0.1]])}, [], run=HOSTILE, step=3)
    shown = fake._repr_html_()
    safe(shown)
    assert "font-weight:700" in shown and shown.count("font-weight:700") == 1  # 0.9 passes 0.4, 0.1 does not
    assert "&lt;script&gt;" in shown


def test_attention_pattern_is_the_cached_pattern_and_escapes_tokens(grown):
    a = attention_pattern(grown, layer=1, head=0)
    n = len(a.labels)
    assert a.pattern.shape == (1, n, n) and a.heads == [(1, 0)]
    assert torch.allclose(a.pattern.sum(-1), torch.ones(1, n))  # each query's weights sum to 1
    assert torch.all(a.pattern.triu(1) == 0)  # causal
    safe(a._repr_html_())
    every = attention_pattern(grown, layer=0)
    assert every.pattern.shape[0] == 2 and "L0H1" in every._repr_html_()
    hostile = AttentionPattern(torch.tensor([[[1.0, 0.0], [0.3, 0.7]]]), [(0, 0)], [HOSTILE, "\x00"], run=HOSTILE)
    out = hostile._repr_html_()
    safe(out)
    assert "&lt;img" in out
    assert AttentionPattern(hostile.pattern, [(0, 0)], ["a", "b"]).figure().axes  # the matplotlib picture of it


@pytest.mark.parametrize("bad", [{"layer": 2}, {"layer": 0, "head": 5}, {"layer": 0, "tokens": torch.tensor([99])},
                                 {"layer": 0, "tokens": torch.zeros(1, 40, dtype=torch.long)}])
def test_attention_pattern_bad_requests_are_one_line(grown, bad):
    with pytest.raises(SeedbedError) as e:
        attention_pattern(grown, **bad)
    assert "\n" not in str(e.value)


def test_patching_result_restores_everything_when_the_whole_residual_is_patched(grown):
    """Patching all of layer 0's resid_pre is running the clean input: it restores exactly 1 of the difference."""
    clean = repeated_tokens(grown.model.cfg.d_vocab, 5, batch=4, seed=1)
    corrupted = repeated_tokens(grown.model.cfg.d_vocab, 5, batch=4, seed=2)
    metric = lambda logits: logits.log_softmax(-1)[:, -2].gather(-1, clean[:, -1:]).mean()
    whole = patching_result(grown.model, clean, corrupted, metric, site="resid_pre", per_position=False)
    assert whole.clean != whole.corrupted
    assert whole.recovered[0].item() == pytest.approx(1.0, abs=1e-4)
    with torch.no_grad():
        assert whole.corrupted == pytest.approx(float(metric(grown.model(corrupted))), abs=1e-6)
    safe(whole._repr_html_())
    per = patching_result(grown.model, clean, corrupted, metric, site="z", labels=[HOSTILE] * clean.shape[1])
    assert per.effect.shape == (2, 2, clean.shape[1])
    out = per._repr_html_()
    safe(out)
    assert "<svg" in out and "L1H1" in out
    flat = PatchingResult(torch.zeros(2), "attn_out", False, 1.0, 1.0)
    assert flat.recovered.isnan().all()  # clean = corrupted: nothing to restore, not a division by zero
    safe(flat._repr_html_())


def _trial_folder(folder: Path) -> Path:
    folder.mkdir()
    result = {
        "trial": HOSTILE, "verdict": "held", "why": HOSTILE, "claim": HOSTILE, "source": "x", "scale": "tiny", "seed": 0,
        "predictions": [{"id": "a", "text": HOSTILE, "threshold": HOSTILE, "measured": HOSTILE, "held": True},
                        {"id": "b", "text": "t", "threshold": "u", "measured": "v", "held": False}],
        "figures": [{"kind": "lines", "id": "f", "title": HOSTILE, "main": True, "x_label": "step", "y_label": "y",
                     "series": [{"label": HOSTILE, "x": [0, 1, 2], "y": [3.0, 2.0, 1.0]}]}],
    }
    (folder / "trial.json").write_text(json.dumps(result))
    return folder


def test_trial_result_escapes_everything_and_inlines_its_figure(tmp_path):
    t = TrialResult.open(_trial_folder(tmp_path / "t"))
    assert t.verdict == "held"
    out = t._repr_html_()
    safe(out)
    assert out.count("&lt;script&gt;") >= 5 and "✓" in out and "✗" in out
    assert "<svg" in out and "<style" not in out  # matplotlib's page-wide style is left out
    assert TrialResult.open(tmp_path / "t")._repr_html_().count('id="sb') >= 1  # ids prefixed per output


def test_trial_result_of_a_plain_run_and_of_a_seeds_summary(grown, tmp_path):
    plain = TrialResult.open(grown.run)
    assert plain.verdict is None
    safe(plain._repr_html_())
    s = tmp_path / "s"
    s.mkdir()
    (s / "summary.json").write_text(json.dumps({"trial": "x", "verdict": "held", "claim": HOSTILE, "predictions": [{"id": "a"}],
                                                "per_seed": [{"seed": 0, "verdict": "held", "held": {"a": True}, "why": HOSTILE}]}))
    out = TrialResult.open(s)._repr_html_()
    safe(out)
    assert "seed" in out and "✓" in out


@pytest.mark.parametrize("content", ["[1, 2]", "{not json", '{"per_seed": 3}'])
def test_a_malformed_result_is_one_line(tmp_path, content):
    for name in ("trial.json", "summary.json"):
        folder = tmp_path / name.split(".")[0]
        folder.mkdir(exist_ok=True)
        (folder / name).write_text(content)
        if name == "trial.json" and content.startswith('{"per'):
            continue  # a trial.json without per_seed fields is fine: the checks are report.py's
        with pytest.raises(SeedbedError) as e:
            TrialResult.open(folder)
        assert "\n" not in str(e.value)


@pytest.mark.slow  # a fresh interpreter importing torch
def test_import_seedbed_read_stays_free_of_matplotlib():
    """read_heads and attention_pattern load matplotlib; they are imported when first asked for, not before."""
    code = "import sys, seedbed.read; assert 'matplotlib' not in sys.modules; seedbed.read.read_heads; assert 'matplotlib' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ── the example notebook ───────────────────────────────────────────────────
def test_the_example_notebook_is_stored_without_outputs():
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(not c["outputs"] and c["execution_count"] is None for c in code)


@pytest.mark.slow
def test_the_example_notebook_runs_and_shows_what_it_says(tmp_path):
    """Executed fresh with this interpreter as its kernel (a kernelspec written here, so no other Python is picked)."""
    try:
        import nbclient
        import nbformat
    except ImportError as e:  # the test extras have them: CI must not skip this
        if os.environ.get("CI"):
            pytest.fail(f"{e}: install the test extras")
        pytest.skip(str(e))
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec = tmp_path / "kernels" / "seedbed-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                                                  "display_name": "seedbed test", "language": "python"}))
    km = KernelManager(kernel_name="seedbed-test", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")]))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, km=km, timeout=600, resources={"metadata": {"path": str(tmp_path)}}).execute()

    outputs = [(c["source"], o) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for _, o in outputs if o["output_type"] == "error"]
    html = {src.splitlines()[-1]: o["data"]["text/html"] for src, o in outputs if "text/html" in o.get("data", {})}
    for out in html.values():
        safe(out)
    assert "Grown model" in html["g"]
    assert "Head scores" in html["heads"] and html["heads"].count("<tr>") == 1 + 2 * 2
    assert "<svg" in html["attention_pattern(g, layer=1)"] and "L1H1" in html["attention_pattern(g, layer=1)"]
    assert "Activation patching" in html["patched"]
    assert "induction-tiny" in html["TrialResult.open(run)"]
    printed = "".join(o.get("text", "") for _, o in outputs if o["output_type"] == "stream")
    found = re.search(r"best head: L(\d)H\d restores (-?[\d.]+) of the difference", printed)
    assert found, printed
    layer, share = int(found[1]), float(found[2])
    assert layer == 1 and 0.2 <= share <= 1.2  # an induction head in layer 1 carries much of the difference
    assert any("image/png" in o.get("data", {}) for _, o in outputs)  # the plot
