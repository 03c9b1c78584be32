"""Personal data found and replaced before anything trains or leaves kindchat.

People type their phone numbers, 주민등록번호, cards, accounts, addresses and names into a kind
chat. The database keeps what they wrote, for them (`forget` and retention remove it); every
text that trains a model or leaves the house — the export, the night's training files, a
shared conversation — goes through :class:`Redactor` first, which replaces each value with a
typed placeholder (`<전화번호>`, `<이메일>`, …), the same placeholder for the same value within
one conversation (`<전화번호>`, then `<전화번호2>` for a second number).

Recognition is Presidio's analyzer (no NLP model: :class:`NoOpNlpEngine`; every recogniser
here reads the text itself), replacement is Presidio's anonymizer (which also settles
overlapping findings). From Presidio as they are: the checksums of 주민등록번호 and
외국인등록번호, Luhn for cards, and `phonenumbers` (Google's libphonenumber) for Korean phone
numbers. Written here, because no library reads Korean as people type it:

* boundaries that hold next to Hangul (`\\b` does not: `번호는010…`, `메일은a@b.com이에요`);
* context read in the characters around a match (Presidio's context words need a tokenizer
  and lemmas, which Korean particles defeat): 주민번호, 계좌, 여권, IP, 주소 …;
* bank account numbers (only near a bank or 계좌/입금/송금), passports near 여권,
  street and lot addresses (도로명/지번, 동/호), and names after a self-introduction
  (제 이름은 …, 저는 …입니다, 성함, 예금주, 받는 사람) whose first syllable is a Korean surname;
* company numbers (15xx/16xx/18xx, 대표번호) and emergency numbers are not personal.

Measured on `tests/data/privacy_turns.jsonl` by `bench/privacy.py` (recall and precision per
kind, with intervals).
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import tldextract
from presidio_analyzer import (
    AnalyzerEngine,
    EntityRecognizer,
    Pattern,
    PatternRecognizer,
    RecognizerRegistry,
    RecognizerResult,
)
from presidio_analyzer.nlp_engine import NoOpNlpEngine
from presidio_analyzer.predefined_recognizers import (
    CreditCardRecognizer,
    IpRecognizer,
    KrFrnRecognizer,
    KrPassportRecognizer,
    KrRrnRecognizer,
    PhoneRecognizer,
)
from presidio_anonymizer import AnonymizerEngine
from presidio_anonymizer.entities import OperatorConfig

LANGUAGE = "ko"
THRESHOLD = 0.5  # findings scored below are dropped


@dataclass(frozen=True)
class Kind:
    name: str  # what the manifest and the bench call it
    entity: str  # Presidio's entity type
    placeholder: str  # the label inside < >


KINDS: tuple[Kind, ...] = (
    Kind("phone", "PHONE_NUMBER", "전화번호"),
    Kind("rrn", "KR_RRN", "주민등록번호"),
    Kind("frn", "KR_FRN", "외국인등록번호"),
    Kind("email", "EMAIL_ADDRESS", "이메일"),
    Kind("card", "CREDIT_CARD", "카드번호"),
    Kind("account", "KR_BANK_ACCOUNT", "계좌번호"),
    Kind("passport", "KR_PASSPORT", "여권번호"),
    Kind("ip", "IP_ADDRESS", "IP주소"),
    Kind("address", "KR_ADDRESS", "주소"),
    Kind("name", "PERSON", "이름"),
)
BY_ENTITY: dict[str, Kind] = {kind.entity: kind for kind in KINDS}
BY_NAME: dict[str, Kind] = {kind.name: kind for kind in KINDS}
KIND_NAMES: tuple[str, ...] = tuple(kind.name for kind in KINDS)
PLACEHOLDER = re.compile(
    "<(?:" + "|".join(re.escape(kind.placeholder) for kind in KINDS) + r")\d*>"
)

# Full-width ASCII (０１０-１２３４) and the ideographic space, one character for one, so the
# offsets found on the folded text are the offsets in the original.
_FOLD = (
    {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)}
    | {0x3000: 0x20}
    | dict.fromkeys(map(ord, "ㅡ‐‑‒–—―"), ord("-"))  # 010ㅡ1234ㅡ5678: ㅡ typed as a dash
)
_NOT_DIGIT_BEFORE = r"(?<![0-9A-Za-z])"
_NOT_DIGIT_AFTER = r"(?![0-9])"


class ContextRecognizer(PatternRecognizer):
    """A pattern recogniser whose context words are looked for in the characters around a
    match (`before`/`after`), not in tokens: Korean glues particles to words (주민번호는,
    계좌로), so a substring test is what works. A match with context gains `boost`; with
    `needs_context` one without context is dropped."""

    def __init__(
        self,
        *,
        entity: str,
        patterns: list[Pattern],
        context: Sequence[str] = (),
        before: int = 20,
        after: int = 8,
        boost: float = 0.35,
        needs_context: bool = False,
        deny: Sequence[str] = (),
        deny_after: str | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(
            supported_entity=entity,
            patterns=patterns,
            context=list(context),
            supported_language=LANGUAGE,
            name=name,
        )
        self.words = tuple(word.lower() for word in context)
        self.deny = tuple(word.lower() for word in deny)
        self.deny_after = re.compile(deny_after) if deny_after else None
        self.before, self.after = before, after
        self.boost, self.needs_context = boost, needs_context

    def near(self, text: str, start: int, end: int, words: Sequence[str]) -> bool:
        around = (
            text[max(0, start - self.before) : start] + " " + text[end : end + self.after]
        ).lower()
        return any(word in around for word in words)

    def analyze(self, text: str, entities: list[str], nlp_artifacts=None, regex_flags=None):  # type: ignore[no-untyped-def]
        results = super().analyze(text, entities, nlp_artifacts, regex_flags)
        kept = []
        for result in results:
            if self.deny and any(
                word in text[max(0, result.start - self.before) : result.end].lower()
                for word in self.deny
            ):
                continue
            if self.deny_after and self.deny_after.match(text, result.end):
                continue
            if self.near(text, result.start, result.end, self.words):
                result.score = min(1.0, result.score + self.boost)
            elif self.needs_context:
                continue
            kept.append(result)
        return kept


# --- numbers with a fixed format --------------------------------------------------------------


_NOT_PHONE = ("고객번호", "회원번호", "주문번호", "송장", "등기번호", "사업자")


class KoreanPhoneRecognizer(PhoneRecognizer):
    """libphonenumber's matcher for Korea, less the numbers that are no one's own: company
    numbers (15xx/16xx/18xx-xxxx, 대표번호) and 3-digit service numbers."""

    def __init__(self) -> None:
        super().__init__(
            supported_regions=("KR",),
            supported_language=LANGUAGE,
            context=["전화", "연락", "번호", "폰", "핸드폰", "휴대폰", "phone", "tel"],
        )

    def analyze(self, text, entities, nlp_artifacts=None):  # type: ignore[no-untyped-def]
        out = []
        for result in super().analyze(text, entities, nlp_artifacts):
            digits = re.sub(r"\D", "", text[result.start : result.end])
            if digits.startswith("82"):
                digits = "0" + digits[2:]
            if len(digits) == 8 and digits[:2] in {"15", "16", "18"}:
                continue  # 1588-1234: a company's number
            before = text[max(0, result.start - 12) : result.start]
            if any(word in before for word in _NOT_PHONE):
                continue
            if text[max(0, result.start - 1) : result.start] in {"-", "."} or text[
                result.end : result.end + 1
            ] in {"-"}:
                continue  # a piece of a longer code (운송장 6894-1234-5678)
            result.score = 0.6  # libphonenumber said it is a valid Korean number
            out.append(result)
        return out


_RRN_BODY = r"\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])"
_RRN_CONTEXT = ("주민", "등록번호", "생년월일", "rrn", "외국인", "등록증", "신분증")


def _registration(label: str, seventh: str) -> dict[str, Any]:
    """Patterns of a 13-digit registration number (birth date, then the 7th digit in
    `seventh`): with a hyphen (` - `, `–` too) a match; a bare run needs its check digit or
    context to pass."""
    hyphen = rf"(?<!\d){_RRN_BODY}\s?[-–]\s?[{seventh}]\d{{6}}{_NOT_DIGIT_AFTER}"
    return {
        "patterns": [
            Pattern(f"{label} hyphen", hyphen, 0.5),
            Pattern(f"{label} digits", rf"(?<!\d){_RRN_BODY}[{seventh}]\d{{6}}(?!\d)", 0.3),
        ],
        "replacement_pairs": [("-", ""), ("–", ""), (" ", "")],
    }


def _rrn_context(text: str, results: list[RecognizerResult]) -> list[RecognizerResult]:
    for result in results:
        around = text[max(0, result.start - 20) : result.start].lower()
        if any(word in around for word in _RRN_CONTEXT):
            result.score = max(result.score, 0.85)
    return results


class _RegistrationContext:
    """The 주민/등록번호 words before a registration number make it certain."""

    def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):  # type: ignore[no-untyped-def]
        results = super().analyze(text, entities, nlp_artifacts, regex_flags)  # type: ignore[misc]
        return _rrn_context(text, results)


class KoreanRrnRecognizer(_RegistrationContext, KrRrnRecognizer):
    """Presidio's 주민등록번호 recogniser (its check digit makes a match certain), with the
    spellings people type (` - `, `–`) and context read around the match: a 13-digit run
    without a hyphen, a check digit that fails (numbers since Oct 2020 have none) and no
    주민/등록번호 nearby could be an order number."""

    def __init__(self) -> None:
        super().__init__(**_registration("RRN", "1-4"))


class KoreanFrnRecognizer(_RegistrationContext, KrFrnRecognizer):
    """외국인등록번호: as :class:`KoreanRrnRecognizer`, the 7th digit 5–8."""

    def __init__(self) -> None:
        super().__init__(**_registration("FRN", "5-8"))


@functools.cache
def _domains() -> tldextract.TLDExtract:
    """The public-suffix list bundled with tldextract (never fetched: no network needed)."""
    return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)


class EmailRecognizer(PatternRecognizer):
    """E-mail addresses, also glued to Hangul (`메일은a.b@naver.com이에요`); the domain must
    end in a public suffix."""

    def __init__(self) -> None:
        super().__init__(
            supported_entity="EMAIL_ADDRESS",
            supported_language=LANGUAGE,
            patterns=[
                Pattern(
                    "email",
                    r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9](?:[A-Za-z0-9._%+\-]*[A-Za-z0-9_%+\-])?"
                    r"@[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?"
                    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?)+",
                    0.5,
                )
            ],
        )

    def validate_result(self, pattern_text: str) -> bool:
        domain = pattern_text.rsplit("@", 1)[-1]
        return bool(_domains()(domain).suffix)


class KoreanCardRecognizer(CreditCardRecognizer):
    """Card numbers (Luhn, by Presidio) in 4-4-4-4 and Amex 4-6-5, with hyphens, spaces or
    none, glued to Hangul or not. Without separators and without 카드 nearby, a Luhn-valid
    run could be an order number: it needs a card issuer's first digit (2, 3, 4, 5, 6, 9)."""

    def __init__(self) -> None:
        sep = r"[ \-]?"
        super().__init__(
            supported_language=LANGUAGE,
            patterns=[
                Pattern(
                    "card 16",
                    rf"{_NOT_DIGIT_BEFORE}\d{{4}}([ \-]?)\d{{4}}\1\d{{4}}\1\d{{4}}{_NOT_DIGIT_AFTER}",
                    0.3,
                ),
                Pattern(
                    "card 15 amex",
                    rf"{_NOT_DIGIT_BEFORE}3[47]\d{{2}}{sep}\d{{6}}{sep}\d{{5}}{_NOT_DIGIT_AFTER}",
                    0.3,
                ),
                Pattern(
                    "card 14 diners",
                    rf"{_NOT_DIGIT_BEFORE}3[068]\d{{2}}{sep}\d{{6}}{sep}\d{{4}}{_NOT_DIGIT_AFTER}",
                    0.3,
                ),
            ],
            replacement_pairs=[("-", ""), (" ", "")],
        )

    def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):  # type: ignore[no-untyped-def]
        out = []
        for result in super().analyze(text, entities, nlp_artifacts, regex_flags):
            value = text[result.start : result.end]
            around = text[max(0, result.start - 20) : result.start].lower()
            if value.isdigit() and value[0] not in "234569" and "카드" not in around:
                continue
            if value.isdigit() and ("송장" in around or "주문" in around):
                continue  # a bare digit run by an order or a parcel; a card is grouped
            out.append(result)
        return out


class KoreanIpRecognizer(IpRecognizer):
    """IPv4 and IPv6 (Presidio's patterns), IPv4 also glued to Hangul; a dotted quad after
    `v`/`버전` is a version number."""

    def __init__(self) -> None:
        octet = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
        patterns = [
            Pattern(
                "IPv4",
                rf"(?<![0-9A-Za-z.]){octet}(?:\.{octet}){{3}}(?:/(?:[0-2]?\d|3[0-2]))?(?![0-9.])",
                0.6,
            ),
            *(p for p in IpRecognizer.PATTERNS if "v6" in p.name.lower() or "::" in p.regex),
        ]
        super().__init__(supported_language=LANGUAGE, patterns=patterns)

    def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):  # type: ignore[no-untyped-def]
        out = []
        for result in super().analyze(text, entities, nlp_artifacts, regex_flags):
            before = text[max(0, result.start - 6) : result.start].lower()
            if re.search(r"(v|ver|버전|version)\s?$", before):
                continue
            out.append(result)
        return out


# --- Korean formats no library knows -------------------------------------------------------

_BANKS = (
    "국민", "신한", "우리", "하나", "농협", "nh", "기업", "ibk", "카카오", "카뱅", "토스",
    "케이뱅크", "sc제일", "씨티", "수협", "신협", "새마을", "우체국", "부산은행", "대구은행",
    "경남은행", "광주은행", "전북은행", "제주은행", "산업은행", "kb", "아이엠뱅크", "iM뱅크",
)  # fmt: skip
_ACCOUNT_WORDS = ("계좌", "입금", "송금", "이체", "예금주", "은행", "account", "뱅크", *_BANKS)


def account_recognizer() -> ContextRecognizer:
    """Bank account numbers: 2–6 digit groups (3-2-6, 4-2-7, 3-4-4-2, 6-2-6 …) or a 10–14
    digit run, only near a bank's name or 계좌/입금/송금/이체."""
    return ContextRecognizer(
        entity="KR_BANK_ACCOUNT",
        name="KoreanAccountRecognizer",
        patterns=[
            Pattern(
                "account groups",
                rf"{_NOT_DIGIT_BEFORE}\d{{2,6}}(?:[ \-]\d{{1,8}}){{1,4}}(?![\d\-])",
                0.3,
            ),
            Pattern("account digits", rf"{_NOT_DIGIT_BEFORE}\d{{10,14}}(?!\d)", 0.3),
        ],
        context=_ACCOUNT_WORDS,
        before=16,
        after=6,
        boost=0.4,
        needs_context=True,
        deny=("주문", "운송장", "송장", "등기", "고객센터", "대표번호", "ars"),
        deny_after=r"\s?(?:원|만\s?원|천\s?원|달러)",  # 1,250,000원 is a sum
    )


def passport_recognizer() -> ContextRecognizer:
    """Korean passports (Presidio's patterns: M/S/R/O/D + 8 digits, M123A4567), near 여권."""
    return ContextRecognizer(
        entity="KR_PASSPORT",
        name="KoreanPassportRecognizer",
        patterns=[
            Pattern(
                p.name,
                p.regex.replace("(?<![A-Z0-9a-z])", "(?<![A-Za-z0-9])"),
                0.3,
            )
            for p in KrPassportRecognizer.PATTERNS
        ],
        context=("여권", "passport", "pass no", "출입국"),
        before=40,
        needs_context=True,
    )


_PROVINCE = (
    r"(?:서울|부산|대구|인천|광주|대전|울산|세종|경기|강원|충북|충남|전북|전남|경북|경남|제주"
    r"|충청북|충청남|전라북|전라남|경상북|경상남)"
    r"(?:특별시|광역시|특별자치시|특별자치도|도|시)?"
)
_DISTRICT = r"[가-힣]{1,5}(?:시|군|구)"
_ROAD = r"[가-힣0-9]{1,10}(?:대로|로|길)(?:\s?\d{1,3}(?:번?길))?"
_LOT = r"(?:[가-힣]{1,6}(?:읍|면)\s?)?[가-힣0-9]{1,8}(?:동|읍|면|리|가)"
_NUMBER = r"\d{1,4}(?:-\d{1,4})?(?!\d)(?:번지)?"
_UNIT = r"(?:분|시간|시|개|원|명|살|세|번|회|km|m|%|배|일|년|월|초|대|권|장|잔|병|마리|층짜리|만)"
# what follows the number: a building, 동/호, 층 (kept in the span)
_UNIT_PART = r"(?:[A-Za-z0-9]{1,4}동|[가-하]동|\d{1,3}층|[A-Za-z]?\d{1,5}호)"
_DETAIL = (
    r"(?:,?\s?(?:[가-힣A-Za-z0-9]{1,14}(?:아파트|빌라|빌딩|오피스텔|맨션|타워|하우스|주택|"
    r"빌|캐슬|자이|푸르지오|힐스테이트|래미안|e편한세상|더샵|아이파크|센트럴|스퀘어|프라자|상가)"
    rf"|(?:[가-힣A-Za-z0-9]{{1,14}}\s)?[가-힣A-Za-z0-9]{{1,14}}(?=\s?{_UNIT_PART}))?"
    rf"(?:\s?{_UNIT_PART}){{0,3}})"
)


def address_recognizer() -> ContextRecognizer:
    """Street (도로명) and lot (지번) addresses, with the building, 동 and 호 that follow; an
    apartment's `101동 1203호` alone. With a province or a city/district in front a match
    stands; a bare road and number (`테헤란로 123`) needs an address word nearby, as
    `버스로 20분` and `출구로 3` are not addresses."""
    street = rf"(?:[가-힣]{{1,6}}(?:읍|면)\s)?(?:{_ROAD})\s?{_NUMBER}(?!\s?{_UNIT}){_DETAIL}"
    lot = rf"(?:{_LOT})\s?{_NUMBER}(?!\s?{_UNIT}){_DETAIL}"
    lead = rf"(?:{_PROVINCE}\s?)?(?:{_DISTRICT}\s?){{1,2}}"
    return ContextRecognizer(
        entity="KR_ADDRESS",
        name="KoreanAddressRecognizer",
        patterns=[
            Pattern("address with district", rf"(?:{_PROVINCE}\s?)?{lead}(?:{street}|{lot})", 0.7),
            Pattern("address from province", rf"{_PROVINCE}\s?(?:{street}|{lot})", 0.7),
            Pattern("bare street", rf"(?<![가-힣]){street}", 0.3),
            Pattern("bare lot", rf"(?<![가-힣]){lot}", 0.2),
            Pattern("apartment unit", r"(?<!\d)\d{1,4}동\s?\d{1,5}호", 0.6),
        ],
        context=(
            "주소",
            "사는",
            "살아",
            "살고",
            "배송",
            "배달",
            "이사",
            "집",
            "거주",
            "보내",
            "택배",
            "도로명",
            "지번",
            "위치",
            "찾아",
            "오세요",
            "오시",
            "address",
        ),  # fmt: skip
        before=20,
        after=14,
        boost=0.35,
        deny=("출구", "버스", "노선"),
    )


# The commonest Korean surnames (two-syllable ones first: 남궁, 황보, 제갈, 선우, 독고).
SURNAMES = (
    "남궁 황보 제갈 선우 독고 사공 서문 "
    "김 이 박 최 정 강 조 윤 장 임 한 오 서 신 권 황 안 송 류 유 전 홍 고 문 양 손 배 백 허 "
    "남 심 노 하 곽 성 차 주 우 구 민 나 진 지 엄 채 원 천 방 공 현 함 변 염 여 추 도 소 석 선 "
    "설 마 길 연 위 표 명 기 반 왕 금 옥 육 인 맹 제 모 탁 국 어 은 편 용 예 경 봉 사 부 태 "
    "목 형 계 피 두 감 음 빈 동 온 호 범 좌 팽 승 간 상 시 갈 단 견 당 화 창 옹 순 묵"
).split()
# Words a surname syllable starts that are not names (저는 정말…, 이름은 비밀…, 저는
# 간호사입니다): checked on the whole match and on its first two and three syllables.
NOT_NAMES = frozenset(
    """정말 이번 이제 오늘 한번 조금 지금 우리 유명 전혀 진짜 고민 문제 학생 주부 회사 직장 교사
    선생 사장 부장 과장 대리 기사 고객 손님 원장 회장 실장 팀장 의사 간호 강사 주임 사원 신입
    한국 미국 중국 일본 서울 부산 대구 인천 광주 대전 울산 제주 경기 강원 충북 충남 전북 전남
    경북 경남 남자 여자 엄마 아빠 이모 고모 삼촌 동생 누나 언니 오빠 형님 아들 딸 아내 남편
    비밀 무명 성인 이상 이하 이미 이게 이거 이건 이런 그런 저런 정도 정상 최고 최근 최대
    최소 최선 강아지 고양이 백수 무직 대학생 고등 중학 초등 박사 석사 학사 연구 개발 디자
    마케 영업 기획 인사 총무 장남 장녀 차남 차녀 막내 외동 임산 환자 보호 노인 조카 손자 손녀
    오후 오전 하루 주말 평일 이사 안녕 감사 반가 잘부 부탁 처음 혹시 무슨 어떤 모든 모두 여기
    거기 저기 오랜 정식 공식 임시 가명 별명 닉네임 성함 이름 본명 실명 이요 이야 이고 어떻 어디
    예쁘 예뻐 멋있 멋지 특이 흔해 흔한 기자 경찰 소방 공무 변호 회사원 교수 군인 사업 한국인
    외국인 선수 감독 코치 인턴 반장 부모 간호사 약사 작가 가수 배우 모델 요리 주인 사장님 고객님
    이것 저것 그것 여자친 남자친 한국사 국어 수학 영어 과학 사회 도덕 음악 미술 체육 기술 가정
    하나 두명 세명 혼자 둘이 우리집 주소 전화 연락 번호 계좌 카드 여권 메일 이메일 성별 나이
    장난 장난감 진행 진짜로 정말로 오랜만 사랑 행복 건강 공부 운동 여행 시험 숙제 회의 출근
    퇴근 주문 배송 결제 환불 예약 문의 상담 확인 변경 취소 신청 등록 가입 탈퇴 로그 비번
    추천 단계 주치 상담사 이사님 안내 명의 명을 성명 상태 상황 정보 연락처 전화번
    이에요 이예요 이라고 이구요 이고요 이에용 이랍니다 이었어 이었고 이래요 이네요 이지요""".split()
)
_VERB_ENDINGS = frozenset("줘요해다죠네까면며")


def _has_final(syllable: str) -> bool:
    """Whether a Hangul syllable ends in a consonant (받침): 진 yes, 지 no."""
    code = ord(syllable) - 0xAC00
    return 0 <= code < 11172 and code % 28 != 0


_SURNAME = "(?:" + "|".join(sorted(SURNAMES, key=len, reverse=True)) + ")"
_NAME = rf"{_SURNAME}[가-힣]{{1,2}}"  # greedy: 최가은 대리, not 최가+은
_NAME3 = rf"{_SURNAME}[가-힣]{{2}}"  # three syllables: where a name is only likely
_COPULA = (
    r"(?:입니다|이에요|이예요|예요|에요|이에용|예용|이에여|예여|이고요|이구요|이고|이구|이라고|라고"
    r"|이라구|라구|인데요|인데|이야|야|이요|임다|임|이랍니다|이올시다)"
)
_PARTICLE = r"(?:으로|로|을|를|이가|가|은|는|에게|께|한테|이랑|랑|과|와|의|도|님|씨|군|양)"
_END = r"(?=\s|$|[,.!?~)(:;/'\"ㅋㅎ^]|\d)"
_INTRO = (
    r"(?:(?:제|내|저의|나의|우리\s?[가-힣]{1,3}|제\s?[가-힣]{1,3}|저희\s?[가-힣]{1,3})\s?"
    r"(?:이름|성함|본명|실명)\s?(?:은|는|이|:)|(?:이름|성함|본명|실명|예금주|수령인|수취인|받는\s?"
    r"(?:사람|분)(?:은|는|이)?|보호자|신청자|작성자|담당자|환자명|학생명|성명|예약자명?|주문자"
    r"|소유자|명의자?|입금자명?)\s?(?:은|는|이|:|=)?)\s?"
)
_RELATION = (
    r"(?:임대인|임차인|신랑|신부|상주|고인|故|수검자|피보험자|계약자|보증인|자녀|배우자|대표|사장|담당"
    r"|지원자|수신인|발신인|참석자|환자|보호자|학생|원생|아동|세입자|집주인|친구|동생|엄마|어머니|아빠|아버지|딸|아들|아내|남편|와이프|언니|오빠|누나|형|할머니|할아버지"
    r"|선배|후배|동료|사촌|조카|손자|손녀|이모|고모|삼촌|남친|여친|남자친구|여자친구|애인|담임)"
)


class NameRecognizer(EntityRecognizer):
    """Names where a name is given: after 제 이름은/성함/예금주/받는 사람/예약자, as
    …입니다/…이에요/…인데요 after 저는/저/난 or opening a sentence, before 라고 합니다, after a
    relation (아빠는 …이야, 친구 …을), and as …님,/…씨/…앞으로 of someone written to. The
    first syllable must be a Korean surname, the word not a common noun (:data:`NOT_NAMES`);
    away from 이름/성함 a name must have three syllables. English names after `my name is`,
    `I'm` (two capitalised words) or an introduction."""

    PATTERNS: tuple[tuple[re.Pattern[str], float], ...] = (
        (
            re.compile(rf"{_INTRO}(?<=[\s:=은는이])({_NAME})(?:{_COPULA}|{_PARTICLE})?{_END}"),
            0.8,
        ),
        (re.compile(rf"{_INTRO}(?<=[\s:=은는이])({_NAME}){_COPULA}"), 0.8),
        (
            re.compile(
                rf"(?<![가-힣])(?:저는|전|나는|난|저|제가|내가|나|저도)\s?({_NAME}){_COPULA}"
                r"(?![가-힣])"
            ),
            0.7,
        ),
        (
            re.compile(
                rf"(?<![가-힣])(?:저는|전|나는|난|저|제가|내가|나|저도)\s?({_NAME3}){_COPULA}"
            ),
            0.7,
        ),
        (re.compile(rf"(?:^|(?<=[.!?\n]\s)|(?<=[.!?\n]))({_NAME3})(?:{_COPULA})"), 0.6),
        (
            re.compile(
                rf"(?<![가-힣])({_NAME3})\s?(?:이라고|라고|이라구|라구)\s?"
                r"(?:합니다|해요|해|하고|불러|부르|해용)"
            ),
            0.7,
        ),
        (
            re.compile(
                rf"{_RELATION}\s?(?:은|는|이|가|이름은)?\s?({_NAME3})(?:{_COPULA}|{_PARTICLE})"
                rf"(?![가-힣])"
            ),
            0.6,
        ),
        (re.compile(rf"{_RELATION}\s?(?:은|는|이|가)?\s?({_NAME3})(?:을|를)\s?소개"), 0.6),
        (
            re.compile(
                rf"(?<![가-힣])({_NAME3})\s?(?:고객님|님|씨|군|양)(?:께|에게|한테|앞으로|앞|,|!|\s?안녕)"
            ),
            0.6,
        ),
        (re.compile(rf"(?<![가-힣])({_NAME3})\s?앞으로"), 0.6),
        (re.compile(rf"(?<![가-힣])({_NAME3})\s?(?:님|씨)"), 0.6),  # 권영자님 대출 …
        (  # a name with a phone number: 황보은지 010-8120-3356, 상주 장기훈 010-…
            re.compile(rf"(?<![가-힣])({_NAME3})\s?[,:/]?\s?(?=(?:\+82|0)1\d[\s.\-]?\d{{3,4}})"),
            0.6,
        ),
        (re.compile(rf"(?<![가-힣])({_NAME3})\((?:초|중|고|만)?\s?\d"), 0.6),  # 김시우(초3)
        (re.compile(rf"\(({_NAME3}),"), 0.6),  # (김옥순, 610227-…)
        (
            re.compile(
                rf"(?:{_INTRO}|[Ss]incerely,|[Rr]egards,|[Bb]est,)\s*"
                r"([A-Z][A-Za-z]+(?: [A-Z][A-Za-z]+){1,2})(?![A-Za-z])"
            ),
            0.7,
        ),
        (
            re.compile(
                r"(?:인턴|신입|사원|대리|과장|차장|부장|팀장|매니저|담당|기사|간호사|선생님|원장)\s"
                rf"({_NAME3}){_COPULA}"
            ),
            0.6,
        ),
        (  # an account holder after the number: 신한 110-264-413918 홍채린
            re.compile(rf"(?<![\d\-])\d[\d\- ]{{6,30}}\d\s?\(?({_NAME3})\)?(?=\s*(?:$|[,.)/\n]))"),
            0.6,
        ),
        (re.compile(rf"(?:^|\n)({_NAME3})\s?(?:고객님|님),"), 0.6),
        (
            re.compile(
                r"(?:[Mm]y name is|[Nn]ame\s?:|[Tt]his is|I'm|I am|영문\s?이름은?|영문명은?)\s*"
                r"([A-Z][a-z]+(?:[ -][A-Z][a-z]+){1,2})"
            ),
            0.7,
        ),
        (re.compile(r"(?:[Mm]y name is|[Nn]ame\s?:)\s*([A-Z][a-z]+)"), 0.7),
    )

    def __init__(self) -> None:
        super().__init__(
            supported_entities=["PERSON"],
            supported_language=LANGUAGE,
            name="KoreanNameRecognizer",
        )

    def load(self) -> None:
        pass

    def analyze(self, text, entities, nlp_artifacts=None):  # type: ignore[no-untyped-def]
        out: list[RecognizerResult] = []
        for pattern, score in self.PATTERNS:
            for match in pattern.finditer(text):
                name = match.group(1)
                if name in NOT_NAMES or name[:2] in NOT_NAMES or name[:3] in NOT_NAMES:
                    continue
                if name[-1] in _VERB_ENDINGS:  # 문자줘, 보내요: a verb, not a name
                    continue
                end = match.end(1)
                if len(name) == 3 and name[-1] == "이" and _has_final(name[-2]):
                    name, end = name[:-1], end - 1  # 김진이에요: 김진 + 이에요
                out.append(RecognizerResult("PERSON", match.start(1), end, score))
        return out


@functools.cache
def analyzer() -> AnalyzerEngine:
    """The analyzer: Presidio's engine, no NLP model, kindchat's recognisers (built once)."""
    registry = RecognizerRegistry(supported_languages=[LANGUAGE])
    for recognizer in (
        KoreanPhoneRecognizer(),
        KoreanRrnRecognizer(),
        KoreanFrnRecognizer(),
        EmailRecognizer(),
        KoreanCardRecognizer(),
        KoreanIpRecognizer(),
        account_recognizer(),
        passport_recognizer(),
        address_recognizer(),
        NameRecognizer(),
    ):
        registry.add_recognizer(recognizer)
    nlp = NoOpNlpEngine(models=[{"lang_code": LANGUAGE, "model_name": "none"}])
    nlp.load()
    return AnalyzerEngine(
        registry=registry,
        nlp_engine=nlp,
        supported_languages=[LANGUAGE],
        log_decision_process=False,
    )


@functools.cache
def _anonymizer() -> AnonymizerEngine:
    return AnonymizerEngine()


@dataclass(frozen=True)
class Finding:
    kind: str
    start: int
    end: int
    score: float

    def value(self, text: str) -> str:
        return text[self.start : self.end]


# What a finding of one kind beats when two overlap (a 주민등록번호 is not also a phone).
_PRIORITY = {name: rank for rank, name in enumerate(
    ("rrn", "frn", "card", "email", "phone", "passport", "ip", "address", "account", "name")
)}  # fmt: skip


def find(text: str, threshold: float = THRESHOLD) -> list[Finding]:
    """Personal data in `text`, no two findings overlapping (the more specific kind, then the
    higher score, then the longer span wins)."""
    return list(_find(text, threshold))


@functools.lru_cache(maxsize=2048)
def _find(text: str, threshold: float) -> tuple[Finding, ...]:
    """:func:`find`, remembered: an export redacts a conversation's earlier turns once for every
    rated answer in it, and a share page again on every view."""
    if not text or not text.strip():
        return ()
    folded = text.translate(_FOLD)
    results = analyzer().analyze(folded, language=LANGUAGE, score_threshold=threshold)
    findings = sorted(
        (
            Finding(BY_ENTITY[r.entity_type].name, r.start, r.end, r.score)
            for r in results
            if r.entity_type in BY_ENTITY
        ),
        key=lambda f: (_PRIORITY[f.kind], -f.score, -(f.end - f.start), f.start),
    )
    kept: list[Finding] = []
    for finding in findings:
        if all(finding.end <= k.start or finding.start >= k.end for k in kept):
            kept.append(finding)
    return tuple(sorted(kept, key=lambda f: f.start))


def _key(kind: str, value: str) -> str:
    """What makes two spellings one value: its digits for numbers, its letters for others."""
    if kind in {"phone", "rrn", "frn", "card", "account"}:
        digits = re.sub(r"\D", "", value.translate(_FOLD))
        return "0" + digits[2:] if kind == "phone" and digits.startswith("82") else digits
    return re.sub(r"\s+", "", value.translate(_FOLD)).lower()


@dataclass
class Redactor:
    """Replaces personal data with typed placeholders, the same value by the same placeholder
    across every text given to one redactor (use one per conversation); counts per kind."""

    threshold: float = THRESHOLD
    counts: Counter[str] = field(default_factory=Counter)
    _names: dict[tuple[str, str], str] = field(default_factory=dict)
    _per_kind: Counter[str] = field(default_factory=Counter)
    _seen: dict[tuple[str, str], None] = field(default_factory=dict)  # (kind, spelling) found

    def placeholder(self, kind: str, value: str) -> str:
        key = (kind, _key(kind, value))
        if key not in self._names:
            self._per_kind[kind] += 1
            n = self._per_kind[kind]
            label = BY_NAME[kind].placeholder
            self._names[key] = f"<{label}>" if n == 1 else f"<{label}{n}>"
        return self._names[key]

    def find(self, text: str) -> list[Finding]:
        """What :func:`find` finds, and every value found before in this conversation (or
        earlier in this text) wherever it appears again (`안수아로 예약` after `제 이름은
        안수아예요`; a number given twice, once far from its context)."""
        findings = find(text, self.threshold)
        for f in findings:
            if f.end - f.start >= 2:
                self._seen.setdefault((f.kind, f.value(text)))
        for kind, raw in self._seen:
            for match in re.finditer(re.escape(raw), text):
                if all(match.end() <= f.start or match.start() >= f.end for f in findings):
                    findings.append(Finding(kind, match.start(), match.end(), 1.0))
        return sorted(findings, key=lambda f: f.start)

    def __call__(self, text: str) -> str:
        findings = self.find(text)
        if not findings:
            return text
        for finding in findings:
            self.counts[finding.kind] += 1
        results = [
            RecognizerResult(f"KC_{i}", f.start, f.end, f.score) for i, f in enumerate(findings)
        ]
        operators = {
            f"KC_{i}": OperatorConfig(
                "replace", {"new_value": self.placeholder(f.kind, f.value(text))}
            )
            for i, f in enumerate(findings)
        }
        return _anonymizer().anonymize(text, results, operators).text

    def messages(self, messages: Iterable[dict[str, str]]) -> list[dict[str, str]]:
        return [{**m, "content": self(m["content"])} for m in messages]


def redact(text: str) -> str:
    """`text` with its personal data replaced (a fresh redactor: placeholders count from 1)."""
    return Redactor()(text)


# --- measuring the recognisers on a labelled corpus -------------------------------------------


@dataclass
class KindScore:
    """Recall: labelled values of the kind found (≥ 80% of their characters inside findings of
    the kind). Precision: findings of the kind that overlap a labelled value of the kind."""

    labelled: int = 0
    found: int = 0
    findings: int = 0
    correct: int = 0
    missed: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)


def _spans(text: str, value: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in re.finditer(re.escape(value), text)]


def score_corpus(rows: Iterable[dict[str, object]]) -> dict[str, KindScore]:
    """Per kind over rows `{"text": …, "pii": [{"kind": …, "value": …}]}`, each row alone."""
    scores = {name: KindScore() for name in KIND_NAMES}
    for row in rows:
        text = str(row["text"])
        labels = sorted(
            {
                (str(p["kind"]), start, end)
                for p in row.get("pii", [])  # type: ignore[union-attr]
                for start, end in _spans(text, str(p["value"]))
            }
        )
        findings = Redactor().find(text)
        for kind, start, end in labels:
            score = scores[kind]
            score.labelled += 1
            covered = sum(
                1
                for i in range(start, end)
                if not text[i].isspace()
                and any(f.kind == kind and f.start <= i < f.end for f in findings)
            )
            if covered >= 0.8 * sum(1 for c in text[start:end] if not c.isspace()):
                score.found += 1
            else:
                score.missed.append(f"{text[start:end]!r} in {text!r}")
        for f in findings:
            score = scores[f.kind]
            score.findings += 1
            if any(k == f.kind and f.start < end and start < f.end for k, start, end in labels):
                score.correct += 1
            else:
                score.wrong.append(f"{f.value(text)!r} in {text!r}")
    return scores
