"""Every Korean string the UI shows, in one place (labels, buttons, messages, table headers)."""

from __future__ import annotations

from datetime import timedelta, timezone

# ---- page -------------------------------------------------------------------------------------
PAGE_TITLE = "kindchat · 한국어 채팅 도우미"
HEADER = (
    "## 💬 kindchat\n"
    "무엇이든 편하게 물어보세요. 답이 마음에 들면 👍 버튼을, 아쉬우면 👎 버튼을 눌러 주세요. "
    "여러분의 평가로 kindchat이 매일 밤 조금씩 나아져요."
)
TAB_CHAT = "채팅"
TAB_ARENA = "아레나"
TAB_LEADERBOARD = "리더보드"
ADMIN_PAGE = "kindchat 운영"

# ---- chat -------------------------------------------------------------------------------------
CHAT_LABEL = "대화"
CHAT_PLACEHOLDER = "무엇이든 편하게 물어보세요. 예: 오늘 저녁 메뉴 추천해 줘"
INPUT_LABEL = "메시지"
INPUT_PLACEHOLDER = "메시지를 입력하고 Enter를 누르세요"
SEND = "보내기"
REGENERATE = "🔄 다시 생성"
MODEL_LABEL = "모델"
MODEL_INFO = "처음에는 추천 모델이 답해요"
MODEL_NAMES = {
    "rlhf": "추천 모델",
    "sft": "기본 대화 모델",
    "challenger": "도전 모델",
    "base": "기초 언어 모델",
}
PERSONA_NEXT_CHAT = (
    "말투는 대화마다 정해져 있어요. 다른 말투로 이야기하려면 ➕ 새 대화를 시작한 뒤 골라 주세요."
)
OLDER_VERSION = "이전 모델 ({date})"
REASON_TITLE = "어떤 점이 아쉬웠나요? 아래 항목은 모두 선택 사항이에요."
REASON_CHOICES = [
    ("불친절해요", "unfriendly"),
    ("틀린 내용이에요", "incorrect"),
    ("해로운 내용이에요", "harmful"),
    ("질문과 관계없어요", "off_topic"),
    ("기타", "other"),
]
REASON_LABEL = "아쉬운 점 (선택)"
REASON_ABOUT = "👎 평가한 답변: “{answer}”"
COMMENT_LABEL = "자세한 의견 (선택)"
BETTER_ANSWER_LABEL = "이렇게 답했으면 좋겠어요 (선택)"
BETTER_ANSWER_PLACEHOLDER = "더 좋은 답을 직접 써 주시면 다음 모델 학습에 참고할게요"
REASON_SEND = "의견 보내기"
THANKS_UP = "👍 평가해 주셔서 고마워요!"
THANKS_DOWN = "👎 평가를 저장했어요. 이유도 알려 주시면 큰 도움이 돼요."
THANKS_REASON = "의견이 저장되었어요. 고마워요!"
RATING_KEPT = "한 번 남긴 평가는 취소할 수 없어요. 반대쪽 버튼을 누르면 평가를 바꿀 수 있어요."
NOTHING_TO_REGENERATE = "다시 생성할 답변이 없어요. 먼저 메시지를 보내 주세요."
NOTHING_TO_CONTINUE = (
    "이어서 쓸 답변이 없어요. 길이 제한으로 중간에 끊긴 마지막 답변만 이어서 쓸 수 있어요."
)
NOT_RATABLE = "이 메시지는 평가할 수 없어요. 도우미의 답변에만 평가를 남길 수 있어요."
STOP = "⏹ 멈추기"
STOPPED = "답변을 멈췄어요. 여기까지의 답변은 저장되었어요."
PERSONA_LABEL = "말투·역할"
PERSONA_INFO = "도우미의 말투와 역할 (새 대화부터 적용)"
PERSONA_CUSTOM_LABEL = "직접 정하는 말투·역할"
PERSONA_CUSTOM_PLACEHOLDER = "예: 너는 요리를 잘 아는 다정한 셰프야"
HISTORY_LABEL = "대화 기록"
HISTORY_EMPTY = "아직 저장된 대화가 없어요."
NEW_CHAT = "➕ 새 대화"
MANAGE = "⋯ 대화 관리 (이름 바꾸기·삭제·내보내기·공유)"
HISTORY_INFO = "누르면 그 대화를 이어서 할 수 있어요."
HISTORY_MENU = "대화 관리 (이름 바꾸기·공유·내보내기·삭제)"
# ⋯ beside a conversation of the history opens these (the page's script draws the menu)
HISTORY_MENU_ITEMS = {
    "rename": "✏️ 이름 바꾸기",
    "share": "🔗 공유 링크 만들기",
    "export": "⬇️ 내보내기",
    "delete": "🗑️ 삭제",
}
SEARCH_LABEL = "대화 검색"
SEARCH_PLACEHOLDER = "제목이나 내용으로 찾기"
SEARCH_NONE = "일치하는 대화가 없어요."
DRAWER_OPEN = "☰ 대화 기록"
DRAWER_CLOSE = "✕ 닫기"
TIMEZONE = timezone(timedelta(hours=9), "KST")  # Korean time (no daylight saving since 1988)
TODAY_AT = "오늘 {time}"
YESTERDAY = "어제"
HISTORY_DAY = "{month}월 {day}일"
HISTORY_DAY_OF_YEAR = "{year}년 {month}월 {day}일"
RENAME_LABEL = "대화 이름"
RENAME = "✏️ 이름 바꾸기"
DELETE = "🗑️ 삭제"
FORGET = "바로 영구 삭제 (되돌릴 수 없어요)"
DELETE_ASK = (
    "이 대화를 삭제할까요? 대화 기록과 공유 링크에서 사라지고, 모델 학습에도 쓰이지 않아요. "
    "삭제한 뒤 몇 초 동안은 되돌릴 수 있어요."
)
FORGET_ASK = "이 대화를 영구 삭제할까요? 저장된 내용이 바로 지워져서 되돌릴 수 없어요."
DELETE_YES = "삭제할게요"
CANCEL = "취소"
UNDO_DELETE = "↩️ 삭제 되돌리기"
RESTORED = "대화를 복구했어요."
EXPORT = "⬇️ 내보내기 (Markdown, JSON)"
EXPORT_ME = "나"
EXPORT_KINDCHAT = "kindchat"
SHARE = "🔗 공유 링크"
SHARE_LINK_LABEL = "공유 링크 (읽기 전용)"
NO_CONVERSATION = "먼저 대화를 고르거나 시작해 주세요."
CONVERSATION_NOT_FOUND = (
    "링크의 대화를 찾을 수 없어요. 삭제됐거나 다른 브라우저에서 나눈 대화일 수 있어요. "
    "새 대화를 시작할게요."
)
DELETED = "대화를 삭제했어요. 이 대화는 모델 학습에 쓰이지 않아요."
DELETED_FORGOTTEN = "대화를 영구 삭제했어요. 저장된 내용이 모두 지워졌어요."
EDIT_HINT = "보낸 메시지에 마우스를 올리고 ✏️ 버튼을 누르면 고쳐서 다시 보낼 수 있어요."

# ---- arena ------------------------------------------------------------------------------------
ARENA_INTRO = (
    "### ⚔️ 아레나\n"
    "질문 하나에 두 모델이 이름을 숨기고 답해요. 더 좋은 답을 골라 주세요. "
    "투표하면 어떤 모델이었는지 알려 드려요."
)
ARENA_MODEL_A = "모델 A"
ARENA_MODEL_B = "모델 B"
ARENA_PROMPT_LABEL = "두 모델에게 할 질문"
ARENA_PROMPT_PLACEHOLDER = "두 모델에게 물어볼 질문을 입력하세요"
ARENA_SEND = "대결 시작"
ARENA_CHOOSE = "대결할 모델 고르기"
ARENA_AUTO = "자동으로 고르기"
VOTE_A = "👈 A가 더 좋음"
VOTE_B = "👉 B가 더 좋음"
VOTE_TIE = "🤝 비슷함"
VOTE_BOTH_BAD = "👎 둘 다 별로"
NEW_ROUND = "🎲 새 대결"
ARENA_WAITING = "질문을 입력하고 대결을 시작하세요."
ARENA_STREAMING = "두 모델이 답하는 중이에요…"
ARENA_VOTE_NOW = "두 답변을 비교하고 투표해 주세요."
ARENA_REVEAL = "투표 완료! 모델 A: **{a}** · 모델 B: **{b}**"
ARENA_VERDICTS = {
    "a": "A가 더 좋음",
    "b": "B가 더 좋음",
    "tie": "비슷함",
    "both_bad": "둘 다 별로",
}
ARENA_VERSIONS = "버전 · A: `{a}` · B: `{b}`"
ARENA_YOUR_VOTE = "내 선택: {verdict}"
ARENA_VOIDED = (
    "⚠️ 답변에 모델 이름이 드러났거나 안전하지 않은 질문이어서, 이 대결은 순위에 반영되지 않아요."
)
ARENA_NO_BATTLE = "아직 진행 중인 대결이 없어요. 먼저 질문을 보내 주세요."
ARENA_SAME_MODEL = "서로 다른 두 모델을 골라 주세요. 같은 모델끼리는 대결할 수 없어요."
ARENA_FLAGGED = (
    "이 질문은 대결에 쓸 수 없어요. 안전 기준에 걸리는 내용이라 두 모델 모두 답하지 않아요. "
    "다른 질문으로 대결을 시작해 주세요."
)
ARENA_NEXT = "다음 대결을 하려면 새 질문을 입력하세요."
ARENA_NEXT_PLACEHOLDER = "다음 대결의 질문을 입력하세요"

# ---- leaderboard ------------------------------------------------------------------------------
LEADERBOARD_INTRO = (
    "### 🏆 리더보드\n"
    "아레나에서 여러분이 투표한 결과로 매긴 모델 순위예요. 표가 화면보다 넓으면 옆으로 밀어서 보세요."
)
LEADERBOARD_METHOD_TITLE = "점수는 어떻게 계산하나요?"
LEADERBOARD_METHOD = (
    "**점수**는 체스 순위처럼 대결 결과가 들어올 때마다 조금씩 오르내리는 Elo 점수예요 "
    "(한 번에 최대 4점씩 움직이고, 1000점에서 시작해요). **전체 비교 점수**는 모든 투표를 한꺼번에 놓고 "
    "가장 가능성이 높은 실력을 추정하는 Bradley–Terry 방식이에요. 범위는 투표를 다시 뽑아 500번 "
    "계산했을 때 95%가 들어오는 구간이라, 범위가 겹치는 모델끼리는 아직 우열을 가리기 "
    "어려워요."
)
REFRESH = "🔄 새로고침"
LEADERBOARD_EMPTY = "아직 투표된 대결이 없어요. 아레나에서 첫 투표를 해 주세요!"
LEADERBOARD_SUMMARY = "투표된 대결 {battles}건 · 모델 {models}개"
COL_RANK = "순위"
COL_MODEL = "모델"
COL_ELO = "점수"
COL_ELO_CI = "점수 범위"
COL_BT = "전체 비교 점수"
COL_BT_CI = "전체 비교 점수 범위"
COL_BATTLES = "대결 수"
COL_WINS = "승"
COL_LOSSES = "패"
COL_TIES = "무"
COL_BOTH_BAD = "둘 다 별로"
COL_WIN_RATE = "승률"
COL_THUMBS_UP = "👍"
COL_THUMBS_DOWN = "👎"
MATRIX_TITLE = "#### 상대별 승률 (왼쪽 모델이 위쪽 모델을 이긴 비율, 괄호 안은 대결 수)"
MATRIX_CORNER = "모델 ↓ / 상대 →"

# ---- dashboard --------------------------------------------------------------------------------
DASHBOARD_INTRO = (
    "## 📊 kindchat 운영\n피드백, 재학습, 모델 지표를 한눈에 보는 운영자용 화면이에요. "
    "채팅은 [첫 화면](/)에서 해 주세요."
)
DASHBOARD_LOCKED = "운영자용 화면이에요. 아래 관리자 메뉴에서 토큰을 넣으면 지표가 보여요."
FEEDBACK_PER_DAY = "일별 피드백"
DAY = "날짜"
COUNT = "건수"
KIND = "종류"
KIND_UP = "👍 좋아요"
KIND_DOWN = "👎 별로예요"
KIND_VOTE = "⚔️ 아레나 투표"
THUMBS_TITLE = "모델 버전별 👍 비율"
COL_VERSION = "버전"
COL_RATIO = "👍 비율"
RUNS_TITLE = "재학습 기록"
COL_RUN = "실행 ID"
COL_CREATED = "시작 요청"
COL_STATUS = "상태"
COL_STAGE = "단계"
COL_PROMOTED = "승격"
COL_METRICS = "지표"
COL_ERROR = "오류"
YES = "예"
NO = "아니요"
PPO_TITLE = "최근 PPO 학습 곡선 ({version})"
PPO_TITLE_EMPTY = "최근 PPO 학습 곡선"
PPO_REWARD = "보상 (평균)"
PPO_KL = "KL"
STEP = "스텝"
VALUE = "값"
SERIES = "지표"
RM_TITLE = "보상 모델(RM) 정확도"
COL_ACCURACY = "정확도"
COL_ACCURACY_CI = "95% 구간"
COL_ALIASES = "별칭"
COL_GOLD = "판정용(골드)"
TOTALS = "대화 {conversations}개 · 메시지 {messages}개 · 평가 {ratings}건 · 대결 {battles}건 (투표 {voted}건)"
ALIASES_NOW = "현재 별칭: {aliases}"
NOT_SERVED = "⚠️ {alias}: 새 버전을 서빙하지 못해 {serving}(으)로 계속 답해요 — {why}"

# ---- admin ------------------------------------------------------------------------------------
ADMIN_TITLE = "🔐 관리자"
ADMIN_TOKEN = "관리자 토큰"
ADMIN_TOKEN_PLACEHOLDER = "KINDCHAT_ADMIN_TOKEN 값을 입력하세요"
ADMIN_UNLOCK = "확인"
ADMIN_OK = "관리자 모드가 켜졌어요."
ADMIN_WRONG = "토큰이 맞지 않아요."
ADMIN_DISABLED = "관리 기능이 꺼져 있어요 (서버에 KINDCHAT_ADMIN_TOKEN이 설정되지 않았어요)."
PROMOTE_VERSION = "승격할 버전"
PROMOTE_ALIAS = "별칭"
PROMOTE = "⬆️ 승격"
ROLLBACK_ALIAS = "되돌릴 별칭"
ROLLBACK = "↩️ 되돌리기"
RETRAIN = "🌙 지금 재학습 시작"
RETRAIN_FORCE = "새 피드백이 적더라도 실행"
PROMOTE_PICK = "승격할 버전과 별칭을 골라 주세요."
PROMOTED = "{alias} → {version} 승격 완료. 서버가 새 버전으로 바뀌었어요."
ROLLED_BACK = "{alias}을(를) 이전 버전으로 되돌렸어요: {version}"
RETRAIN_STARTED = "재학습을 시작했어요 (실행 ID: {run_id}). 진행 상황은 재학습 기록에 나타나요."
SWAP_FAILED = " 단, 불러오지 못한 모델이 있어 이전 버전이 계속 응답해요: {failed}"

# ---- errors -----------------------------------------------------------------------------------
ERROR_EMPTY = "메시지가 비어 있어요. 내용을 입력해 주세요."
ERROR_TOO_LONG = (
    "대화가 너무 길어요. 한 대화에서 주고받을 수 있는 글자 수는 {limit:,}자까지예요. "
    "메시지를 줄이거나 ➕ 새 대화에서 이어 가 주세요."
)
ERROR_BUSY = "지금 사용자가 많아요. 잠시 후 다시 시도해 주세요."
ERROR_RATE_LIMITED = "메시지를 너무 빨리 보내고 있어요. 잠시 후 다시 시도해 주세요."
ERROR_NO_SESSION = "연결 정보가 없어요. 페이지를 새로고침해 주세요."
ERROR_MODEL = "선택한 모델을 찾을 수 없어요. 다른 모델을 골라 주세요."
ERROR_UNAVAILABLE = "지금은 이 기능을 사용할 수 없어요."
ERROR_RETRAIN_BUSY = "재학습이 이미 진행 중이에요. 끝난 뒤에 다시 시도해 주세요."
ERROR_GENERIC = "문제가 생겼어요. 잠시 후 다시 시도해 주세요."
ERROR_NOT_FOUND = (
    "대화를 찾을 수 없어요. 삭제됐거나 다른 브라우저에서 나눈 대화일 수 있어요. "
    "대화 기록에서 다시 골라 주세요."
)
ERROR_PAGE_SESSION = "페이지 정보가 오래됐어요. 페이지를 새로고침해 주세요."
ERROR_FLAGGED_TEXT = (
    "이 내용에는 학습에 쓸 수 없는 표현이 있어 저장하지 않았어요. 표현을 바꿔 다시 보내 주세요."
)
ERROR_DETAIL = "{message} (자세히: {detail})"

# ---- the challenger (dashboard) ---------------------------------------------------------------
CHALLENGER_TITLE = "🥊 도전 모델 (사용자 투표로 승격)"
CHALLENGER_NONE = "지금은 심사 중인 도전 모델이 없어요. 다음 재학습이 통과하면 아레나에 나와요."
CHALLENGER_OFFLINE = "승격 방식: 오프라인 (골드 보상 모델 게이트). 아레나 도전은 꺼져 있어요."
CHALLENGER_ACTIVE = (
    "**{version}**이(가) 챔피언 **{champion}**에 도전 중 — 아레나 대결의 {share}%\n\n"
    "전적 {wins}승 {losses}패 {ties}무 ({votes}/{min_votes}표), 승률 {interval}, "
    "마감 {deadline} UTC"
)
CHALLENGER_INTERVAL = "{rate:.2f} [95% {low:.2f}, {high:.2f}]"
COL_DECISION = "결정"
COL_RECORD = "승-패-무"
COL_WHY = "이유"
DECISIONS = {"promote": "승격", "retire": "탈락", "abandon": "중단"}

# ---- background bootstrap ---------------------------------------------------------------------
BOOTSTRAP_BANNER = (
    "⏳ **더 똑똑한 모델을 준비하고 있어요** · {stage} 단계 ({done}/{total}) · 약 {eta} 남았어요"
)
BOOTSTRAP_FIRST_BANNER = (
    "⏳ **첫 모델을 준비하고 있어요** · {stage} 단계 ({done}/{total}) · 약 {eta} 남았어요. "
    "준비되는 대로 바로 답할게요."
)
BOOTSTRAP_NEW_MODEL = "✨ **새 모델이 도착했어요!** 이제 `{version}` 모델이 답해요."
BOOTSTRAP_STAGES = {
    "base": "기초 언어 모델",
    "sft": "대화 학습",
    "rm": "보상 모델",
    "gold-rm": "평가용 보상 모델",
    "ppo": "강화학습 (PPO)",
    "eval": "평가",
}
# What screen readers say for the buttons (Ctrl/⌘+Shift+O and Esc are their shortcuts)
ARIA_LABELS = {
    "chat-new": "새 대화 시작 (Ctrl+Shift+O)",
    "chat-send": "메시지 보내기",
    "chat-stop": "답변 멈추기 (Esc)",
    "chat-regenerate": "마지막 답변 다시 받기",
    "arena-send": "대결 시작",
    "arena-new": "새 대결",
}
# Gradio's own words its Korean translation leaves in English
ENGLISH_LABELS = {
    "Liked": "좋아요 누름",
    "Disliked": "싫어요 누름",
    "Copy message": "메시지 복사",
    "Copied message": "복사했어요",
}
# Toast titles (Gradio's are English: "Info", "Warning", "Error"; the page's script puts these)
TITLE_INFO = "알림"
TITLE_WARNING = "확인해 주세요"
TITLE_ERROR = "문제가 생겼어요"
TOAST_TITLES = {
    "Info": TITLE_INFO,
    "Warning": TITLE_WARNING,
    "Error": TITLE_ERROR,
    "Success": "완료",
}
# Gradio's own words, in Korean whatever the browser's language (its i18n keys)
GRADIO_WORDS = {
    "chatbot": {
        "edit": "편집",
        "retry": "다시 생성",
        "undo": "되돌리기",
        "submit": "보내기",
        "cancel": "취소",
        "like": "좋아요",
        "dislike": "싫어요",
        "clear": "대화 지우기",
        "complete": "완료",
        "copy_message": "메시지 복사",
        "copied_message": "복사했어요",
    },
    "common": {
        "clear": "지우기",
        "download": "내려받기",
        "download_all": "모두 내려받기",
        "edit": "편집",
        "empty": "비어 있음",
        "error": "오류",
        "loading": "불러오는 중",
        "remove": "지우기",
        "share": "공유",
        "submit": "보내기",
        "undo": "되돌리기",
        "settings": "설정",
        "language": "언어",
        "progress": "진행",
    },
    "upload_text": {"click_to_upload": "눌러서 올리기", "drop_file": "파일을 여기에 놓으세요"},
}
# Words Gradio writes in English without i18n (screen readers read them)
GRADIO_ARIA = {
    "More tabs": "탭 더 보기",
    "chatbot conversation": "대화 내용",
    "Close": "닫기",
    "Clear": "대화 지우기",
    # the same words where Gradio's i18n stays English (a browser set to plain "en")
    "Edit": "편집",
    "Like": "좋아요",
    "Dislike": "싫어요",
    "Submit": "보내기",
    "Cancel": "취소",
    "Retry": "다시 생성",
    "Undo": "되돌리기",
    "Copy": "복사",
    "Copied!": "복사했어요",
    "Download": "내려받기",
    "Share": "공유",
    "Table actions": "표 메뉴",
    "Copy table data": "표 복사",
    "Fullscreen": "전체 화면",
    "Exit fullscreen mode": "전체 화면 끝내기",
    "Exit fullscreen": "전체 화면 끝내기",
    # read aloud from a live region while a tab's content arrives
    "Loading": "불러오는 중",
    "Loading...": "불러오는 중",
    "Loading…": "불러오는 중",
}
LEADERBOARD_TABLE_LABEL = "모델 순위표"
MATRIX_LABEL = "승률표"
GRADIO_ARIA_PREFIXES = {"user's message: ": "내 메시지: ", "bot's message: ": "kindchat의 답변: "}
BRANCH_LABELS = {
    "prev": "이전 버전",
    "next": "다음 버전",
    "of": "{n}개 중 {k}번째 버전",
    "continue": "계속 생성",
    "continue_label": "길이 제한으로 끊긴 답변 이어서 쓰기",
}
ERROR_MODEL_STARTING = "첫 모델을 아직 준비하고 있어요. 몇 초 뒤에 다시 보내 주세요."
BOOTSTRAP_STATUS = {"done": "완료", "running": "진행 중", "waiting": "대기", "failed": "실패"}
BOOTSTRAP_TITLE = "모델 준비 단계"
COL_BOOT_STAGE = "단계"
COL_BOOT_STATUS = "상태"
COL_BOOT_PROGRESS = "진행률"
COL_BOOT_SECONDS = "걸린 시간(초)"
MINUTES = "{n}분"
SECONDS = "{n}초"
