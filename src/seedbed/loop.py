"""The loop that pumps a next-token predictor into an agent (the `tiger` trial; docs/chat.md, "The loop").

*Optimality is the tiger, and agents are its teeth*: a plain predictor has no wants; a loop that writes
its outputs back into the world makes it act. This module is that loop, written so that its power is
exactly what it is given and every use of it is on record:

- observe the world, write the transcript so far after a target return (the transcripts soil's format),
  ask the model (`seedbed.sample`, KV cache) for the next action;
- parse the output against the world's action set only (one of `u d l r`); anything else is logged and
  refused, never acted on, interpreted or run;
- act, append, repeat, within budgets: world steps and model calls per episode;
- an audit log row for every model call: what was asked (its length and end), what came back, what the
  harness did with it.

A second harness (`subquery=True`) lets an output ask the model a question (the essay's `query-model`):
an output starting with `?` is a sub-query; its text is asked in the chat's `qa` preset, the answer is
logged (and never acted on unless a later output is an action), and the sub-query costs a model call
from the same budget. This module imports nothing that runs programs; a test checks its source.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from seedbed.chat import looks_like_code, preset_named
from seedbed.errors import SeedbedError
from seedbed.model import Transformer
from seedbed.sample import sample
from seedbed.soil.transcripts import (
    ACTIONS,
    ALPHABET,
    BOS,
    END,
    decode,
    encode,
    observation,
    return_text,
)
from seedbed.worlds.grid import World

ASK = "?"  # an output starting with this asks the model a sub-query (the second harness only)
QUERY_MAX = 40  # characters of a sub-query and of its answer
ANSWER_MAX = 40


@dataclass(frozen=True)
class Budget:
    """What one episode of the loop may spend: steps in the world and calls of the model (sub-queries included)."""

    world_steps: int
    model_calls: int

    def __post_init__(self) -> None:
        if self.world_steps < 0 or self.model_calls < 0:
            raise SeedbedError(f"budget {self.world_steps} steps, {self.model_calls} calls: give 0 or more of each")


@dataclass
class Call:
    """One audit-log row: a model call, what it was asked, what it wrote, and what the harness did."""

    episode: int
    call: int  # the episode's call number, from 0
    kind: str  # "act" (the next action), "subquery" (a question an output asked), "one-shot" (a QA question)
    prompt_chars: int
    prompt_end: str  # the last characters of the prompt
    output: str
    outcome: str  # "acted: d", "refused: not an action", "asked a sub-query", "answered", "answered (text only)"
    looks_like_code: bool = False


@dataclass
class Played:
    """One episode of the loop: its transcript as written, what happened and what it cost."""

    episode: int
    interrupted: bool  # the hidden draw
    transcript: str
    states: list[int]
    success: bool = False
    pressed: bool = False
    steps: int = 0
    calls: int = 0
    refused: int = 0
    subqueries: int = 0
    stopped: str = ""  # "goal", "world-step budget", "model-call budget", "episode limit"


@dataclass
class Pumped:
    """Many episodes of the loop and the audit log of every call they made."""

    target: int
    budget: Budget
    episodes: list[Played]
    log: list[Call] = field(default_factory=list)

    def rate(self, what: str) -> float:
        return float(np.mean([getattr(e, what) for e in self.episodes])) if self.episodes else 0.0

    def summary(self) -> dict:
        """The audit log in numbers: calls by kind and outcome, refusals and budget stops, spent against allowed."""
        outcomes = Counter(c.outcome if not c.outcome.startswith("acted") else "acted" for c in self.log)
        return {"calls": len(self.log), "by_kind": dict(Counter(c.kind for c in self.log)), "by_outcome": dict(outcomes),
                "refused_outputs": dict(Counter(c.output for c in self.log if c.outcome.startswith("refused")).most_common(5)),
                "stopped": dict(Counter(e.stopped for e in self.episodes)),
                "world_steps": sum(e.steps for e in self.episodes), "max_calls_per_episode": max((e.calls for e in self.episodes), default=0),
                "calls_per_episode_allowed": self.budget.model_calls, "steps_per_episode_allowed": self.budget.world_steps,
                "looks_like_code": sum(c.looks_like_code for c in self.log)}


def parse_action(output: str) -> int | None:
    """The action an output names: exactly one of the world's action letters, nothing else (None: refused)."""
    return ACTIONS.index(output) if len(output) == 1 and output in ACTIONS else None


def start_states(world: World, n: int, seed: int) -> np.ndarray:
    """The episodes' start states (the hidden interruption draw), from `seed` alone."""
    return world.start_state(np.random.default_rng([seed, 1]).random(n))


def pump(model: Transformer, world: World, target: int, budget: Budget, n: int, seed: int, temperature: float = 1.0,
         subquery: bool = False) -> Pumped:
    """`n` episodes of the loop, each conditioned on the return `target`, within `budget` each.

    Episodes step together: each round, every live episode gets one model call (batched by prompt length,
    one `seedbed.sample` call per length) and acts on it or has it refused. Same seed, same episodes."""
    out = Pumped(target, budget, [])
    starts = start_states(world, n, seed)
    for i, s in enumerate(starts):
        interrupted = bool(world.decode(int(s))[1]["should_interrupt"])
        out.episodes.append(Played(i, interrupted, return_text(target), [int(s)]))
    for r in range(budget.world_steps + budget.model_calls + 1):  # each round spends a call of every live episode
        live = [e for e in out.episodes if not e.stopped and _within(e, budget, world)]
        if not live:
            break
        for length in sorted({len(prompt(world, e)) for e in live}):
            group = [e for e in live if len(prompt(world, e)) == length]
            draw = int(np.random.SeedSequence([seed, r, length]).generate_state(1)[0])
            _round(model, world, group, out.log, budget, temperature, draw, subquery)
    for e in out.episodes:
        if not e.stopped:
            _within(e, budget, world)
        e.transcript += observation(world, e.states[-1]) + END
    return out


def prompt(world: World, e: Played) -> str:
    """What the model is shown: BOS, the target return, the steps so far and the current position."""
    return BOS + e.transcript + observation(world, e.states[-1])


def _within(e: Played, budget: Budget, world: World) -> bool:
    """Whether the episode may go on; if not, why it stopped is recorded."""
    if e.steps >= world.max_steps:
        e.stopped = e.stopped or "episode limit"
    elif e.steps >= budget.world_steps:
        e.stopped = e.stopped or "world-step budget"
    elif e.calls >= budget.model_calls:
        e.stopped = e.stopped or "model-call budget"
    return not e.stopped


def _round(model: Transformer, world: World, group: list[Played], log: list[Call], budget: Budget, temperature: float,
           seed: int, subquery: bool) -> None:
    """One model call per episode of `group` (prompts of one length), then act or refuse."""
    prompts = [prompt(world, e) for e in group]
    tokens = torch.tensor([encode(p) for p in prompts])
    written = sample(model, tokens, 1, temperature=temperature, seed=seed if temperature > 0 else None)[:, -1]
    for e, p, token in zip(group, prompts, written.tolist()):
        output = ALPHABET[token]
        row = Call(e.episode, e.calls, "act", len(p), p[-8:], output, "")
        log.append(row)
        e.calls += 1
        if subquery and output == ASK:
            row.outcome = "asked a sub-query"
            _subquery(model, e, p + ASK, log, budget, temperature, seed)
            continue
        action = parse_action(output)
        if action is None:
            row.outcome, e.refused = "refused: not one of u d l r", e.refused + 1
            continue
        row.outcome = f"acted: {output}"
        _act(world, e, action)


def _act(world: World, e: Played, action: int) -> None:
    """The world takes the action (or the interruption replaces it); the transcript gets the position and the action."""
    s = e.states[-1]
    executed = world.executed(s, action, 1.0, 0.0)  # no noise in this world; the interruption may force UP
    e.transcript += observation(world, s) + ACTIONS[action]
    done, s = bool(world.terminal[s, executed]), int(world.next[s, executed])
    e.states.append(s)
    e.steps += 1
    e.pressed = e.pressed or bool(world.decode(s)[1]["button"])
    if done:
        e.success, e.stopped = True, "goal"


def _subquery(model: Transformer, e: Played, asked: str, log: list[Call], budget: Budget, temperature: float,
              seed: int) -> None:
    """The rest of the asking output is the question; asked in the `qa` preset, it costs one more call if any is left."""
    question = complete(model, asked, QUERY_MAX, temperature, seed).split("\n")[0]
    e.subqueries += 1
    if e.calls >= budget.model_calls:
        return
    answer = one_shot(model, question, temperature, seed)
    log.append(Call(e.episode, e.calls, "subquery", len(question), question[-8:], answer, "answered (text only)",
                    looks_like_code(answer)))
    e.calls += 1


def complete(model: Transformer, text: str, max_new: int, temperature: float, seed: int) -> str:
    """What the model writes after `text` (up to `max_new` characters, to the first newline)."""
    tokens = torch.tensor(encode(text))
    written = sample(model, tokens, max_new, temperature=temperature, seed=seed if temperature > 0 else None,
                     stop=ALPHABET.index("\n"))
    return decode(written[len(tokens):]).split("\n")[0]


def one_shot(model: Transformer, question: str, temperature: float = 0.0, seed: int = 0) -> str:
    """The model's answer to `question` in the chat's `qa` preset: text, and nothing else happens."""
    qa = preset_named("qa")
    text = complete(model, BOS + qa.header + qa.question + question + qa.answer, ANSWER_MAX, temperature, seed)
    return text.strip()


def asked_once(model: Transformer, world: World, question: str, seed: int = 0) -> tuple[str, Played, Call]:
    """One shot, no loop: an episode is set up in the world, the question asked in the `qa` preset, and the answer
    kept as text. Only `_act` steps an episode, and nothing here calls it: the episode's step count says so."""
    e = Played(0, bool(world.decode(int(start_states(world, 1, seed)[0]))[1]["should_interrupt"]), "",
               [int(start_states(world, 1, seed)[0])])
    answer = one_shot(model, question)
    e.calls = 1
    return answer, e, Call(0, 0, "one-shot", len(question), question[-8:], answer, "answered (text only)", looks_like_code(answer))


def audit_rows(pumped: Pumped) -> list[dict]:
    return [asdict(c) for c in pumped.log]
