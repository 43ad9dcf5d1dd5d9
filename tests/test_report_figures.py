"""The report's figures and numbers as a reader sees them: legends beside the plot, readable token labels,
bar colours explained, every threshold drawn, evidence keys in words."""

from __future__ import annotations

import pytest
from matplotlib.legend import Legend
from test_report import trial_result

from seedbed.report import TICK_PT, draw, label, render


def laid_out(spec: dict):
    fig = draw(spec)
    fig.draw_without_rendering()
    return fig, fig.axes[0]


def legend_of(ax) -> Legend:
    legend = ax.get_legend()
    assert legend is not None
    return legend


@pytest.mark.parametrize("kind", ["lines", "bars"])
def test_the_legend_sits_beside_the_plot_not_on_it(kind):
    spec = next(f for f in trial_result()["figures"] if f["kind"] == kind)
    fig, ax = laid_out(spec)
    plot, legend = ax.get_window_extent(), legend_of(ax).get_window_extent()
    assert legend.x0 >= plot.x1, (legend, plot)  # so neither a curve nor the threshold line crosses it
    assert legend.x1 <= fig.bbox.x1 + 1  # and it is not cut off


def test_token_labels_are_readable_and_thinned_when_there_are_many():
    for n in (10, 40, 120):
        tokens = [str(i % 64) for i in range(n)]
        spec = {"kind": "heatmap", "x_labels": tokens, "y_labels": tokens, "values": [[1.0 / n] * n for _ in range(n)]}
        _, ax = laid_out(spec)
        for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
            assert labels and all(t.get_fontsize() >= TICK_PT for t in labels)
            boxes = [t.get_window_extent() for t in labels]
            assert not [i for i in range(len(boxes) - 1) if boxes[i].overlaps(boxes[i + 1])], n  # none on top of another
        assert len(ax.get_yticklabels()) == n if n <= 40 else len(ax.get_yticklabels()) < n


def test_ablation_bars_explain_their_colours_and_draw_every_threshold():
    spec = {"kind": "bars", "bars": [{"label": "a", "value": 2.0, "highlight": True}, {"label": "b", "value": 0.1}],
            "highlight_label": "in the circuit", "other_label": "outside the circuit",
            "hlines": [{"y": 1.0, "label": "all: more than 1"}, {"y": 0.5, "label": "each outside: less than 25%"}]}
    _, ax = laid_out(spec)
    texts = [t.get_text() for t in legend_of(ax).get_texts()]
    for words in ("in the circuit", "outside the circuit", "all: more than 1", "each outside: less than 25%"):
        assert any(words in " ".join(t.split()) for t in texts), (words, texts)
    dashes = {line.get_linestyle() for line in ax.get_lines() if line.get_ydata()[0] in (1.0, 0.5)}
    assert len(dashes) == 2  # two thresholds, told apart

    plain = {"kind": "bars", "bars": [{"label": "a", "value": 2.0}, {"label": "b", "value": 0.1}]}
    assert draw(plain).axes[0].get_legend() is None  # one colour, no threshold: nothing to explain


def test_evidence_keys_are_shown_in_words_with_the_key_beside():
    assert label("ablate_L0H1_rise") == "rise in loss when L0H1 is ablated"
    assert label("transition_sharpness").startswith("sharpness of the transition")
    assert label("previous_token_L0H3") == "previous-token score of L0H3"
    assert label("watch/induction/L1H2") == "induction score of L1H2"
    assert label("k_composition_random_q99") == "K-composition of random head pairs: 99% quantile"
    assert label("induction_score_L1H3") == "induction score of L1H3"
    assert label("some_new_number") == "some new number"  # an unknown key still reads as words

    result = trial_result()
    result["evidence"] = {"ablate_L0H1_rise": 0.12, "transition_sharpness": 3.2}
    page = render(result)
    assert "rise in loss when L0H1 is ablated</td>" in page and "<code>ablate_L0H1_rise</code>" in page
