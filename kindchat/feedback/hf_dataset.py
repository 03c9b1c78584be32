"""Feedback as a standard dataset: `kindchat feedback export --format hf OUT`.

The rows of :func:`kindchat.feedback.export.export_reward_data` — filtered, capped, with personal
data replaced — written the way TRL, `datasets` and the Hugging Face hub read them:

Splits without rows are left out (files and card), as `datasets` cannot load an empty one.

* `preference/{train,test}.parquet` — conversational preference rows: `prompt` (the messages up
  to the last user turn), `chosen` and `rejected` (one assistant message each), plus `id` and
  `source` (the rule that made the pair: battle, rating, regeneration, better_answer, edit,
  seed);
* `unpaired/train.parquet` — conversational unpaired rows for KTO: `prompt`, `completion`,
  `label` (👍 true, 👎 false);
* `sft/train.parquet` — users' better answers as `messages`;
* `README.md` — the dataset card: a `configs` header that `load_dataset(OUT, "preference")` and
  the hub read, counts per rule, filters and caps, personal data replaced per kind, the date
  range, the model versions that produced the answers; the licence is left for the operator;
* `manifest.json` — the export manifest (as `--format json` writes it).

`load_dataset("parquet", data_files=…)` reads each file as it is, and TRL's `DPOTrainer` and
`KTOTrainer` train on the splits unchanged (tests/feedback/test_hf_dataset.py). `push_to_hub`
uploads the folder to a dataset repository (private on creation) for operators with a hub.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from datasets import Dataset, Features, Value
from sqlmodel import Session

from kindchat.feedback.errors import InvalidValueError
from kindchat.feedback.export import ExportConfig, ExportReport, export_reward_data
from kindchat.feedback.files import write_json_atomic, write_text_atomic
from kindchat.feedback.moderation import Moderator

logger = logging.getLogger(__name__)

MESSAGES = [{"role": Value("string"), "content": Value("string")}]
FEATURES: dict[str, Features] = {
    "preference": Features(
        {
            "id": Value("string"),
            "source": Value("string"),
            "prompt": MESSAGES,
            "chosen": MESSAGES,
            "rejected": MESSAGES,
        }
    ),
    "unpaired": Features(
        {
            "id": Value("string"),
            "source": Value("string"),
            "prompt": MESSAGES,
            "completion": MESSAGES,
            "label": Value("bool"),
        }
    ),
    "sft": Features({"id": Value("string"), "source": Value("string"), "messages": MESSAGES}),
}
# config -> split -> the export file it comes from
LAYOUT: dict[str, dict[str, str]] = {
    "preference": {"train": "train.json", "test": "test.json"},
    "unpaired": {"train": "unpaired.json"},
    "sft": {"train": "sft.json"},
}


@dataclass(frozen=True)
class HfExport:
    out_dir: Path
    rows: dict[str, dict[str, int]]  # config -> split -> rows
    report: ExportReport


def _conversation(row: dict[str, Any]) -> list[dict[str, str]]:
    messages = [{"role": m["role"], "content": m["content"]} for m in row.get("context", [])]
    return [*messages, {"role": "user", "content": row["prompt"]}]


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def to_standard(config: str, row: dict[str, Any]) -> dict[str, Any]:
    """One export row in TRL's conversational format for `config`."""
    base = {"id": row["id"], "source": row["source"]}
    if config == "preference":
        return {
            **base,
            "prompt": _conversation(row),
            "chosen": _assistant(row["chosen"]),
            "rejected": _assistant(row["rejected"]),
        }
    if config == "unpaired":
        return {
            **base,
            "prompt": _conversation(row),
            "completion": _assistant(row["completion"]),
            "label": bool(row["label"]),
        }
    return {**base, "messages": [*_conversation(row), *_assistant(row["completion"])]}


def _table(title: str, rows: dict[str, Any], *columns: str) -> str:
    if not rows:
        return f"**{title}:** none\n"
    lines = [f"**{title}**", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for key, value in rows.items():
        cells = list(value.values()) if isinstance(value, dict) else [value]
        lines.append("| " + " | ".join(str(c) for c in (key, *cells)) + " |")
    return "\n".join(lines) + "\n"


def dataset_card(manifest: dict[str, Any], rows: dict[str, dict[str, int]]) -> str:
    """README.md: the `configs` header the hub and `load_dataset(dir, config)` read, then what
    the data is and how it was made, all from the export manifest."""
    header = ["---", "configs:"]
    for config, splits in rows.items():
        present = [split for split, n in splits.items() if n]
        if not present:
            continue
        header += [f"- config_name: {config}", "  data_files:"]
        for split in present:
            header += [f"  - split: {split}", f"    path: {config}/{split}.parquet"]
    header += [
        "language:",
        "- ko",
        "license: unknown  # the operator sets the licence users agreed to",
        "tags:",
        "- kindchat",
        "- preference",
        "- dpo",
        "- kto",
        "- rlhf",
        "---",
    ]
    dates = manifest.get("date_range") or ["-", "-"]
    thresholds = manifest.get("thresholds", {})
    influence = manifest.get("influence", {})
    personal = manifest.get("personal_data", {})
    counts = {f"{c}/{s}": n for c, splits in rows.items() for s, n in splits.items()}
    body = f"""
# kindchat feedback

What kindchat's users said about its answers, as training data: 👍/👎 ratings, arena votes
and better answers written by users, mined by kindchat's rules (`kindchat/feedback/pairs.py`),
filtered, capped per session, and with personal data replaced by typed placeholders.

- exported: {manifest.get("created_at")} (format {manifest.get("format_version")})
- feedback given between {dates[0]} and {dates[1]}
- since: {manifest.get("since") or "the start"}
- fingerprint: `{manifest.get("fingerprint")}`
- licence: **not set** — the operator sets `license:` above to what the users agreed to.

## Configs

| config | format | use |
|---|---|---|
| `preference` | conversational `prompt` / `chosen` / `rejected` | TRL `DPOTrainer`, `RewardTrainer` |
| `unpaired` | conversational `prompt` / `completion` / `label` | TRL `KTOTrainer` |
| `sft` | `messages` | TRL `SFTTrainer` |

{_table("Rows per config and split", counts, "split", "rows")}
{_table("Training rows per rule", manifest.get("signals", {}), "rule", "rows")}
{_table("Pairs per source", manifest.get("counts", {}), "source", "train", "test")}
{_table("Dropped, by reason", manifest.get("dropped", {}), "reason", "rows")}
{_table("Personal data replaced (occurrences; the values never leave)", personal, "kind", "replaced")}
{_table("Model versions that produced the answers", manifest.get("model_versions", {}), "version", "answers")}
## Filters and caps

- answers shorter than {thresholds.get("min_answer_chars")} visible characters dropped; pairs
  whose answers reach ROUGE-L {thresholds.get("max_similarity")} dropped; duplicates and
  contradictions (a pair and its reverse) dropped; the seed's evaluation prompts left out
  ({thresholds.get("exclude_eval_prompts")});
- flagged turns (moderation, again at export time) never leave;
- at most {influence.get("cap")} rows per session ({influence.get("capped_sessions")} session(s)
  capped, {influence.get("dropped_by_cap")} rows); sessions voting like a script left out:
  {influence.get("anomalous", {}).get("sessions")};
- held out by prompt hash: {thresholds.get("test_fraction")} of prompts in `preference/test`.
- personal data (phone numbers, 주민/외국인등록번호, e-mail, cards, bank accounts, passports,
  IP and street addresses, introduced names) replaced by `<전화번호>`, `<주민등록번호>`, … —
  recall is measured, not perfect (kindchat's `bench/privacy.py`): review before publishing.
"""
    return "\n".join(header) + "\n" + body


def write_hf(export_dir: Path, out_dir: Path) -> dict[str, dict[str, int]]:
    """Turn an export directory (`--format json`) into the standard layout in `out_dir`."""
    manifest = json.loads((export_dir / "manifest.json").read_text("utf-8"))
    rows: dict[str, dict[str, int]] = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    for config, splits in LAYOUT.items():
        (out_dir / config).mkdir(exist_ok=True)
        for split, name in splits.items():
            source = json.loads((export_dir / name).read_text("utf-8"))
            standard = [to_standard(config, row) for row in source]
            columns = {key: [row[key] for row in standard] for key in FEATURES[config]}
            dataset = Dataset.from_dict(columns, features=FEATURES[config])
            rows.setdefault(config, {})[split] = len(dataset)
            target = out_dir / config / f"{split}.parquet"
            if not len(dataset):  # datasets refuses an empty split: it is left out (card too)
                target.unlink(missing_ok=True)
                continue
            tmp = out_dir / config / f".{split}.parquet.tmp"
            dataset.to_parquet(str(tmp))
            tmp.replace(target)
    write_json_atomic(out_dir / "manifest.json", manifest)
    write_text_atomic(out_dir / "README.md", dataset_card(manifest, rows))
    return rows


def export_hf(
    *,
    session: Session,
    data_dir: Path,
    out_dir: Path,
    config: ExportConfig | None = None,
    since: datetime | None = None,
    moderator: Moderator | None = None,
) -> HfExport:
    """The export (same rules, same filters, same placeholders) in the standard layout."""
    with tempfile.TemporaryDirectory(prefix="kindchat-export-") as tmp:
        report = export_reward_data(
            session=session,
            data_dir=data_dir,
            out_dir=Path(tmp),
            config=config,
            since=since,
            moderator=moderator,
        )
        rows = write_hf(Path(tmp), out_dir)
    logger.info("wrote the feedback dataset %s to %s", rows, out_dir)
    return HfExport(out_dir, rows, report)


def push_to_hub(out_dir: Path, repo: str, token: str | None = None) -> str:
    """Upload the exported folder to the dataset repository `repo` (created private if new);
    returns its URL. Needs a hub and a token (`HF_TOKEN` or `hf auth login`)."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    url = api.create_repo(repo, repo_type="dataset", private=True, exist_ok=True)
    if not api.repo_info(repo, repo_type="dataset").private:
        raise InvalidValueError(
            f"{repo} is public: users' feedback goes to private repositories only (make it "
            "private on the hub, or push to a new name)",
            field="push_to_hub",
        )
    api.upload_folder(
        repo_id=repo,
        repo_type="dataset",
        folder_path=str(out_dir),
        allow_patterns=["README.md", "manifest.json", "*/*.parquet"],  # what the export wrote
        commit_message="kindchat feedback export",
    )
    return str(url)
