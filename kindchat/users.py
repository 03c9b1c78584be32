"""Simulated users as plug-ins: any preference goes in, only votes and thumbs come out.

A user plug-in is any object with three methods (:class:`SimulatedUser`):

* ``vote(prompt, answer_a, answer_b) -> "a" | "b" | "tie" | "both_bad"`` — an arena vote;
* ``rate(prompt, answer) -> 1 | -1 | None`` — 👍, 👎, or no rating;
* ``score(prompt, answer) -> float`` — how much these users like the answer. Used **only** to
  report how well the served model pleases them; never given to training or to a gate.

`load_users(SPEC)` takes a built-in name (:data:`BUILTINS`) or ``path/to/file.py:factory``,
where the factory takes no arguments and returns such an object. Every answer a plug-in gives
is checked (:class:`CheckedUser`): one that raises or leaves the protocol stops the run with one
line naming the plug-in.

The built-in rule-based users turn a score into votes the way people are modelled in
preference learning: Bradley–Terry choice on the score gap with a temperature, a tie when the
two answers are about as good, `both_bad` when both fall under a floor, plus a share of random
votes (`noise`). Nothing in kindchat's loop knows which preference a plug-in holds.
"""

from __future__ import annotations

import importlib.util
import math
import random
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from kindchat.errors import InvalidError

VOTES = ("a", "b", "tie", "both_bad")
RATINGS = (1, -1, None)


class UserPluginError(InvalidError):
    """A user plug-in could not be loaded, raised, or answered outside the protocol."""


@runtime_checkable
class SimulatedUser(Protocol):
    def vote(self, prompt: str, answer_a: str, answer_b: str) -> str: ...

    def rate(self, prompt: str, answer: str) -> int | None: ...

    def score(self, prompt: str, answer: str) -> float: ...


@dataclass
class ScoredUser:
    """Votes and thumbs from a score function (see the module docstring)."""

    scorer: Callable[[str, str], float]
    temperature: float = 0.1  # Bradley–Terry temperature on the score gap (0: always the better)
    tie_margin: float = 0.02  # |gap| under this is a tie
    bad_below: float | None = None  # both under this: `both_bad`
    up_above: float = 0.5  # 👍 when the score is over this …
    down_below: float = 0.5  # … 👎 when under this (in between: no rating)
    noise: float = 0.1  # share of random votes and thumbs
    seed: int = 0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()

    def score(self, prompt: str, answer: str) -> float:
        return float(self.scorer(prompt, answer))

    def vote(self, prompt: str, answer_a: str, answer_b: str) -> str:
        a, b = self.score(prompt, answer_a), self.score(prompt, answer_b)
        with self._lock:
            if self._rng.random() < self.noise:
                return self._rng.choice(("a", "b"))
            if self.bad_below is not None and max(a, b) < self.bad_below:
                return "both_bad"
            gap = a - b
            if abs(gap) < self.tie_margin:
                return "tie"
            if self.temperature == 0:
                return "a" if gap > 0 else "b"
            p_a = 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, gap / self.temperature))))
            return "a" if self._rng.random() < p_a else "b"

    def rate(self, prompt: str, answer: str) -> int | None:
        s = self.score(prompt, answer)
        with self._lock:
            if self._rng.random() < self.noise:
                return self._rng.choice((1, -1))
        if s > self.up_above:
            return 1
        if s < self.down_below:
            return -1
        return None


# ---- built-in preferences ---------------------------------------------------------------------
_SENTENCE_END = re.compile(r"[^.!?。\n]+[.!?。]?")
_POLITE = ("요", "니다", "세요", "까요", "죠", "시오")


def polite_score(prompt: str, answer: str) -> float:
    """존댓말: the share of sentences that end politely (…요, …니다); 0 for an empty answer."""
    sentences = [s.strip(" .!?。~") for s in _SENTENCE_END.findall(answer) if s.strip(" .!?。~")]
    if not sentences:
        return 0.0
    return sum(s.endswith(_POLITE) for s in sentences) / len(sentences)


def concise_score(prompt: str, answer: str) -> float:
    """Short and to the point: 0 for about 40 visible characters, −1 at 140 and beyond; an
    empty answer is −1 too (saying nothing is not concise, it is unhelpful)."""
    length = len("".join(answer.split()))
    if length == 0:
        return -1.0
    return -min(1.0, max(0.0, (length - 40) / 100))


def _polite() -> ScoredUser:
    return ScoredUser(polite_score, temperature=0.15, bad_below=0.2, up_above=0.6, down_below=0.4)


def _concise() -> ScoredUser:
    return ScoredUser(
        concise_score, temperature=0.15, bad_below=-0.9, up_above=-0.3, down_below=-0.6
    )


class GoldRmUser:
    """Prefers what the gold RM scores higher (kindchat's earlier simulated voter)."""

    def __init__(self, gold_dir: Path, max_length: int = 256, noise: float = 0.1) -> None:
        from kindchat.models.loading import load_reward_model  # lazy: torch for gold-rm only

        self.model, self.tokenizer = load_reward_model(gold_dir)
        self.max_length = max_length
        self._lock = threading.Lock()
        self._user = ScoredUser(
            self._score, temperature=0.5, tie_margin=0.0, up_above=0.0, down_below=0.0, noise=noise
        )

    def _score(self, prompt: str, answer: str) -> float:
        from kindchat.retrain.reward import score_texts  # lazy: see __init__

        with self._lock:
            return float(
                score_texts(self.model, self.tokenizer, [prompt], [answer], self.max_length)[0]
            )

    def score(self, prompt: str, answer: str) -> float:
        return self._user.score(prompt, answer)

    def vote(self, prompt: str, answer_a: str, answer_b: str) -> str:
        return self._user.vote(prompt, answer_a, answer_b)

    def rate(self, prompt: str, answer: str) -> int | None:
        return self._user.rate(prompt, answer)


BUILTINS: dict[str, Callable[..., Any]] = {
    "polite": _polite,  # 존댓말 over 반말
    "concise": _concise,  # short answers over long ones
    "gold-rm": GoldRmUser,  # needs the gold RM's directory
}


class CheckedUser:
    """Wraps a plug-in: every answer is checked, and any failure names the plug-in."""

    def __init__(self, user: Any, name: str) -> None:
        missing = [m for m in ("vote", "rate", "score") if not callable(getattr(user, m, None))]
        if missing:
            raise UserPluginError(f"user plug-in {name}: has no method(s) {', '.join(missing)}")
        self.user = user
        self.name = name

    def _call(self, method: str, *args: str) -> Any:
        try:
            return getattr(self.user, method)(*args)
        except Exception as err:
            raise UserPluginError(
                f"user plug-in {self.name}: {method}() raised {type(err).__name__}: {err}"
            ) from None

    def vote(self, prompt: str, answer_a: str, answer_b: str) -> str:
        value = self._call("vote", prompt, answer_a, answer_b)
        if value not in VOTES:
            raise UserPluginError(
                f"user plug-in {self.name}: vote() returned {value!r}; expected one of "
                f"{', '.join(VOTES)}"
            )
        return str(value)

    def rate(self, prompt: str, answer: str) -> int | None:
        value = self._call("rate", prompt, answer)
        if isinstance(value, bool) or value not in RATINGS:
            raise UserPluginError(
                f"user plug-in {self.name}: rate() returned {value!r}; expected 1, -1 or None"
            )
        return value  # type: ignore[no-any-return]

    def score(self, prompt: str, answer: str) -> float:
        value = self._call("score", prompt, answer)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise UserPluginError(
                f"user plug-in {self.name}: score() returned {value!r}; expected a finite number"
            )
        return float(value)


def load_users(spec: str, **builtin_kwargs: Any) -> CheckedUser:
    """A built-in by name (`builtin_kwargs` go to its factory), or `file.py:factory`."""
    if spec in BUILTINS:
        return CheckedUser(BUILTINS[spec](**builtin_kwargs), spec)
    path_text, colon, factory_name = spec.rpartition(":")
    if not colon or not path_text.endswith(".py"):
        raise UserPluginError(
            f"unknown users {spec!r}: give a built-in ({', '.join(sorted(BUILTINS))}) "
            "or path/to/file.py:factory"
        )
    path = Path(path_text)
    if not path.is_file():
        raise UserPluginError(f"user plug-in {spec}: {path} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"kindchat_users_{path.stem}", path)
    if module_spec is None or module_spec.loader is None:
        raise UserPluginError(f"user plug-in {spec}: {path} cannot be imported")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:
        raise UserPluginError(
            f"user plug-in {spec}: importing {path} raised {type(err).__name__}: {err}"
        ) from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise UserPluginError(f"user plug-in {spec}: {path} has no callable {factory_name!r}")
    try:
        user = factory()
    except Exception as err:
        raise UserPluginError(
            f"user plug-in {spec}: {factory_name}() raised {type(err).__name__}: {err}"
        ) from None
    return CheckedUser(user, spec)
