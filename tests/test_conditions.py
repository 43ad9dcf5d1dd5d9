import os
import tomllib
from pathlib import Path

import pytest
from conftest import cli, tiny, tiny_dict, write_toml

from seedbed import budget, conditions
from seedbed.conditions import Checkpoints
from seedbed.errors import SeedbedError
from seedbed.soil import resolve

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.toml"))


def test_defaults_fill_in_and_roundtrip(tmp_path):
    c, _ = resolve(tiny())
    assert c.architecture.d_head == 8 and c.architecture.d_vocab == 16
    c.save(tmp_path / "c.toml")
    again = conditions.load(tmp_path / "c.toml")
    assert again == c


def test_mlp_width_defaults_to_four_times_d_model():
    c = tiny(architecture={"attn_only": False})
    assert c.architecture.d_mlp == 64


@pytest.mark.parametrize(
    "over, words",
    [
        ({"architecture": {"n_heads": 3}}, ["n_heads=3", "d_model=16", "d_head"]),
        ({"architecture": {"n_layrs": 3}}, ["unknown key", "architecture.n_layrs"]),
        ({"seed": "zero"}, ["seed", "integer"]),
        ({"soil": {"vocab_sise": 3}}, ["unknown key", "soil.vocab_sise"]),
        ({"soil": {"kind": "marmalade"}}, ["soil.kind"]),
        ({"schedule": {"steps": 0}}, ["schedule.steps", "greater than"]),
        ({"soil": {"block_min": 9, "block_max": 3}}, ["block_min", "block_max"]),
        ({"optimizer": {"betas": [0.9]}}, ["optimizer.betas"]),
    ],
)
def test_bad_conditions_are_one_line(over, words):
    with pytest.raises(SeedbedError) as err:
        conditions.parse(tiny_dict(**over))
    msg = str(err.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


def test_shape_checks_against_the_soil():
    with pytest.raises(SeedbedError, match="d_vocab=99"):
        resolve(tiny(architecture={"d_vocab": 99}))
    with pytest.raises(SeedbedError, match="block_max"):
        resolve(tiny(soil={"block_max": 12}))  # two copies of 12 do not fit in n_ctx 16
    digits = tiny_dict(architecture={"n_ctx": 8})
    digits["soil"] = {"kind": "digit-addition", "n_digits": 5}
    with pytest.raises(SeedbedError, match="n_ctx >= 17"):
        resolve(conditions.parse(digits))


def test_invalid_toml_is_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("seed = = 3\n")
    with pytest.raises(SeedbedError, match="invalid TOML") as err:
        conditions.load(bad)
    assert "\n" not in str(err.value)
    with pytest.raises(SeedbedError, match="no such conditions file"):
        conditions.load(tmp_path / "missing.toml")


def test_example_files_are_valid():
    from pathlib import Path

    examples = sorted((Path(__file__).parent.parent / "examples").glob("*.toml"))
    assert examples
    for f in examples:
        c = conditions.load(f)
        if c.soil.kind != "text":
            resolve(c)


def test_checkpoint_schedule_is_log_spaced_then_even():
    assert Checkpoints(log_until=8, every=10).steps(35) == [0, 1, 2, 4, 8, 10, 20, 30, 35]
    assert Checkpoints(log_until=512, every=1000, at=[77]).steps(3000)[:12] == [0, 1, 2, 4, 8, 16, 32, 64, 77, 128, 256, 512]


def test_toml_written_by_save_reloads(tmp_path):
    path = write_toml(tmp_path / "x.toml", tiny_dict())
    assert conditions.load(path).soil.kind == "repeated-blocks"


# ── strict types ─────────────────────────────────────────────────────────────
INT_FIELDS = ["seed", "architecture.n_layers", "architecture.d_model", "architecture.n_ctx", "soil.vocab_size",
              "schedule.steps", "schedule.batch_size", "checkpoints.every"]
FLOAT_FIELDS = ["optimizer.lr", "optimizer.eps", "optimizer.weight_decay", "schedule.min_lr_ratio", "architecture.dropout"]


def with_value(field: str, value) -> dict:
    """tiny_dict() with one dotted field set."""
    *sections, key = field.split(".")
    over: dict = {key: value}
    for s in reversed(sections):
        over = {s: over}
    return tiny_dict(**over)


def refusal(data: dict, **kw) -> str:
    with pytest.raises(SeedbedError) as err:
        conditions.parse(data, **kw)
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


@pytest.mark.parametrize("field", INT_FIELDS + FLOAT_FIELDS)
@pytest.mark.parametrize("value, fix", [("1", "without quotes"), (True, "e.g."), ("0.001", "without quotes")])
def test_strings_and_bools_are_not_numbers(field, value, fix):
    msg = refusal(with_value(field, value))
    assert field in msg and repr(value) in msg and fix in msg, msg


@pytest.mark.parametrize("field", INT_FIELDS)
def test_a_float_is_not_a_whole_number(field):
    assert "whole number" in refusal(with_value(field, 2.0))


@pytest.mark.parametrize("field", FLOAT_FIELDS)
def test_ints_are_fine_where_floats_are_expected(field):
    whole = 0 if field == "architecture.dropout" else 1  # dropout < 1, lr and eps > 0
    c = conditions.parse(with_value(field, whole))
    section, key = field.split(".")
    value = getattr(getattr(c, section), key)
    assert value == whole and isinstance(value, float)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_inf_are_refused(value):
    assert "finite" in refusal(with_value("optimizer.lr", value))


def test_betas_are_written_as_a_list_of_two_numbers():
    assert conditions.parse(tiny_dict(optimizer={"betas": [0.9, 0.98]})).optimizer.betas == (0.9, 0.98)
    assert conditions.parse(tiny_dict(optimizer={"betas": [0, 0]})).optimizer.betas == (0.0, 0.0)
    assert "give two numbers" in refusal(tiny_dict(optimizer={"betas": [0.9, 0.9, 0.9]}))
    assert "without quotes" in refusal(tiny_dict(optimizer={"betas": [0.9, "0.9"]}))
    assert "less than 1" in refusal(tiny_dict(optimizer={"betas": [0.9, 1.5]}))  # AdamW would raise mid-start
    assert "list of two numbers" in refusal(tiny_dict(optimizer={"betas": 0.9}))


def test_text_paths_must_name_something():
    text = {"kind": "text", "paths": [""]}
    assert "whole current folder" in refusal(tiny_dict(soil=text))
    assert "NUL" in refusal(tiny_dict(soil={"kind": "text", "paths": ["a\0b"]}))


def test_a_newline_in_an_unknown_key_stays_on_one_line():
    assert "unknown key 'a\\nb'" in refusal({**tiny_dict(), "a\nb": 1})


def test_saved_conditions_still_load(tmp_path):
    """What seedbed writes (a run's conditions.toml, trial workers' JSON dumps) passes the strict schema."""
    from seedbed.grow import grow

    run = grow(tiny(schedule={"steps": 2}, optimizer={"betas": [0.9, 0.98]}), runs_dir=tmp_path, progress=False)
    saved = conditions.load(run.path / "conditions.toml")
    assert saved.optimizer.betas == (0.9, 0.98)
    assert conditions.parse(saved.model_dump(mode="json")) == saved
    for f in EXAMPLES:
        c = conditions.load(f)
        assert conditions.parse(c.model_dump(mode="json")) == c
        assert conditions.parse(tomllib.loads(c.to_toml())) == c


def test_non_utf8_and_oversized_files_are_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b'name = "\xff\xfe"\n')
    with pytest.raises(SeedbedError, match="not a UTF-8"):
        conditions.load(bad)
    bad.write_bytes(b"#" * (conditions.MAX_FILE_BYTES + 1))
    with pytest.raises(SeedbedError, match="not a conditions file"):
        conditions.load(bad)


# ── sizes that cannot fit ────────────────────────────────────────────────────
MACHINE = 16 * 10**9  # a 16 GB machine, whatever this one has


@pytest.fixture
def sixteen_gb(monkeypatch):
    monkeypatch.setenv(budget.MEMORY_ENV, str(MACHINE))


def modular(p: int) -> dict:
    d = tiny_dict(architecture={"n_ctx": 3})
    d["soil"] = {"kind": "modular-arithmetic", "p": p}
    return d


CANNOT_FIT = [  # (conditions, the field the message must name)
    (tiny_dict(architecture={"d_model": 100_000}), "architecture.d_model=100000"),
    (tiny_dict(schedule={"batch_size": 10**9}), "schedule.batch_size=1000000000"),
    (tiny_dict(architecture={"n_ctx": 10**9}), "architecture.n_ctx=1000000000"),
    (tiny_dict(soil={"vocab_size": 10**9}), "soil.vocab_size=1000000000"),
    (tiny_dict(architecture={"attn_only": False, "d_mlp": 10**12}), "architecture.d_mlp=1000000000000"),
    (tiny_dict(architecture={"n_layers": 10**9}), "architecture.n_layers"),
    (tiny_dict(architecture={"n_layers": 10**4, "d_model": 2048, "n_heads": 2}), "architecture.n_layers=10000"),
    (tiny_dict(seed=2**64), "seed"),
    (modular(2**63), "soil.p"),
    (modular(20_000), "soil.p=20000"),
    (tiny_dict(optimizer={"lr": 1e12}), "optimizer.lr"),
]


@pytest.mark.parametrize("data, field", CANNOT_FIT, ids=lambda v: v if isinstance(v, str) else "")
def test_sizes_that_cannot_fit_are_refused_by_parse(sixteen_gb, data, field):
    msg = refusal(data)
    assert field in msg, msg


def test_the_refusal_says_how_much_and_what_to_lower(sixteen_gb):
    msg = refusal(tiny_dict(architecture={"d_model": 100_000}))
    assert "needs about" in msg and "this machine has 16 GB" in msg and msg.endswith("lower d_model"), msg


def test_what_fits_is_not_refused(sixteen_gb):
    conditions.parse(tiny_dict(architecture={"d_model": 1024, "n_ctx": 512}, soil={"vocab_size": 50_000}))
    conditions.parse(modular(500))  # measured: 4.0 GB to grow
    for f in EXAMPLES:
        conditions.load(f)


def test_memory_is_the_machines_unless_overridden(monkeypatch):
    monkeypatch.delenv(budget.MEMORY_ENV, raising=False)
    assert budget.machine_memory() == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    monkeypatch.setenv(budget.MEMORY_ENV, "1e4")
    assert "lower" in refusal(tiny_dict())
    monkeypatch.setenv(budget.MEMORY_ENV, "lots")
    assert budget.MEMORY_ENV in refusal(tiny_dict())


def test_reading_needs_less_than_growing(monkeypatch):
    data = tiny_dict(architecture={"d_model": 4096, "n_heads": 4, "n_layers": 4})
    need = budget.sizes(conditions.parse(data)).bytes_to("grow")
    monkeypatch.setenv(budget.MEMORY_ENV, str(need // 2))
    assert "to grow" in refusal(data)
    conditions.parse(data, purpose="read")


@pytest.mark.parametrize("over", [
    {},
    {"architecture": {"attn_only": False}},
    {"architecture": {"attn_only": False, "layernorm": False, "tied_embeddings": True, "d_mlp": 40}},
    {"architecture": {"d_head": 5, "n_heads": 3}},
])
def test_parameter_count_is_the_models(over):
    import torch

    from seedbed.model import Transformer

    c, _ = resolve(tiny(**over))
    with torch.device("meta"):
        assert budget.sizes(c).params == Transformer(c.architecture).n_params()


@pytest.mark.slow
@pytest.mark.parametrize("data, field", CANNOT_FIT, ids=lambda v: v if isinstance(v, str) else "")
def test_sizes_that_cannot_fit_are_one_line_from_the_cli(tmp_path, runs, data, field):
    path = write_toml(tmp_path / "big.toml", data)
    done = cli("grow", str(path), "--runs-dir", str(runs), "--no-progress", cwd=tmp_path, env={budget.MEMORY_ENV: str(MACHINE)})
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and field in done.stderr, done.stderr
    assert not runs.exists() or not any(runs.iterdir())


@pytest.mark.slow
def test_runs_lists_a_run_with_crafted_sizes_as_unreadable(tmp_path, runs):
    from seedbed.grow import grow

    run = grow(tiny(schedule={"steps": 2}), runs_dir=runs, progress=False)
    saved = run.path / "conditions.toml"
    text = saved.read_text()
    assert "n_layers = 2\n" in text
    saved.write_text(text.replace("n_layers = 2\n", "n_layers = 100000000\n"))
    done = cli("runs", str(runs), cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "unreadable" in done.stdout and "n_layers" in done.stdout, done.stdout
