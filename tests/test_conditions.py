import pytest

from seedbed import conditions
from seedbed.conditions import Checkpoints
from seedbed.errors import SeedbedError
from seedbed.soil import resolve

from conftest import tiny, tiny_dict, write_toml


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
