"""One-way mirrors of a run to the trackers people already run: TensorBoard event files, MLflow.

run.sqlite is the source of truth; a mirror is a copy of it, for other tools to show. The copy flows one
way. A `Mirror` reads the run through a read-only connection of its own, so it sees only what growth has
committed (never a step that a crash will roll back), and hands the new rows to its sinks; nothing a sink
does reaches training or the run. When growth starts or resumes, each sink is rewritten from run.sqlite
as a whole: a resume drops the steps after its checkpoint and grows them again, so appending would mirror
them twice. Then, after every commit (each eval and observation), the rows committed since follow.

A sink that fails (a full disk, an MLflow server gone) is dropped with one line of warning: growth goes
on, run.sqlite keeps everything, and `mirror(run, sinks)` rewrites the copy from it later.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import itertools
import os
import re
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Protocol, Self

from seedbed import conditions, contained
from seedbed.conditions import Tracking
from seedbed.errors import SeedbedError
from seedbed.run import RUN_FILES, Run

Scalar = tuple[int, str, float]  # (step, metric name, value)
Event = tuple[int, str, str, float]  # (step, kind, text, unix time)

TENSORBOARD_SUFFIX = ".seedbed"  # marks the event files a mirror wrote, the only ones it ever deletes
_numbers = itertools.count()  # tells apart two event files one process opens in the same second


def need(module: str, install: str, wanted: str) -> Any:
    """Import an optional package, or one line saying how to install it (checked before growth starts)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise SeedbedError(f"{wanted} needs the {module.split('.')[0]} package: pip install {install}") from None


class Sink(Protocol):
    """Where a mirror copies to. `begin` starts the copy afresh; `write` follows with rows in step order."""

    label: str  # for messages: "TensorBoard (runs/x/tensorboard)"

    def begin(self, run: Path) -> None: ...

    def write(self, scalars: list[Scalar], events: list[Event]) -> None: ...

    def close(self) -> None: ...


# ── TensorBoard ──────────────────────────────────────────────────────────────
class TensorBoard:
    """TensorBoard event files: metrics as scalars (tags are the metric names), events as text (`events/KIND`).

    `folder`: where the event files go; default `tensorboard/` inside the run folder. A folder given here
    is used as given (relative to the working directory): the code that passes it is its author's choice.
    A conditions file says only `in_run(NAME)`: a folder inside the run (see `sinks_for`).
    """

    def __init__(self, folder: str | Path | None = None) -> None:
        need("tensorboard", "'seedbed[tracking]'", "a TensorBoard mirror")
        self.folder = None if folder is None else Path(folder)
        self.in_run = "tensorboard" if folder is None else None
        self.label = "TensorBoard"
        self.file: Any = None

    @classmethod
    def inside(cls, relative: str) -> TensorBoard:
        """A mirror in the folder `relative` inside the run folder (what `[tracking] tensorboard` names)."""
        check_in_run(relative, "tracking.tensorboard")
        sink = cls()
        sink.in_run = relative
        return sink

    def begin(self, run: Path) -> None:
        """A new event file, then the old mirror's files removed (only those a mirror wrote: ours)."""
        from tensorboard.compat.proto import event_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter

        self.close()  # a file of an earlier begin
        folder = self._make_folder(run)
        self.label = f"TensorBoard ({folder})"
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_numbers)}"
        fd = os.open(folder / (name + TENSORBOARD_SUFFIX), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        self.file = RecordWriter(os.fdopen(fd, "wb"))
        now = time.time()
        self._put(event_pb2.Event(wall_time=now, file_version="brain.Event:2"))
        # a restart, as TensorBoard understands one: a viewer already showing the old files drops every step >= 0
        self._put(event_pb2.Event(wall_time=now, step=0, session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
        self.file.flush()
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for old in os.listdir(fd):
                if old.startswith("events.out.tfevents.") and old.endswith(TENSORBOARD_SUFFIX) and old != name + TENSORBOARD_SUFFIX:
                    os.unlink(old, dir_fd=fd)  # a link is removed itself, its target untouched
        finally:
            os.close(fd)

    def _make_folder(self, run: Path) -> Path:
        """The folder, made if missing; inside the run: through no symbolic link, and refused if it is not a folder."""
        if self.in_run is None:
            assert self.folder is not None
            self.folder.mkdir(parents=True, exist_ok=True)
            return self.folder.resolve()
        path = run
        for part in PurePosixPath(self.in_run).parts:
            path = path / part
            contained.check_kind(path, "dir")  # a link or a file there is refused, never followed
            path.mkdir(exist_ok=True)
        return contained.inside(run, self.in_run)

    def write(self, scalars: list[Scalar], events: list[Event]) -> None:
        """One TensorBoard event per step for the scalars, one per (step, kind) for the events; in step order."""
        from tensorboard.compat.proto import event_pb2, summary_pb2

        now = time.time()
        records: list[tuple[int, Any]] = []
        for step, rows in itertools.groupby(scalars, key=lambda r: r[0]):
            values = [summary_pb2.Summary.Value(tag=name, simple_value=value) for _, name, value in rows]
            records.append((step, event_pb2.Event(wall_time=now, step=step, summary=summary_pb2.Summary(value=values))))
        for (step, kind), rows in itertools.groupby(sorted(events, key=lambda e: (e[0], e[1])), key=lambda e: (e[0], e[1])):
            rows = list(rows)
            text = "\n\n".join(r[2] for r in rows)
            records.append((step, event_pb2.Event(wall_time=rows[0][3], step=step, summary=_text(f"events/{kind}", text))))
        for _, event in sorted(records, key=lambda r: r[0]):
            self._put(event)
        self.file.flush()

    def _put(self, event: Any) -> None:
        self.file.write(event.SerializeToString())

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def _text(tag: str, text: str) -> Any:
    """A text summary as TensorBoard's text plugin reads it: a scalar string tensor with the plugin's metadata."""
    from tensorboard.compat.proto import (
        summary_pb2,
        tensor_pb2,
        tensor_shape_pb2,
        types_pb2,
    )
    from tensorboard.plugins.text.metadata import create_summary_metadata

    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[text.encode()], tensor_shape=tensor_shape_pb2.TensorShapeProto())
    value = summary_pb2.Summary.Value(tag=tag, metadata=create_summary_metadata(tag, ""), tensor=tensor)
    return summary_pb2.Summary(value=[value])


# ── MLflow ───────────────────────────────────────────────────────────────────
class MLflow:
    """An MLflow run in `experiment`: metrics by step, the run's events as the artifact `seedbed/events.tsv`.

    `tracking_uri`: default MLflow's own (the environment's MLFLOW_TRACKING_URI, else MLflow's local
    default). The mirror is found again by the tag `seedbed.run` (a hash of the run folder's path): a
    rewrite deletes it and makes it anew.
    """

    BATCH = 1000  # metrics per log_batch call: MLflow's limit

    def __init__(self, experiment: str = "seedbed", tracking_uri: str | None = None) -> None:
        need("mlflow", "mlflow", "an MLflow mirror")
        self.experiment, self.tracking_uri = experiment, tracking_uri
        self.label = f"MLflow (experiment {experiment!r})"
        self.client: Any = None
        self.run_id: str | None = None
        self.events: list[Event] = []

    def begin(self, run: Path) -> None:
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        found = self.client.get_experiment_by_name(self.experiment)
        experiment_id = found.experiment_id if found is not None else self.client.create_experiment(self.experiment)
        path = str(Path(run).resolve())
        key = hashlib.sha256(path.encode()).hexdigest()[:16]  # a tag value that needs no quoting in a filter
        for old in self.client.search_runs([experiment_id], filter_string=f"tags.`seedbed.run` = '{key}'"):
            self.client.delete_run(old.info.run_id)
        tags = {"seedbed.run": key, "seedbed.path": path}
        self.run_id = self.client.create_run(experiment_id, run_name=Path(run).name, tags=tags).info.run_id
        self.events = []

    def write(self, scalars: list[Scalar], events: list[Event]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(mlflow_key(name), value, now, step) for step, name, value in scalars]
        for i in range(0, len(metrics), self.BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + self.BATCH])
        if events:  # few and small: the whole table again
            self.events += events
            table = "step\tkind\ttext\n" + "".join(f"{s}\t{k}\t{' '.join(t.split())}\n" for s, k, t, _ in self.events)
            self.client.log_text(self.run_id, table, "seedbed/events.tsv")

    def close(self) -> None:
        if self.client is not None and self.run_id is not None:
            self.client.set_terminated(self.run_id)
        self.client = self.run_id = None


def mlflow_key(name: str) -> str:
    """A metric name every MLflow accepts (letters, digits, `_ - . /` and spaces); anything else becomes `_`."""
    return re.sub(r"[^\w\-. /]", "_", name)


# ── the mirror ───────────────────────────────────────────────────────────────
def check_in_run(relative: str, key: str) -> None:
    """A mirror folder named by conditions: inside the run folder, and none of the run's own files."""
    rel = PurePosixPath(relative)
    if not rel.parts or "\0" in relative or rel.is_absolute() or any(p in ("..", ".") for p in rel.parts):
        raise SeedbedError(f'{key} = {relative!r} is not a folder inside the run folder: write a relative name such '
                           f'as "tensorboard" (from Python, grow(sinks=[TensorBoard(DIR)]) writes anywhere)')
    if rel.parts[0] in RUN_FILES:
        raise SeedbedError(f'{key} = {relative!r} is one of the run\'s own files: choose another name, e.g. "tensorboard"')


def sinks_for(tracking: Tracking | None) -> list[Sink]:
    """The sinks a conditions file's `[tracking]` asks for; a missing package is one line, before growth."""
    if tracking is None:
        return []
    sinks: list[Sink] = []
    if tracking.tensorboard is not None:
        sinks.append(TensorBoard.inside(tracking.tensorboard))
    if tracking.mlflow is not None:
        sinks.append(MLflow(tracking.mlflow))
    return sinks


class Mirror:
    """Copies run.sqlite to sinks: all of it when opened, then what was committed since, at each `sync`."""

    def __init__(self, sinks: Sequence[Sink] = (), say: Callable[[str], None] | None = None) -> None:
        self.sinks, self.say = list(sinks), say  # say: where a failing sink is reported and dropped; None: raise
        self.reader: Run | None = None
        self.metric_row = self.event_row = 0  # the last rowid of each table already mirrored

    def open(self, run: Path) -> None:
        """Rewrite every sink from the run as it is now."""
        if not self.sinks:
            return
        self.reader = Run.open(run, readonly=True)
        self.metric_row = self.event_row = 0
        self._each(lambda sink: sink.begin(Path(run)))
        self.sync()

    def sync(self) -> None:
        """Hand the sinks the rows committed since the last sync, in step order."""
        if self.reader is None or not self.sinks:
            return
        db = self.reader.db
        metric_rows = db.execute("SELECT rowid, step, name, value FROM metrics WHERE rowid > ? ORDER BY step, rowid",
                                 (self.metric_row,)).fetchall()
        event_rows = db.execute("SELECT rowid, step, kind, text, time FROM events WHERE rowid > ? ORDER BY step, rowid",
                                (self.event_row,)).fetchall()
        self.metric_row = max((r[0] for r in metric_rows), default=self.metric_row)
        self.event_row = max((r[0] for r in event_rows), default=self.event_row)
        scalars = [(s, n, float(v)) for _, s, n, v in metric_rows if _typed(s, int) and _typed(n, str) and _typed(v, (int, float))]
        events = [(s, k, t, float(w or 0)) for _, s, k, t, w in event_rows if _typed(s, int) and _typed(k, str) and _typed(t, str)]
        if scalars or events:
            self._each(lambda sink: sink.write(scalars, events))

    def close(self) -> None:
        """A last sync (the closing events), then every sink closed."""
        try:
            self.sync()
        finally:
            self._each(lambda sink: sink.close())
            if self.reader is not None:
                self.reader.close()
                self.reader = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _each(self, act: Callable[[Sink], None]) -> None:
        """Do `act` on every sink; a sink that fails is dropped with one line, and growth goes on."""
        for sink in list(self.sinks):
            try:
                act(sink)
            except Exception as err:  # noqa: BLE001  (a mirror must never stop growth: run.sqlite has everything)
                if self.say is None:
                    raise SeedbedError(f"mirroring to {sink.label} failed: {err}") from None
                self.sinks.remove(sink)
                self.say(f"[yellow]note: stopped mirroring to {sink.label}: {err}; run.sqlite keeps everything: "
                         f"rewrite the mirror later with seedbed.tracking.mirror(RUN, sinks)")
                with contextlib.suppress(Exception):  # it failed already: its own words were said
                    sink.close()


def _typed(value: object, kind: type | tuple[type, ...]) -> bool:
    """SQLite keeps whatever type was stored: a run folder from elsewhere may hold text where a number belongs."""
    return isinstance(value, kind) and not isinstance(value, bool)


def mirror(run: str | Path, sinks: Iterable[Sink] | None = None) -> None:
    """Rewrite mirrors of a finished (or any) run from its run.sqlite: by default those its `[tracking]` names."""
    run = Path(run)
    Run.check_exists(run)
    chosen = list(sinks) if sinks is not None else sinks_for(conditions.load(run / "conditions.toml", purpose="read").tracking)
    with Mirror(chosen) as m:
        m.open(run)
