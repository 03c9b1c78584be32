"""ROUGE-L between short texts: a bit-parallel LCS, fast enough to compare against thousands.

Tokens are characters by default (Korean has no reliable whitespace words for short
instructions) or whitespace-separated words. Used by the export's near-identical-pair filter
and by Self-Instruct's near-duplicate filter.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import Literal

Tokenizer = Literal["char", "word"]


def tokenize(text: str, tokens: Tokenizer = "char") -> list[str]:
    """Whitespace-free characters (`char`) or whitespace-separated words (`word`)."""
    if tokens == "char":
        return [ch for ch in text if not ch.isspace()]
    if tokens == "word":
        return text.split()
    raise ValueError(f"tokens must be 'char' or 'word', got {tokens!r}")


class LcsMatcher:
    """LCS lengths of many sequences against one fixed sequence `b` (its bit masks built once).

    Hyyrö's bit-vector algorithm (2004): one Python big-int per token of the other sequence,
    O(len(a)·len(b)/64) word operations.
    """

    def __init__(self, b: Sequence[Hashable]) -> None:
        self.length = len(b)
        self._masks: dict[Hashable, int] = {}
        for i, token in enumerate(b):
            self._masks[token] = self._masks.get(token, 0) | (1 << i)
        self._full = (1 << len(b)) - 1

    def lcs(self, a: Iterable[Hashable]) -> int:
        if not self.length:
            return 0
        v = self._full
        for token in a:
            u = v & self._masks.get(token, 0)
            v = ((v + u) | (v - u)) & self._full
        return self.length - v.bit_count()


def lcs_length(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Length of the longest common subsequence of `a` and `b`."""
    if len(a) < len(b):
        a, b = b, a
    return LcsMatcher(b).lcs(a)


def rouge_l(a: str, b: str, tokens: Tokenizer = "char") -> float:
    """ROUGE-L F1 of two texts (symmetric; 1.0 for identical, 0.0 if either is empty)."""
    ta, tb = tokenize(a, tokens), tokenize(b, tokens)
    if not ta or not tb:
        return 0.0
    lcs = lcs_length(ta, tb)
    return 2 * lcs / (len(ta) + len(tb))


def rouge_l_upper_bound(len_a: int, len_b: int) -> float:
    """The highest ROUGE-L F1 two texts of these token counts can reach (prunes comparisons)."""
    if not len_a or not len_b:
        return 0.0
    return 2 * min(len_a, len_b) / (len_a + len_b)


class RougeIndex:
    """Texts kept so far; `most_similar(text)` finds the highest ROUGE-L F1 against them,
    stopping early once `threshold` is reached and skipping texts whose lengths rule it out."""

    def __init__(self, tokens: Tokenizer = "char", threshold: float = 1.0) -> None:
        self.tokens: Tokenizer = tokens
        self.threshold = threshold
        self._kept: list[list[str]] = []

    def __len__(self) -> int:
        return len(self._kept)

    def add(self, text: str) -> None:
        self._kept.append(tokenize(text, self.tokens))

    def most_similar(self, text: str) -> float:
        candidate = tokenize(text, self.tokens)
        if not candidate:
            return 0.0
        matcher = LcsMatcher(candidate)
        best = 0.0
        for kept in self._kept:
            total = len(kept) + len(candidate)
            if rouge_l_upper_bound(len(kept), len(candidate)) <= best or not kept:
                continue
            score = 2 * matcher.lcs(kept) / total
            if score > best:
                best = score
                if best >= self.threshold:
                    break
        return best
