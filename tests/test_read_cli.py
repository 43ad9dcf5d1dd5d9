"""`seedbed read RUN`: the head table, the standouts, and attention pictures, end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import cli, tiny, tiny_dict
from seedbed.conditions import parse
from seedbed.grow import grow


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("read")
    grow(tiny(), runs_dir=runs, name="t", progress=False)
    return runs / "t"


def test_read_prints_every_head_and_draws_patterns(run: Path, tmp_path: Path) -> None:
    r = cli("read", str(run), "--out", str(tmp_path / "pics"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "held-out loss at step 40:" in r.stdout
    for head in ("L0H0", "L0H1", "L1H0", "L1H1"):
        assert head in r.stdout
    for score in ("previous-token", "induction", "duplicate-token", "copying"):
        assert score in r.stdout
    pngs = sorted((tmp_path / "pics").glob("L*H*.png"))
    assert pngs, r.stdout
    for p in pngs:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
        assert str(p) in r.stdout


def test_read_defaults_to_a_folder_inside_the_run(run: Path, tmp_path: Path) -> None:
    r = cli("read", str(run), "--step", "0", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "at step 0" in r.stdout and "no held-out loss logged by step 0" in r.stdout
    assert list((run / "read" / "step-000000").glob("*.png"))


def test_read_at_a_step_without_checkpoint_lists_the_steps(run: Path, tmp_path: Path) -> None:
    r = cli("read", str(run), "--step", "7", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "no checkpoint at step 7" in r.stderr and "10, 20" in r.stderr
    assert "Traceback" not in r.stderr


def test_read_of_something_that_is_not_a_run(tmp_path: Path) -> None:
    r = cli("read", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 2 and "neither a run folder" in r.stderr and "Hugging Face" in r.stderr and r.stderr.count("\n") == 1


def test_read_on_a_context_too_short_for_the_scores(tmp_path: Path) -> None:
    short = tiny_dict(schedule={"steps": 2}, architecture={"n_ctx": 2})
    short["soil"] = {"kind": "repeated-blocks", "vocab_size": 8, "block_min": 1, "block_max": 1, "prefix_max": 0}
    grow(parse(short), runs_dir=tmp_path, name="short", progress=False)
    r = cli("read", str(tmp_path / "short"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "not measurable: n_ctx=2" in r.stdout and "copying" in r.stdout


def test_read_never_overwrites_pictures_of_an_earlier_read(run: Path, tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "L0H0.png").write_bytes(b"mine")
    r = cli("read", str(run), "--out", str(taken), cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--out" in r.stderr and "Traceback" not in r.stderr
    assert (taken / "L0H0.png").read_bytes() == b"mine"
    first = cli("read", str(run), "--step", "10", cwd=tmp_path)
    second = cli("read", str(run), "--step", "10", cwd=tmp_path)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert list((run / "read" / "step-000010").glob("*.png")) and list((run / "read" / "step-000010-2").glob("*.png"))
    assert str(run / "read" / "step-000010-2") in second.stdout


def test_read_does_not_follow_a_linked_read_folder_out_of_the_run(tmp_path: Path) -> None:
    grow(tiny(schedule={"steps": 2}), runs_dir=tmp_path, name="linked", progress=False)
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "linked" / "read").symlink_to(outside)
    r = cli("read", str(tmp_path / "linked"), cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "symbolic link" in r.stderr
    assert not any(outside.iterdir())
