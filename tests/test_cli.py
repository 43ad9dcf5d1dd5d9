"""End-to-end: the `seedbed` command as a user types it."""

import shutil
from pathlib import Path

import pytest

from seedbed.run import Run

from conftest import cli, tiny, tiny_dict, write_toml


def one_line_error(proc, *words):
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_grow_runs_and_resume(tmp_path):
    cond = write_toml(tmp_path / "tiny.toml", tiny_dict())
    grown = cli("grow", str(cond), "--no-progress", cwd=tmp_path)
    assert grown.returncode == 0, grown.stderr
    assert "grew tiny" in grown.stdout
    listed = cli("runs", cwd=tmp_path)
    assert listed.returncode == 0
    row = next(line for line in listed.stdout.splitlines() if "tiny" in line)
    for word in ("repeated-blocks", "3,040", "40/40", "done"):
        assert word in row, row
    again = cli("grow", "--resume", "runs/tiny", "--no-progress", cwd=tmp_path)
    assert again.returncode == 0 and "already complete" in again.stdout


def test_grow_with_progress_bar_and_name(tmp_path):
    cond = write_toml(tmp_path / "c.toml", tiny_dict(name=None) | {"name": "x"})
    proc = cli("grow", str(cond), "--name", "other", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "step 40/40" in proc.stdout and "tok/s" in proc.stdout
    assert (tmp_path / "runs" / "other" / "run.sqlite").is_file()


def test_runs_on_an_empty_folder(tmp_path):
    proc = cli("runs", cwd=tmp_path)
    assert proc.returncode == 0 and "no runs" in proc.stdout


@pytest.mark.parametrize(
    "data, words",
    [
        ("seed = = 1", ["invalid TOML"]),
        ({"architecture": {"n_layres": 2}}, ["unknown key", "architecture.n_layres"]),
        ({"schedule": {"steps": "many"}}, ["schedule.steps", "integer"]),
        ({"architecture": {"d_model": 30, "n_heads": 4}}, ["n_heads=4 does not divide d_model=30"]),
        ({"architecture": {"d_vocab": 50}}, ["d_vocab=50", "16 tokens"]),
        ({"soil": {"kind": "text", "paths": ["no/such/corpus.txt"]}}, ["no such file or folder", "corpus.txt"]),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, data, words):
    path = tmp_path / "bad.toml"
    if isinstance(data, str):
        path.write_text(data)
    else:
        full = tiny_dict(**{k: v for k, v in data.items() if k != "soil"})
        if "soil" in data:
            full["soil"] = data["soil"]
        write_toml(path, full)
    proc = cli("grow", str(path), "--no-progress", cwd=tmp_path)
    one_line_error(proc, *words)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_existing_run_is_never_overwritten(tmp_path):
    cond = write_toml(tmp_path / "tiny.toml", tiny_dict())
    assert cli("grow", str(cond), "--no-progress", cwd=tmp_path).returncode == 0
    before = (tmp_path / "runs" / "tiny" / "run.sqlite").read_bytes()
    proc = cli("grow", str(cond), "--no-progress", cwd=tmp_path)
    one_line_error(proc, "already exists", "--resume")
    assert (tmp_path / "runs" / "tiny" / "run.sqlite").read_bytes() == before


def test_other_mistakes_are_one_line(tmp_path):
    one_line_error(cli("grow", "missing.toml", cwd=tmp_path), "no such conditions file")
    one_line_error(cli("grow", "--resume", "runs/nothing", cwd=tmp_path), "not a run folder")
    one_line_error(cli("grow", cwd=tmp_path), "conditions file")
    one_line_error(cli("grow", "--frobnicate", cwd=tmp_path), "--frobnicate")
    cond = write_toml(tmp_path / "tiny.toml", tiny_dict())
    one_line_error(cli("grow", str(cond), "--name", "../escape", cwd=tmp_path), "not allowed")


def test_a_run_folder_moves(tmp_path):
    cond = write_toml(tmp_path / "tiny.toml", tiny_dict(schedule={"steps": 20}))
    assert cli("grow", str(cond), "--no-progress", cwd=tmp_path).returncode == 0
    shutil.move(tmp_path / "runs" / "tiny", tmp_path / "elsewhere")
    run = Run.open(tmp_path / "elsewhere", readonly=True)
    assert (tmp_path / "elsewhere" / run.checkpoints()[-1].file).is_file()
    assert cli("grow", "--resume", "elsewhere", "--no-progress", cwd=tmp_path).returncode == 0


def test_runs_lists_a_broken_run_without_failing(tmp_path):
    cond = write_toml(tmp_path / "tiny.toml", tiny_dict(schedule={"steps": 10}))
    assert cli("grow", str(cond), "--no-progress", cwd=tmp_path).returncode == 0
    broken = tmp_path / "runs" / "broken"
    broken.mkdir()
    (broken / "run.sqlite").write_text("not a database")
    shutil.copy(tmp_path / "runs" / "tiny" / "conditions.toml", broken / "conditions.toml")
    proc = cli("runs", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "unreadable" in proc.stdout and "10/10" in proc.stdout
    one_line_error(cli("grow", "--resume", "runs/broken", cwd=tmp_path), "run.sqlite")


def test_unwritable_runs_folder_is_one_line(tmp_path):
    import os

    if os.geteuid() == 0:  # root writes anywhere: use a path under a file instead
        (tmp_path / "afile").write_text("x")
        runs_dir = str(tmp_path / "afile" / "runs")
    else:
        (tmp_path / "ro").mkdir(mode=0o500)
        runs_dir = str(tmp_path / "ro" / "runs")
    cond = write_toml(tmp_path / "tiny.toml", tiny_dict())
    one_line_error(cli("grow", str(cond), "--runs-dir", runs_dir, "--no-progress", cwd=tmp_path), "cannot use")


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_examples_are_named_after_what_they_are():
    """Each example's run is named as its file; examples/induction.toml is the induction trial's main model at `small`
    (the README says so), so `seedbed runs` never shows an example named like a trial's tiny scale."""
    from seedbed.conditions import load
    from seedbed.trials import get

    names = {path.stem: load(path).name for path in EXAMPLES.glob("*.toml")}
    assert names and all(stem == name for stem, name in names.items()), names
    assert not [n for n in names if n.endswith(("-tiny", "-small", "-full"))]
    example = load(EXAMPLES / "induction.toml").model_dump()
    trial = get("induction").conditions("small", 0)["main"].model_dump()
    assert example == trial


def test_runs_lists_the_runs_inside_trial_folders_but_not_links(tmp_path):
    from seedbed.grow import grow

    runs = tmp_path / "runs"
    grow(tiny(schedule={"steps": 2}), runs_dir=runs, name="plain", progress=False)
    grow(tiny(schedule={"steps": 2}), runs_dir=runs / "induction-small-seed0", name="main", progress=False)
    grow(tiny(schedule={"steps": 2}), runs_dir=runs / "x-small-seeds0-1" / "seed-1", name="control", progress=False)
    (runs / "elsewhere").symlink_to(runs / "plain")
    r = cli("runs", str(runs), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    names = [line.split()[0] for line in r.stdout.splitlines()[3:] if line.strip()]
    assert names == ["induction-small-seed0/main", "plain", "x-small-seeds0-1/seed-1/control"], r.stdout
