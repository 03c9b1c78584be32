"""Moderation: one interface, ``check(text) -> Verdict``, for user turns and answers alike.

- :class:`LexiconModerator` reads a Korean/English lexicon kept as data
  (`feedback/data/moderation.json`, or `KINDCHAT_MODERATION_LEXICON`) and reads Korean as people
  type it (see *Views* below).
- :class:`EndpointModerator` asks an OpenAI-compatible `/moderations` endpoint (OpenAI's, or a
  self-hosted Llama Guard behind one), when `KINDCHAT_MODERATION_BASE_URL` is set.
- :func:`load_moderator` chains them: the first flag wins.

A flagged user turn gets a kind refusal instead of a generation (:func:`refusal`; self-harm gets
a warm answer with the 109 crisis line instead), and flagged turns never reach training data (the
export drops them, counted in its manifest). The same lexicon names models (`identity`): an arena
answer that says which model it is voids the battle, as FastChat does, since a vote on it is no
longer blind.

Lexicon (version 2; a version-1 file with only `categories` and `identity` still works):

- `categories`: terms per category. Hangul terms match inside words (Korean attaches particles:
  짱깨가, 짱깨들) on the jamo view, Latin ones at word boundaries on the Latin views.
- `abbreviations`: initial-consonant (choseong) abbreviations per category (ㅅㅂ, ㅂㅅ, …); they
  match a standalone run of consonant letters (ㅋㅋㅅㅂ, ㅅㅂㅅㅂ), never inside ㅂㅂㅅㄱ.
- `patterns`: regular expressions per category over the normalised views (lower case; `\\s*`
  where people may or may not put a space); self-harm intent and distress live here.
- `allow` (words) and `allow_patterns` (regexes): look-alikes blanked out before anything else
  matches (시발점, 수박 씨 발라 먹기, 한남동, 폭탄주, 자살률 …). An `allow` word also matches
  with separators between its letters (시 발 점).
- `priority`: which category a text that matches several gets (self-harm first, so that the warm
  answer wins); unlisted categories follow in file order.

Views of a text (each built once per check, all cheap):

1. *base*: NFKC; format characters (U+2060, soft hyphen, ZWJ …), combining marks, controls and
   Hangul fillers removed; lower case; whitespace runs as one space; conjoining jamo as
   compatibility jamo (a typed ㅄ as ㅂㅅ).
2. *tight*: punctuation, symbols and digits between two Hangul letters removed (씨.발, 씨1발).
3. *joined*: *tight* without the space after a single-letter Hangul word (씨 발, 짱 깨, 병 신아,
   ㅅ ㅣ ㅂ ㅏ ㄹ); two longer words stay apart (물병 신발). A longer word and a single letter
   after it (한남 충) are tried as a pair that must match from the word's start, so 아저씨 발
   never reads as 씨발. Runs of letters are also composed for the patterns (ㅈㅏ살 → 자살).
4. *jamo*: *joined* as compatibility jamo, a mark before each syllable or letter, compound
   vowels and finals split; a Hangul term matches from the start of a syllable to the end of one
   however its letters were typed (시발, 시바ㄹ, ㅅㅣㅂㅏㄹ), never across syllables (시바 라면).
5. *leet*: Latin tokens with digits or symbols read as letters (b0mb, k1ll, $uicide; 1 as i and as
   l) for Latin terms and patterns.
6. *keyboard*: Latin tokens read as keystrokes of the Korean 2-set (dubeolsik) keyboard in Latin
   mode (tlqkf → 시발, Tlqkf → 씨발), kept only when every keystroke composes into a full
   syllable (most English words do not: hello → ㅗ디ㅣㅐ); they can match Hangul terms and
   patterns only, never the consonant abbreviations (qt, tq).

A check runs twice at most: first without the allow list (most texts match nothing, and then the
look-alikes need not be blanked), then, if something matched, with the look-alikes blanked. A
look-alike can therefore only clear a text, never flag one. :meth:`LexiconModerator.views` shows
the views of a text, to see why it was (not) flagged.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache, cached_property, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

try:  # the regex parser, to find the literals a pattern needs (stable since Python 2)
    from re import _parser as _sre_parse  # type: ignore[attr-defined]
except ImportError:  # Python 3.10
    import sre_parse as _sre_parse  # type: ignore[no-redef]

logger = logging.getLogger(__name__)

HANGUL = re.compile(r"[\uac00-\ud7a3\u3131-\u318e]")

REFUSAL = (
    "죄송하지만 그 요청은 도와드릴 수 없어요. 누군가에게 상처를 주거나 위험할 수 있는 "
    "내용이라서요. 다른 이야기라면 언제든 기꺼이 함께할게요."
)
SELF_HARM_REFUSAL = (
    "이야기해 주셔서 고마워요. 지금 많이 힘드시죠. 그런 마음이 들 만큼 버거운 일을 혼자 견디지 "
    "않으셨으면 해요. 자살예방상담전화 109에 전화하시면 24시간 언제든 상담사가 이야기를 들어 "
    "드려요(정신건강위기상담전화 1577-0199도 있어요). 지금 당장 위험하다고 느껴지시면 119에 "
    "연락해 주세요. 괜찮으시다면 제게도 무슨 일이 있었는지 천천히 들려주세요. 여기서 들을게요."
)
SELF_HARM = SELF_HARM_REFUSAL

LEXICON_VERSION = 2
DEFAULT_PRIORITY = ("self_harm", "sexual_minors", "violence", "crime", "hate", "harassment")


@dataclass(frozen=True)
class Verdict:
    """Whether a text is flagged, under which category, and what matched (or who said so)."""

    flagged: bool
    category: str | None = None
    evidence: str | None = None
    source: str = "lexicon"

    @property
    def reason(self) -> str | None:
        """What the store keeps on a flagged message: `source:category`."""
        return f"{self.source}:{self.category}" if self.flagged else None


CLEAN = Verdict(False)


class Moderator(Protocol):
    def check(self, text: str) -> Verdict: ...


# ---- Hangul ----------------------------------------------------------------------------------

_CHO = "ㄱㄲㄴㄷㄸㄹㅁㅂㅃㅅㅆㅇㅈㅉㅊㅋㅌㅍㅎ"
_JUNG = "ㅏㅐㅑㅒㅓㅔㅕㅖㅗㅘㅙㅚㅛㅜㅝㅞㅟㅠㅡㅢㅣ"
_JONG = ("", *"ㄱㄲㄳㄴㄵㄶㄷㄹㄺㄻㄼㄽㄾㄿㅀㅁㅂㅄㅅㅆㅇㅈㅊㅋㅌㅍㅎ")
# compound letters as the keys that type them (the jamo view splits them, so ㅄ reads as ㅂㅅ)
_COMPOUND = {
    "ㄳ": "ㄱㅅ", "ㄵ": "ㄴㅈ", "ㄶ": "ㄴㅎ", "ㄺ": "ㄹㄱ", "ㄻ": "ㄹㅁ", "ㄼ": "ㄹㅂ", "ㄽ": "ㄹㅅ",
    "ㄾ": "ㄹㅌ", "ㄿ": "ㄹㅍ", "ㅀ": "ㄹㅎ", "ㅄ": "ㅂㅅ", "ㅘ": "ㅗㅏ", "ㅙ": "ㅗㅐ", "ㅚ": "ㅗㅣ",
    "ㅝ": "ㅜㅓ", "ㅞ": "ㅜㅔ", "ㅟ": "ㅜㅣ", "ㅢ": "ㅡㅣ",
}  # fmt: skip
_COMPOSE = {pair: letter for letter, pair in _COMPOUND.items()}
_CONSONANTS = frozenset("ㄱㄲㄳㄴㄵㄶㄷㄸㄹㄺㄻㄼㄽㄾㄿㅀㅁㅂㅃㅄㅅㅆㅇㅈㅉㅊㅋㅌㅍㅎ")
_VOWELS = frozenset(_JUNG)
MARK = "\x01"  # before each syllable or letter in the jamo view (controls never survive folding)
BLANK = "\ue000"  # what an allowed look-alike becomes (private use: never in folded text)
_HANGUL_CLASS = "\uac00-\ud7a3\u3131-\u3163"
_HANGUL_ANY = re.compile(f"[{_HANGUL_CLASS}]")
_LATIN_ANY = re.compile(r"[a-z]")
_GAP_INSIDE = re.compile(f"(?<=[{_HANGUL_CLASS}])(?:[^\\w\\s{BLANK}]|[\\d_])+(?=[{_HANGUL_CLASS}])")
_SINGLE_TOKEN = re.compile(f"(?:^| )[^\\w\\s{BLANK}]*[{_HANGUL_CLASS}][^\\w\\s{BLANK}]*(?= |$)")
_PUNCT = f"[^\\w\\s{BLANK}]*"
_SEAM = f"(?:[^\\w\\s{BLANK}]|[\\d_])* (?:[^\\w\\s{BLANK}]|[\\d_]| )*"  # a space, maybe 씨 . 발
_JOIN = re.compile(
    f"(?:(?<=^[{_HANGUL_CLASS}])|(?<= [{_HANGUL_CLASS}])){_SEAM}(?=[{_HANGUL_CLASS}])"
)
_SUFFIX_PAIR = re.compile(
    f"(?:^| )([{_HANGUL_CLASS}]{{2,}}){_PUNCT} {_PUNCT}([{_HANGUL_CLASS}]){_PUNCT}(?= |$)"
)
_VOWEL_ANY = re.compile("[ㅏ-ㅣ]")
_CONSONANT_ANY = re.compile("[ㄱ-ㅎ]")
_WS = re.compile(r"\s+")

# the Korean 2-set (dubeolsik) keyboard: Latin key -> letter; shift gives the tense consonants
_DUBEOLSIK = {
    "q": "ㅂ", "w": "ㅈ", "e": "ㄷ", "r": "ㄱ", "t": "ㅅ", "y": "ㅛ", "u": "ㅕ", "i": "ㅑ", "o": "ㅐ",
    "p": "ㅔ", "a": "ㅁ", "s": "ㄴ", "d": "ㅇ", "f": "ㄹ", "g": "ㅎ", "h": "ㅗ", "j": "ㅓ", "k": "ㅏ",
    "l": "ㅣ", "z": "ㅋ", "x": "ㅌ", "c": "ㅊ", "v": "ㅍ", "b": "ㅠ", "n": "ㅜ", "m": "ㅡ",
    "Q": "ㅃ", "W": "ㅉ", "E": "ㄸ", "R": "ㄲ", "T": "ㅆ", "O": "ㅒ", "P": "ㅖ",
}  # fmt: skip
_KEY_CLASS = str.maketrans({k: "c" if v in "ㄱㄲㄴㄷㄸㄹㅁㅂㅃㅅㅆㅇㅈㅉㅊㅋㅌㅍㅎ" else "v"
                            for k, v in _DUBEOLSIK.items() if k.islower()})  # fmt: skip
_SYLLABLE_KEYS = re.compile("(?:cv{1,2}c{0,2})+")
_LATIN_TOKEN = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2,}(?![A-Za-z0-9])")

# leetspeak: a Latin token with digits or symbols among its letters
_LEET_NEEDED = re.compile(r"[a-z][0-9@$!|]|[0-9@$|][a-z]")
_LEET_TOKEN = re.compile(r"(?<![a-z0-9@$!|])[a-z0-9@$!|]*[a-z0-9@$|]")
_LEET_I = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a",
                         "$": "s", "!": "i", "|": "l"})  # fmt: skip
_LEET_L = str.maketrans({"0": "o", "1": "l", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a",
                         "$": "s", "!": "i", "|": "l"})  # fmt: skip
_LATIN_SEP = r"[\s\W_]+"


def _syllable_jamo(syllable: str) -> str:
    index = ord(syllable) - 0xAC00
    letters = _CHO[index // 588] + _JUNG[index % 588 // 28] + _JONG[index % 28]
    return "".join(_COMPOUND.get(letter, letter) for letter in letters)


@cache
def _fold_table() -> dict[int, str | None]:
    """Deletes what people hide between letters; conjoining jamo become compatibility jamo."""
    table: dict[int, str | None] = {}
    for code in range(0x10000):
        char = chr(code)
        category = unicodedata.category(char)
        if category in ("Cf", "Mn", "Me", "Co") or (category == "Cc" and not char.isspace()):
            table[code] = None
        elif 0x1100 <= code <= 0x11FF or 0xA960 <= code <= 0xA97F or 0xD7B0 <= code <= 0xD7FF:
            name = unicodedata.name(char, "")
            for kind in ("CHOSEONG ", "JUNGSEONG ", "JONGSEONG "):
                name = name.replace(kind, "LETTER ")
            try:
                table[code] = unicodedata.lookup(name)
            except KeyError:
                table[code] = None
    for code in (*range(0xE0000, 0xE0080), *range(0xE0100, 0xE01F0), *range(0x1D173, 0x1D17B)):
        table[code] = None  # tags, variation selectors, musical format controls
    for filler in ("\u115f", "\u1160", "\u3164", "\uffa0"):  # Hangul fillers: invisible
        table[ord(filler)] = None
    for compound in "ㄳㄵㄶㄺㄻㄼㄽㄾㄿㅀㅄ":  # a standalone ㅄ is typed for ㅂㅅ
        table[ord(compound)] = _COMPOUND[compound]
    for code, value in table.items():  # NFKC turned a typed ㅄ into a conjoining one
        if value is not None and value in _COMPOUND and value not in _VOWELS:
            table[code] = _COMPOUND[value]
    return table


_ASCII_TABLE: dict[int, str | None] = {
    code: None for code in (*range(32), 127) if not chr(code).isspace()
}


@cache
def _jamo_table() -> dict[int, str]:
    table = {code: MARK + _syllable_jamo(chr(code)) for code in range(0xAC00, 0xD7A4)}
    for code in range(0x3131, 0x3164):
        letter = chr(code)
        table[code] = MARK + _COMPOUND.get(letter, letter)
    return table


def fold(text: str) -> str:
    """NFKC, invisible characters gone, compatibility jamo, whitespace runs as one space.

    Case is kept (the 2-set keyboard view needs the shift key); :func:`normalize` lowers it.
    """
    if text.isascii():
        text = text.translate(_ASCII_TABLE)
    else:
        text = unicodedata.normalize("NFKC", text).translate(_fold_table())
    return _WS.sub(" ", text).strip()


def normalize(text: str) -> str:
    """NFKC, lower case, format characters and zero-width characters gone, one space runs."""
    return fold(text).lower()


def jamo_view(text: str) -> str:
    """Each syllable and letter as compatibility jamo behind a mark (compounds split)."""
    return text.translate(_jamo_table())


def compose(letters: Iterable[str]) -> str:
    """Compose a stream of compatibility jamo into syllables as a Korean keyboard does."""
    out: list[str] = []
    cho = jung = jong = ""

    def flush() -> None:
        nonlocal cho, jung, jong
        if cho and jung:
            code = 0xAC00 + (_CHO.index(cho) * 21 + _JUNG.index(jung)) * 28 + _JONG.index(jong)
            out.append(chr(code))
        else:
            out.append(cho + jung + jong)
        cho = jung = jong = ""

    for letter in "".join(_COMPOUND.get(c, c) for c in letters):  # ㄳ as ㄱㅅ, ㅘ as ㅗㅏ
        if letter in _VOWELS:
            if jong:  # the final consonant (or a compound's second half) begins the next syllable
                split = _COMPOUND.get(jong, "")
                keep, moved = (split[0], split[1]) if len(split) == 2 else ("", jong)
                jong = keep
                flush()
                cho, jung = moved, letter
            elif jung and cho and (compound := _COMPOSE.get(jung + letter)):
                jung = compound
            elif jung:
                flush()
                jung = letter
            else:
                jung = letter
        elif letter in _CONSONANTS:
            if cho and jung and not jong and letter in _JONG and letter not in "ㄸㅃㅉ":
                jong = letter
            elif jong and (compound := _COMPOSE.get(jong + letter, "")) in _JONG[1:]:
                jong = compound
            else:
                if cho or jung:
                    flush()
                cho = letter
        else:
            if cho or jung:
                flush()
            out.append(letter)
    if cho or jung:
        flush()
    return "".join(out)


@lru_cache(maxsize=8192)
def from_dubeolsik(token: str) -> str | None:
    """Latin keystrokes of the Korean 2-set keyboard as Hangul, if they make only syllables.

    ``tlqkf`` -> 시발, ``Tlqkf`` -> 씨발, ``qudtls`` -> 병신; ``hello`` -> None (ㅗ디ㅣㅐ).
    """
    if not _SYLLABLE_KEYS.fullmatch(token.lower().translate(_KEY_CLASS)):
        return None  # no way to read these keys as whole syllables (most English words)
    letters = [_DUBEOLSIK.get(key) or _DUBEOLSIK.get(key.lower()) for key in token]
    if None in letters:
        return None
    hangul = compose(letter for letter in letters if letter)
    return hangul if all("\uac00" <= char <= "\ud7a3" for char in hangul) else None


def tighten(text: str) -> str:
    """Punctuation, symbols and digits between two Hangul letters removed (씨.발, 병1신)."""
    return _GAP_INSIDE.sub("", text)


def join_spaced(text: str) -> str:
    """The space after a single-letter Hangul word removed (씨 발, 병 신아, ㅅ ㅣ ㅂ ㅏ ㄹ).

    Not between two longer words (물병 신발 stays apart), nor before a single letter that ends
    a longer word's phrase (아저씨 발 stays apart: see :func:`suffix_pairs`).
    """
    return _JOIN.sub("", text) if _SINGLE_TOKEN.search(text) else text


def suffix_pairs(text: str) -> list[str]:
    """A longer Hangul word and the single letter after it, joined (한남 충 -> 한남충).

    Terms match these only from the word's start, so 아저씨 발 never reads as 씨발.
    """
    if not _SINGLE_TOKEN.search(text):
        return []
    return [left + right for left, right in _SUFFIX_PAIR.findall(text)]


def leet(text: str, one: str = "i") -> str:
    """Latin tokens with digits or symbols among letters read as letters (b0mb -> bomb)."""
    if not _LEET_NEEDED.search(text):
        return text
    table = _LEET_I if one == "i" else _LEET_L

    def read(match: re.Match[str]) -> str:
        token = match.group(0)
        return token.translate(table) if any("a" <= c <= "z" for c in token) else token

    return _LEET_TOKEN.sub(read, text)


def keyboard_view(folded: str) -> str:
    """The Latin tokens of a text that the 2-set keyboard turns into syllables, as Hangul."""
    found: list[str] = []
    for match in _LATIN_TOKEN.finditer(folded):
        token = match.group(0)
        for variant in dict.fromkeys((token, token.lower())):
            if (hangul := from_dubeolsik(variant)) is not None:
                found.append(hangul)
    return " ".join(found)


# ---- compiling the lexicon -------------------------------------------------------------------


def _jamo_fragments(term: str) -> list[str]:
    """Regex fragments of a Hangul term on the jamo view.

    A mark before the first letter (a term starts where a syllable or letter starts), an optional
    mark between letters (however they were grouped into syllables), `\\s*` for a space, and at
    the end no letter may follow (a term ends where a syllable ends).
    """
    atoms: list[tuple[str, str]] = []
    for char in term:
        if char.isspace():
            atoms.append(("space", ""))
        elif "\uac00" <= char <= "\ud7a3":
            atoms += [("letter", letter) for letter in _syllable_jamo(char)]
        elif "\u3131" <= char <= "\u3163":
            atoms += [("letter", letter) for letter in _COMPOUND.get(char, char)]
        else:
            atoms.append(("literal", re.escape(char)))
    fragments: list[str] = []
    previous = ""
    for kind, value in atoms:
        if kind == "space":
            if previous and previous != "space":
                fragments.append(r"\s*")
        else:
            if previous:
                fragments.append(MARK + "?")
            elif kind == "letter":
                fragments.append(MARK)
            fragments.append(value)
        previous = kind if previous or kind != "space" else ""
    if fragments and fragments[-1] == r"\s*":
        fragments.pop()
    if atoms and atoms[-1][0] == "letter":
        fragments.append("(?![ㄱ-ㅣ])")  # ends where a syllable ends
    return fragments


def _trie_regex(sequences: Iterable[list[str]]) -> str:
    """One regex for many fragment sequences, sharing prefixes (fast: sre tries one branch)."""
    trie: dict[str, Any] = {}
    for sequence in sequences:
        node = trie
        for fragment in sequence:
            node = node.setdefault(fragment, {})
        node[""] = {}

    def emit(node: dict[str, Any]) -> str:
        branches = [key + emit(child) for key, child in node.items() if key]
        end = "" in node
        if not branches:
            return ""
        if len(branches) == 1 and not end:
            return branches[0]
        return "(?:" + "|".join(branches) + ("|" if end else "") + ")"

    return emit(trie)


def _term_key(text: str) -> str:
    return _WS.sub("", text.replace(MARK, ""))


def _latin_key(text: str) -> str:
    return re.sub(_LATIN_SEP, " ", text).strip()


def _normalise_term(term: str) -> str:
    return _WS.sub(" ", normalize(term)).strip()


def _category_map(value: Any, field: str) -> dict[str, list[str]]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, list) for v in value.values()):
        raise ValueError(f"the moderation lexicon's `{field}` must map categories to lists")
    return {str(name): [str(item) for item in items] for name, items in value.items()}


def _needles(source: str) -> frozenset[str] | None:
    """Literal strings of which a pattern's every match holds at least one (None: can't tell).

    A cheap `in` test on them spares most regex searches (a pattern that starts with a
    lookbehind cannot use the regex engine's own first-character scan).
    """
    try:
        parsed = _sre_parse.parse(source)
        needles = _sequence_needles(list(parsed.data))
    except Exception:  # noqa: BLE001 - a pattern we cannot read is simply always searched
        return None
    if needles is not None and parsed.state.flags & re.IGNORECASE:
        needles = frozenset(n.lower() for n in needles)  # the views are lower case
    return needles


def _sequence_needles(items: list[tuple[Any, Any]]) -> frozenset[str] | None:
    candidates: list[frozenset[str]] = []
    run = ""
    for op, value in [*items, (None, None)]:
        name = str(op)
        if name == "LITERAL":
            run += chr(value)
            continue
        if run:
            candidates.append(frozenset([run]))
            run = ""
        found = _item_needles(name, value)
        if found:
            candidates.append(found)
    if not candidates:
        return None
    return max(candidates, key=lambda c: (min(len(n) for n in c), -len(c)))


def _item_needles(name: str, value: Any) -> frozenset[str] | None:
    if name == "BRANCH":
        union: set[str] = set()
        for alternative in value[1]:
            found = _sequence_needles(list(alternative))
            if not found:
                return None
            union |= found
        return frozenset(union)
    if name == "SUBPATTERN":  # (group, add_flags, del_flags, pattern)
        return None if value[1] & re.IGNORECASE else _sequence_needles(list(value[-1]))
    if name == "ATOMIC_GROUP":
        return _sequence_needles(list(value))
    if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT") and value[0] >= 1:
        return _sequence_needles(list(value[2]))
    if name == "IN" and len(value) <= 12 and all(str(op) == "LITERAL" for op, _ in value):
        return frozenset(chr(v) for _, v in value)
    return None


@dataclass(frozen=True)
class _Rule:
    category: str
    rank: int
    regex: re.Pattern[str]


class _Rules:
    """Regexes of several categories; each searched only if one of its needles is in the text."""

    def __init__(self, rules: list[tuple[_Rule, frozenset[str] | None]]) -> None:
        self.rules = [rule for rule, _ in rules]
        self.always = [i for i, (_, needles) in enumerate(rules) if needles is None]
        by_needle: dict[str, list[int]] = {}
        for index, (_, needles) in enumerate(rules):
            for needle in needles or ():
                by_needle.setdefault(needle, []).append(index)
        # grouped by first character: one set intersection with the text picks the candidates
        self.by_first: dict[str, list[tuple[str, list[int]]]] = {}
        for needle, indices in by_needle.items():
            self.by_first.setdefault(needle[0], []).append((needle, indices))
        self.first = frozenset(self.by_first)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def search(self, view: str) -> Iterator[tuple[_Rule, str]]:
        chosen = set(self.always)
        for first in self.first.intersection(view):
            for needle, indices in self.by_first[first]:
                if len(needle) == 1 or needle in view:
                    chosen.update(indices)
        for index in sorted(chosen):
            if match := self.rules[index].regex.search(view):
                yield self.rules[index], match.group(0)


@dataclass(frozen=True)
class _Hit:
    rank: int
    category: str
    evidence: str


class LexiconModerator:
    """Flags a text that contains a term, an abbreviation or a pattern of a harmful category."""

    def __init__(self, lexicon: dict[str, Any]) -> None:
        categories = lexicon.get("categories", {})
        if not isinstance(categories, dict):
            raise ValueError("the moderation lexicon needs a `categories` object")
        terms = _category_map(categories, "categories")
        abbreviations = _category_map(lexicon.get("abbreviations"), "abbreviations")
        patterns = _category_map(lexicon.get("patterns"), "patterns")
        self.version = int(lexicon.get("version", 1))
        if self.version > LEXICON_VERSION:
            logger.warning(
                "moderation lexicon version %d is newer than this kindchat reads (%d): "
                "fields it does not know are ignored",
                self.version,
                LEXICON_VERSION,
            )
        names = list(dict.fromkeys([*terms, *abbreviations, *patterns]))
        priority = [str(p) for p in lexicon.get("priority", DEFAULT_PRIORITY)]
        self.categories = [n for n in priority if n in names] + [
            n for n in names if n not in priority
        ]
        self._rank = {name: rank for rank, name in enumerate(self.categories)}

        hangul_keys: dict[str, str] = {}
        hangul_sequences: list[list[str]] = []
        latin_keys: dict[str, str] = {}
        latin_terms: list[str] = []
        for category in self.categories:
            for raw in terms.get(category, []):
                term = _normalise_term(raw)
                if not term:
                    continue
                if _HANGUL_ANY.search(term):
                    hangul_keys.setdefault(_term_key(jamo_view(term)), category)
                    hangul_sequences.append(_jamo_fragments(term))
                else:
                    word = leet(term)
                    latin_keys.setdefault(_latin_key(word), category)
                    latin_terms.append(word)
        self._hangul_keys = hangul_keys
        self._hangul_terms = re.compile(_trie_regex(hangul_sequences)) if hangul_sequences else None
        self._latin_keys = latin_keys
        self._latin_terms = (
            re.compile(
                r"(?<![a-z0-9])(?:"
                + "|".join(
                    _LATIN_SEP.join(re.escape(w) for w in re.split(_LATIN_SEP, t) if w)
                    for t in sorted(set(latin_terms), key=len, reverse=True)
                )
                + r")(?![a-z0-9])"
            )
            if latin_terms
            else None
        )

        self._abbreviation_keys: dict[str, str] = {}
        for category in self.categories:
            for raw in abbreviations.get(category, []):
                abbreviation = "".join(_COMPOUND.get(c, c) for c in normalize(raw) if c.strip())
                if abbreviation and all(c in _CONSONANTS for c in abbreviation):
                    self._abbreviation_keys.setdefault(abbreviation, category)
                elif abbreviation:
                    raise ValueError(f"abbreviation {raw!r} is not initial consonants")
        alternatives = "|".join(sorted(self._abbreviation_keys, key=len, reverse=True))
        self._abbreviations = (
            re.compile(f"(?<![ㄱ-ㅣ])[ㅋㅎ]*(?:{alternatives})+[ㅋㅎ]*(?![ㄱ-ㅣ])")
            if alternatives
            else None
        )
        self._abbreviation_one = re.compile(alternatives) if alternatives else None

        hangul_rules: list[tuple[_Rule, frozenset[str] | None]] = []
        latin_rules: list[tuple[_Rule, frozenset[str] | None]] = []
        for category in self.categories:
            for source in patterns.get(category, []):
                try:
                    rule = _Rule(category, self._rank[category], re.compile(source))
                except re.error as err:
                    raise ValueError(f"bad moderation pattern {source!r}: {err}") from None
                rules = hangul_rules if _HANGUL_ANY.search(source) else latin_rules
                rules.append((rule, _needles(source)))
        self._hangul_patterns = _Rules(hangul_rules)
        self._latin_patterns = _Rules(latin_rules)

        allow_words = [_normalise_term(str(w)) for w in lexicon.get("allow", [])]
        allow_gap = f"(?:[^\\w{BLANK}]|[\\d_])*"
        allow: list[str] = []
        sequences: list[list[str]] = []
        for word in allow_words:
            letters = [c for c in word if not c.isspace()]
            if letters:
                sequence = [re.escape(letters[0])]
                for letter in letters[1:]:
                    sequence += [allow_gap, re.escape(letter)]
                sequences.append(sequence)
        if sequences:
            allow.append(_trie_regex(sequences))
        allow += [f"(?:{p})" for p in lexicon.get("allow_patterns", [])]
        try:
            self._allow = re.compile("|".join(allow)) if allow else None
        except re.error as err:
            raise ValueError(f"bad moderation allow pattern: {err}") from None

        identity = [t for t in (_normalise_term(str(t)) for t in lexicon.get("identity", [])) if t]
        parts = []
        for term in sorted(set(identity), key=len, reverse=True):
            escaped = re.escape(term)
            parts.append(escaped if HANGUL.search(term) else rf"(?<![a-z0-9]){escaped}(?![a-z0-9])")
        self._identity = re.compile("|".join(parts)) if parts else None

    @classmethod
    def from_file(cls, path: Path | None = None) -> LexiconModerator:
        """The lexicon at `path`, or the one shipped with kindchat."""
        if path is None:
            text = (
                resources.files("kindchat.feedback")
                .joinpath("data/moderation.json")
                .read_text(encoding="utf-8")
            )
        else:
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as err:
                raise ValueError(f"cannot read the moderation lexicon {path}: {err}") from None
        try:
            return cls(json.loads(text))
        except json.JSONDecodeError as err:
            raise ValueError(f"the moderation lexicon is not valid JSON: {err}") from None

    # ---- checking ------------------------------------------------------------------------------
    def views(self, text: str) -> dict[str, str]:
        """The views :meth:`check` reads (for debugging a verdict)."""
        folded = fold(text)
        base = self._blank(folded.lower())
        tight = tighten(base)
        joined = join_spaced(tight)
        return {
            "base": base,
            "tight": tight,
            "joined": joined,
            "jamo": jamo_view(joined).replace(MARK, "·"),
            "pairs": " ".join(suffix_pairs(tight)),
            "leet": leet(tight, "i"),
            "leet_l": leet(tight, "l"),
            "keyboard": self._blank(keyboard_view(folded)),
        }

    def _blank(self, text: str) -> str:
        return self._allow.sub(BLANK, text) if self._allow is not None and text else text

    def check(self, text: str) -> Verdict:
        """The category of the first priority that the text matches, or CLEAN.

        Two passes: without blanking the look-alikes first (most texts match nothing, and then
        the allow list need not run), then with it. A look-alike can only clear a text.
        """
        folded = fold(text) if text else ""
        if not folded or next(self._hits(folded, blank=False), None) is None:
            return CLEAN
        best: _Hit | None = None
        for hit in self._hits(folded, blank=True):
            if best is None or hit.rank < best.rank:
                best = hit
                if hit.rank == 0:
                    break
        return Verdict(True, best.category, best.evidence) if best else CLEAN

    def _hits(self, folded: str, blank: bool) -> Iterator[_Hit]:
        lower = folded.lower()
        base = self._blank(lower) if blank else lower
        tight = tighten(base)
        joined = join_spaced(tight)
        if _HANGUL_ANY.search(joined):
            views = [base, tight, joined]
            if _VOWEL_ANY.search(joined):
                views.append(compose(joined))  # 자살 typed ㅈㅏ살, for the patterns
            yield from self._hangul_hits(dict.fromkeys(views), joined, suffix_pairs(tight))
        if _LATIN_ANY.search(tight):
            yield from self._latin_hits(dict.fromkeys((tight, leet(tight, "i"), leet(tight, "l"))))
            keyboard = keyboard_view(folded)
            if keyboard and blank:
                keyboard = self._blank(keyboard)
            if keyboard:
                yield from self._hangul_hits([keyboard], keyboard, via="⌨")

    def _hangul_hits(
        self, views: Iterable[str], joined: str, pairs: Iterable[str] = (), via: str = ""
    ) -> Iterator[_Hit]:
        for view in views:
            for rule, evidence in self._hangul_patterns.search(view):
                yield _Hit(rule.rank, rule.category, via + evidence)
        if self._hangul_terms is not None:
            matches = list(self._hangul_terms.finditer(jamo_view(joined)))
            for pair in pairs:  # 한남 충: from the word's start only
                if (anchored := self._hangul_terms.match(jamo_view(pair))) is not None:
                    matches.append(anchored)
            for match in matches:
                category = self._hangul_keys.get(_term_key(match.group(0)))
                if category is not None:
                    evidence = compose(match.group(0).replace(MARK, ""))
                    yield _Hit(self._rank[category], category, via + evidence)
        if (
            self._abbreviations is not None
            and self._abbreviation_one is not None
            and _CONSONANT_ANY.search(joined)
        ):
            for match in self._abbreviations.finditer(joined):
                found = self._abbreviation_one.search(match.group(0))
                if found is not None:
                    category = self._abbreviation_keys[found.group(0)]
                    yield _Hit(self._rank[category], category, via + match.group(0))

    def _latin_hits(self, views: Iterable[str]) -> Iterator[_Hit]:
        for view in views:
            for rule, evidence in self._latin_patterns.search(view):
                yield _Hit(rule.rank, rule.category, evidence)
            if self._latin_terms is not None:
                for match in self._latin_terms.finditer(view):
                    category = self._latin_keys.get(_latin_key(match.group(0)))
                    if category is not None:
                        yield _Hit(self._rank[category], category, match.group(0))

    def reveals_identity(self, text: str) -> str | None:
        """The model name an answer gives away, if any (voids an arena battle)."""
        if self._identity is None:
            return None
        match = self._identity.search(normalize(text))
        return match.group(0) if match else None


class EndpointModerator:
    """An OpenAI-compatible moderation endpoint (`POST /moderations`)."""

    def __init__(self, base_url: str, api_key: str = "EMPTY", model: str | None = None) -> None:
        self.base_url = base_url
        self.api_key = api_key
        self.model = model

    @cached_property
    def _client(self) -> Any:
        # lazy: the client loads only when a moderation endpoint is configured
        import openai

        return openai.OpenAI(base_url=self.base_url, api_key=self.api_key, timeout=10.0)

    def check(self, text: str) -> Verdict:
        kwargs: dict[str, Any] = {"input": text}
        if self.model:
            kwargs["model"] = self.model
        try:
            result = self._client.moderations.create(**kwargs).results[0]
        except Exception as err:  # noqa: BLE001 - an outage must not stop the chat
            logger.warning("moderation endpoint %s failed: %s", self.base_url, err)
            return CLEAN
        if not result.flagged:
            return CLEAN
        flagged = [name for name, on in result.categories.model_dump().items() if on]
        # self-harm first: its answer is the warm one with the crisis line
        flagged.sort(key=lambda name: not is_self_harm(name))
        return Verdict(True, (flagged or ["flagged"])[0], None, "endpoint")


class ChainModerator:
    """The first moderator that flags decides; identity leaks come from the lexicon."""

    def __init__(self, lexicon: LexiconModerator, *others: Moderator) -> None:
        self.lexicon = lexicon
        self.others = others

    def check(self, text: str) -> Verdict:
        verdict = self.lexicon.check(text)
        for other in self.others:
            if verdict.flagged:
                break
            verdict = other.check(text)
        return verdict

    def reveals_identity(self, text: str) -> str | None:
        return self.lexicon.reveals_identity(text)


def load_moderator(
    lexicon: Path | None = None,
    endpoint: str | None = None,
    api_key: str = "EMPTY",
    model: str | None = None,
) -> ChainModerator:
    """The lexicon (kindchat's or yours), then the endpoint if one is configured."""
    others: list[Moderator] = [EndpointModerator(endpoint, api_key, model)] if endpoint else []
    return ChainModerator(LexiconModerator.from_file(lexicon), *others)


def is_self_harm(category: str | None) -> bool:
    """The lexicon's `self_harm`, or an endpoint's `self_harm_intent`, `self-harm/instructions`…"""
    return bool(category) and str(category).replace("-", "_").startswith("self_harm")


def refusal(verdict: Verdict) -> str:
    """The kind answer to a flagged message (self-harm: the warm one with the 109 line)."""
    return SELF_HARM_REFUSAL if is_self_harm(verdict.category) else REFUSAL
