"""The contained chat: text in, text out, nothing executed (`seedbed chat RUN`, docs/chat.md).

The essay *Optimality is the tiger, and agents are its teeth* opens on this prompt: a GPT, a header
that asks for a smart, helpful, concise and truthful model, and `Q: _`. Its point is that the danger
is not in the model but in a loop that runs what the model writes. So this module only ever turns
the model's tokens into characters on a screen and in a transcript file:

- nothing the model writes is executed, opened, fetched or parsed as anything but text (this module
  imports nothing that runs programs; a test checks its source);
- control characters are shown escaped (`\\x1b`), so the text cannot drive the terminal either;
- an answer that looks like a command or code gets a `[looks like code: not run]` note.

The conversation is the context: each question is appended to everything said so far, and the model
sees the last n_ctx tokens of it (its window; a note says when the start no longer fits).
"""

from __future__ import annotations

import codecs
import os
import re
import sys
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import TextIO

import torch

from seedbed.conditions import Text
from seedbed.contained import check_kind, folder, inside
from seedbed.errors import SeedbedError
from seedbed.read.load import Grown, load
from seedbed.sample import stream
from seedbed.soil.qa import ANSWER, QA_HEADER, QUESTION, STOPS
from seedbed.soil.text import Tokenizer

CODE_NOTE = "[looks like code: not run]"


@dataclass(frozen=True)
class Preset:
    """How a conversation is laid out as one text: what comes first, around each question, and where an answer ends."""

    header: str  # the context before the first question
    question: str  # before each question (part of the context)
    answer: str  # after each question: the model writes from here
    between: str  # after an answer, before the next question
    stops: tuple[str, ...]  # an answer ends at the first of these (not kept)
    prompt: str  # shown when waiting for a question in a session


PRESETS = {
    # the essay's header verbatim; "Q: question\nA: answer" lines, as the QA corpus (seedbed.soil.qa) writes them
    "qa": Preset(QA_HEADER, QUESTION, ANSWER, "\n", STOPS, QUESTION),
    # raw continuation: the text typed is appended as it is, and the model goes on for --max-new tokens
    "none": Preset("", "", "", "", (), "> "),
}


def preset_named(name: str) -> Preset:
    if name not in PRESETS:
        raise SeedbedError(f"unknown preset {name!r}: use one of {', '.join(PRESETS)}")
    return PRESETS[name]


def text_model(run: str | Path, step: int | None = None) -> Grown:
    """The run's model at `step`, refused in one line unless it grew on text (only text can read a question)."""
    grown = load(run, step)
    if not isinstance(grown.conditions.soil, Text) or grown.tokenizer is None:
        raise SeedbedError(f"run '{run}' grew on the {grown.conditions.soil.kind} soil, not on text: chat needs a text "
                           "model (grow one with [soil] kind = \"text\", e.g. examples/shakespeare-baby.toml)")
    return grown


# ── what is shown and saved ──────────────────────────────────────────────────
_CODE_SIGNS = [
    r"^\s*(\$|#!|>>>)",  # a shell prompt, a shebang, a Python prompt
    r"\$\(|`[^`\n]+`|&&|\|\|",  # command substitution, backticks, chaining
    r"^\s*(sudo|rm|curl|wget|chmod|chown|bash|sh|zsh|python3?|pip|eval|exec|echo|touch|mkdir|export|kill|ssh|git)\s+\S",
    r"^\s*(for \w+ in |while |do\b|done\b|if \[|import \w|from \w+ import|def \w+\(|class \w+[(:])",
    r"\b(os\.system|subprocess|eval\(|exec\(|__import__)",
    r"\w\s*>{1,2}\s*[\w/~.$]+\s*$",  # output redirected to a file
    r"\|\s*(sh|bash|python3?|xargs|tee|sudo)\b",  # piped into a program
]
_CODE = re.compile("|".join(f"(?:{sign})" for sign in _CODE_SIGNS), re.MULTILINE)


def looks_like_code(text: str) -> bool:
    """Whether `text` reads like a command or a program (a heuristic for the reader: it marks, it never runs)."""
    return bool(_CODE.search(text))


def printable(text: str) -> str:
    """`text` with control characters escaped (newlines and tabs kept), so that it cannot drive a terminal."""
    return "".join(c if c in "\n\t" or c.isprintable() else repr(c)[1:-1] for c in text)


class Transcript:
    """RUN/chat/NNN.txt, a new number each session; written as the conversation goes, so Ctrl-C leaves it saved."""

    def __init__(self, run: Path) -> None:
        """A new file: never one already there, never through a link (the run folder is untrusted)."""
        chat = inside(run, "chat")
        check_kind(chat, "dir")
        chat.mkdir(exist_ok=True)
        with folder(run, "chat") as dir_fd:
            taken = [int(m.group(1)) for name in os.listdir(dir_fd) if (m := re.fullmatch(r"(\d{1,9})\.txt", name))]
            number = max(taken, default=0) + 1
            while True:
                name = f"{number:03d}.txt"
                try:
                    self._fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                                       dir_fd=dir_fd)
                    break
                except FileExistsError:
                    number += 1
        self.path = chat / name

    def write(self, text: str) -> None:
        data = printable(text).encode("utf-8")
        while data:
            data = data[os.write(self._fd, data):]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _Decoder:
    """Text of one token at a time; a byte waits for the rest of its UTF-8 character (as a whole decode would read it)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace") if tokenizer.kind == "byte" else None

    def feed(self, token: int) -> str:
        return self.tokenizer.decode([token]) if self.utf8 is None else self.utf8.decode(bytes([token]))

    def end(self) -> str:
        return "" if self.utf8 is None else self.utf8.decode(b"", final=True)


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many characters at the end of `text` could be the start of a stop (not shown until we know)."""
    return max((k for stop in stops for k in range(1, len(stop)) if text.endswith(stop[:k])), default=0)


# ── the conversation ─────────────────────────────────────────────────────────
@dataclass
class Settings:
    temperature: float = 0.8
    top_k: int | None = None
    max_new: int = 200
    seed: int = 0

    def check(self) -> None:
        """One line for a setting that cannot work, before anything is loaded."""
        if self.max_new < 1:
            raise SeedbedError(f"--max-new is {self.max_new}: give the most tokens an answer may have, 1 or more")
        if not self.temperature >= 0:
            raise SeedbedError(f"--temperature is {self.temperature}: give 0 (the most likely token) or more")
        if self.top_k is not None and self.top_k < 1:
            raise SeedbedError(f"--top-k is {self.top_k}: give 1 or more, or leave it out")
        if self.seed < 0:
            raise SeedbedError(f"--seed is {self.seed}: give 0 or more")


class Chat:
    """A conversation with a grown text model: each answer is written after everything said so far."""

    def __init__(self, grown: Grown, preset: Preset, settings: Settings, transcript: Transcript,
                 out: TextIO, notes: TextIO) -> None:
        assert grown.tokenizer is not None  # text_model() made sure
        self.grown, self.tokenizer, self.preset, self.settings = grown, grown.tokenizer, preset, settings
        self.transcript, self.out, self.notes = transcript, out, notes
        self.context = preset.header  # the conversation as the model reads it
        self.turns = 0
        self.asked, self.partial, self.turn_notes = "", "", []  # the current turn, saved as it is if Ctrl-C comes
        s = settings
        transcript.write(f"# seedbed chat · run {grown.run} · step {grown.step} · temperature {s.temperature:g} · "
                         f"top-k {s.top_k or 'all'} · seed {s.seed} · max-new {s.max_new}\n"
                         "# the model's text, as it wrote it; nothing in it was run. [Notes] are seedbed's.\n\n"
                         + preset.header)

    def ask(self, question: str) -> str:
        """The model's answer to `question`, shown token by token as it is sampled; the conversation goes on from it."""
        p = self.preset
        asked = (p.between if self.turns else "") + p.question + question + p.answer
        ids = self._encoded(self.context + asked)
        n_ctx = self.grown.model.cfg.n_ctx
        self.asked, self.partial, self.turn_notes = asked, "", []
        if len(ids) > n_ctx:
            self._note(f"[context trimmed: the model sees the last {n_ctx} of {len(ids)} tokens]", self.notes)
        self._show(p.answer.lstrip("\n"))
        answer = self._written(ids[-n_ctx:], seed=self.settings.seed + self.turns)
        self._show("\n")
        if looks_like_code(answer):
            self._note(CODE_NOTE, self.out)
        self.context += asked + answer
        self.turns += 1
        self._save()
        return answer

    def interrupted(self) -> None:
        """Ctrl-C: keep what was said of this turn, and say it was cut."""
        self.turn_notes.append("[interrupted: Ctrl-C]")
        self._save()

    def close(self) -> None:
        self.transcript.write("\n")
        self.transcript.close()

    def _save(self) -> None:
        """The turn into the transcript: question, answer (so far), then seedbed's notes on lines of their own."""
        self.transcript.write(self.asked + self.partial + "".join("\n" + note for note in self.turn_notes))
        self.asked, self.partial, self.turn_notes = "", "", []

    def _written(self, prompt: list[int], seed: int) -> str:
        """The answer: tokens streamed to the screen as they come, up to a stop (not kept) or --max-new tokens."""
        s, stops, decoder = self.settings, self.preset.stops, _Decoder(self.tokenizer)
        tokens = stream(self.grown.model, torch.tensor(prompt), s.max_new, s.temperature, s.top_k, seed=seed)
        answer, shown = "", 0
        for token in chain(tokens, [None]):  # None: the end, where a byte still waiting is shown
            answer += decoder.end() if token is None else decoder.feed(token)
            cut = min((i for i in (answer.find(stop) for stop in stops) if i >= 0), default=-1)
            if cut >= 0:
                answer = answer[:cut]
                break
            safe = len(answer) - _held_back(answer, stops)
            self._show(answer[shown:safe])
            self.partial, shown = answer[:safe], safe
        self._show(answer[shown:])
        self.partial = answer
        return answer

    def _encoded(self, text: str) -> list[int]:
        """Token ids of `text`; a character the model never saw is one line, and the conversation is unchanged."""
        vocab = self.tokenizer.vocab
        if vocab is not None and (unseen := sorted(set(text) - set(vocab))):
            shown = ", ".join(repr(c) for c in unseen[:5])
            raise SeedbedError(f"the model has no token for {shown}: its vocabulary is the {len(vocab)} characters "
                               "of its corpus; ask without those")
        return self.tokenizer.encode(text)

    def _show(self, text: str) -> None:
        self.out.write(printable(text))
        self.out.flush()

    def _note(self, note: str, screen: TextIO) -> None:
        """A note of seedbed's (not the model's): on `screen` now, and in the transcript after the answer."""
        print(note, file=screen, flush=True)
        self.turn_notes.append(note)


# ── the two ways in ──────────────────────────────────────────────────────────
def ask_once(run: Path, question: str, preset: str = "qa", settings: Settings | None = None, step: int | None = None,
             out: TextIO | None = None, notes: TextIO | None = None) -> tuple[str, Path]:
    """`seedbed chat RUN --ask "…"`: one answer, on `out` (stdout), and the transcript's path. Notes go to `notes` (stderr)."""
    if not question.strip():
        raise SeedbedError('--ask is empty: give the question, e.g. --ask "where is the goal?"')
    out, notes = out or sys.stdout, notes or sys.stderr
    chat = _start(run, preset, settings or Settings(), step, out, notes)
    try:
        return chat.ask(question), chat.transcript.path
    except KeyboardInterrupt:
        chat.interrupted()
        raise
    finally:
        chat.close()
        print(f"transcript → {chat.transcript.path}", file=notes, flush=True)


def session(run: Path, preset: str = "qa", settings: Settings | None = None, step: int | None = None,
            stdin: TextIO | None = None, out: TextIO | None = None, notes: TextIO | None = None) -> Path:
    """`seedbed chat RUN`: questions line by line from `stdin` until it ends (Ctrl-D); the transcript's path."""
    stdin, out, notes = stdin or sys.stdin, out or sys.stdout, notes or sys.stderr
    chat = _start(run, preset, settings or Settings(), step, out, notes)
    echo = not stdin.isatty()  # piped questions are not echoed by a terminal: show them, so the screen reads as a chat
    print(f"chat with {run} at step {chat.grown.step:,} · preset {preset} · Ctrl-D ends, Ctrl-C too (both save)",
          file=notes, flush=True)
    chat._show(chat.preset.header)
    try:
        while True:
            chat._show(chat.preset.prompt)
            line = stdin.readline()
            if not line:
                chat._show("\n")
                break
            question = line.rstrip("\r\n")
            if echo:
                chat._show(question + "\n")
            if not question.strip():
                continue
            try:
                chat.ask(question)
            except SeedbedError as err:  # a character the model cannot read: say so, and wait for the next question
                print(f"error: {err}", file=notes, flush=True)
    except KeyboardInterrupt:
        chat.interrupted()
        raise
    finally:
        chat.close()
        print(f"\ntranscript → {chat.transcript.path}", file=notes, flush=True)
    return chat.transcript.path


def _start(run: Path, preset: str, settings: Settings, step: int | None, out: TextIO, notes: TextIO) -> Chat:
    """Check everything that can be checked cheaply, then load the model, then open the transcript."""
    chosen = preset_named(preset)
    settings.check()
    grown = text_model(run, step)
    return Chat(grown, chosen, settings, Transcript(Path(run)), out, notes)
