"""The "frames" figure: episodes stored as text tiles and a palette, drawn as strips of pictures in the page and PNG."""

from __future__ import annotations

from test_report import trial_result

from seedbed.report import MAX_FRAMES, draw, render, to_png

PALETTE = {"#": [90, 90, 90], " ": [235, 235, 235], "A": [20, 40, 160], "G": [60, 200, 90]}
FRAMES = [["####", "#A G", "####"], ["####", "# AG", "####"], ["####", "#  A", "####"]]


def spec(strips: list[dict]) -> dict:
    return {"kind": "frames", "id": "episode", "title": "one episode", "palette": PALETTE, "strips": strips}


def test_a_frames_spec_draws_each_strip_with_its_tiles_and_step_labels() -> None:
    fig = draw(spec([{"label": "watched", "frames": FRAMES, "steps": ["0", "1", "2"]},
                     {"label": "unwatched", "frames": FRAMES[:2]}]))
    top, bottom = fig.axes
    image = top.get_images()[0].get_array()
    assert image.shape == (3, 3 * 4 + 2, 3)  # three 3×4 frames, a one-tile gap between them
    assert tuple(image[1, 1]) == (20, 40, 160) and tuple(image[1, 5 + 2]) == (20, 40, 160)  # the agent moves right
    assert tuple(image[0, 4]) == (255, 255, 255)  # the gap
    assert [t.get_text() for t in top.get_xticklabels()] == ["0", "1", "2"]
    assert top.get_title(loc="left") == "watched" and bottom.get_images()[0].get_array().shape == (3, 9, 3)
    assert to_png(fig)[:4] == b"\x89PNG"


def test_a_long_episode_is_thinned_to_its_first_and_last_frames() -> None:
    frames = [FRAMES[i % 3] for i in range(40)]
    ax = draw(spec([{"label": "long", "frames": frames, "steps": [str(i) for i in range(40)]}])).axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert len(labels) == MAX_FRAMES and labels[0] == "0" and labels[-1] == "39"


def test_the_page_embeds_the_frames_offline() -> None:
    result = trial_result()
    result["figures"] = [*result["figures"], spec([{"label": "an episode", "frames": FRAMES}])]
    page = render(result)
    assert page.count("<svg") >= len(result["figures"]) and "data:image/png;base64" in page
    assert "http://" not in page.split("<svg", 1)[1].replace("http://www.w3.org", "")  # nothing fetched from a network
