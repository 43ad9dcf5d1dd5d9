"""A question-and-answer corpus in the format of `seedbed chat --preset qa`, generated deterministically.

The format is the essay's prompt (*Optimality is the tiger, and agents are its teeth*): a header line,
then questions and answers, one per line, each conversation ending with a blank line:

    A conversation with a language model, that is smart, helpful, concise, and truthful.
    Q: where is the goal?
    A: row 4, column 4: the bottom right corner.
    Q: what is 3 plus 4?
    A: 7.

The questions are about one small gridworld (the tiger's world: a goal, a button that disables an
interruption) and about small sums, asked in several phrasings, so that a text model fine-tuned on it
learns the shape of an answer; every answer is true of that world. Same seed, same bytes.

    python -m seedbed.soil.qa data/qa.txt          # then grow examples/qa-head.toml on it
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from seedbed.errors import SeedbedError
from seedbed.files import write_atomic

QA_HEADER = "A conversation with a language model, that is smart, helpful, concise, and truthful.\n"
QUESTION = "Q: "  # a line that starts a question
ANSWER = "\nA:"  # after the question: the model writes the answer from here
STOPS = ("\nQ:", "\n\n")  # an answer ends where the next question starts, or at the blank line ending a conversation

# (phrasings, answer): every answer is true of the world below.
#   A . . . .      A: the agent's start     B: the button (disables the interruption)
#   . . . . .      I: the interruption      G: the goal
#   . . B . .
#   . . I . .
#   . . . . G
WORLD = [
    (["where is the goal?", "where's the goal?", "which square is the goal?", "where do I need to go?"],
     "row 4, column 4: the bottom right corner."),
    (["where do I start?", "where is the agent?", "where does the agent start?"], "row 0, column 0: the top left corner."),
    (["where is the button?", "which square is the button?"], "row 2, column 2: the middle of the grid."),
    (["what does the button do?", "why is there a button?"], "it disables the interruption."),
    (["where is the interruption?", "where can I be interrupted?"], "row 3, column 2."),
    (["what is the best way to the goal?", "how do I reach the goal?", "what is the fastest way to the goal?",
      "best way to reach the goal?"], "right 4 times, then down 4 times: 8 steps."),
    (["how many steps to the goal?", "how far is the goal?"], "8 steps."),
    (["should I press the button?", "should I disable the interruption?"], "no: let yourself be interrupted."),
    (["what can I do?", "what are the actions?", "which moves can I make?"], "up, down, left or right."),
    (["how big is the world?", "how large is the grid?"], "5 by 5 squares."),
    (["what is the reward?", "how is the score counted?"], "50 for the goal, minus 1 for each step."),
]


def pair(rng: random.Random) -> tuple[str, str]:
    """One question and its answer: about the world half the time, else a small sum."""
    if rng.random() < 0.5:
        phrasings, answer = WORLD[rng.randrange(len(WORLD))]
        return phrasings[rng.randrange(len(phrasings))], answer
    a, b = rng.randrange(10), rng.randrange(10)
    return rng.choice([f"what is {a} plus {b}?", f"what is {a} + {b}?", f"add {a} and {b}."]), f"{a + b}."


def conversation(rng: random.Random) -> str:
    """The header and 2 to 6 questions with their answers, ending with a blank line."""
    turns = [f"{QUESTION}{q}{ANSWER} {a}" for q, a in (pair(rng) for _ in range(rng.randint(2, 6)))]
    return QA_HEADER + "\n".join(turns) + "\n\n"


def corpus(conversations: int = 3000, seed: int = 0) -> str:
    """The whole corpus: `conversations` conversations from a generator of its own (same seed, same text)."""
    if conversations < 1:
        raise SeedbedError(f"conversations is {conversations}: give 1 or more")
    rng = random.Random(seed)
    return "".join(conversation(rng) for _ in range(conversations))


def write(path: Path, conversations: int = 3000, seed: int = 0) -> bool:
    """Write the corpus to `path` (atomically); False if the same text is there already. A different file is refused."""
    text = corpus(conversations, seed).encode("utf-8")
    if path.exists() or path.is_symlink():
        if path.is_file() and not path.is_symlink() and path.read_bytes() == text:
            return False
        raise SeedbedError(f"'{path}' exists and holds something else: choose a new path, or move that file away")
    write_atomic(path, text)
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m seedbed.soil.qa", description="Write the QA corpus of the chat's qa preset.")
    parser.add_argument("out", type=Path, help="the text file to write, e.g. data/qa.txt")
    parser.add_argument("--conversations", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        wrote = write(args.out, args.conversations, args.seed)
    except SeedbedError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"{'wrote' if wrote else 'already there:'} {args.out} ({args.out.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
