"""DPO micro-run, RM and policy evaluation on the unseen test prompts, and bootstrap's outcome."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from kindchat.cli import app
from kindchat.config import Settings
from kindchat.models.loading import load_causal_lm, load_reward_model
from kindchat.models.registry import Registry
from kindchat.retrain.dpo import DpoConfig, train_dpo
from kindchat.retrain.policy_eval import PolicyEvalConfig, is_repetitive
from kindchat.retrain.reward import score_texts
from kindchat.retrain.stages import eval_policy
from kindchat.seed import read_rm
from kindchat.stats import bootstrap


@pytest.mark.slow  # trains
def test_dpo_micro_run(micro_copy: Settings) -> None:
    registry = Registry(micro_copy.models_dir)
    # 4 epochs over 24 pairs: the DPO loss must fall below its starting value log 2.
    config = DpoConfig(epochs=4, batch_size=8, learning_rate=5e-4, max_length=192, max_records=24)
    manifest = train_dpo(micro_copy, registry, "sft", config)
    assert manifest.kind == "policy" and manifest.config["algorithm"] == "dpo"
    assert manifest.parents == [registry.aliases()["sft"]]
    # At step 0 the policy equals its reference, so the DPO loss starts at exactly log 2.
    assert manifest.metrics["train_loss"] < math.log(2)
    assert manifest.metrics["reward_accuracy_end"] > 0.5
    before = load_causal_lm(registry.resolve("sft"))[0].state_dict()
    after = load_causal_lm(registry.path(manifest.version))[0].state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_bootstrap_registers_the_whole_pipeline(micro_settings: Settings) -> None:
    registry = Registry(micro_settings.models_dir)
    aliases = registry.aliases()
    assert set(aliases) == {"base", "sft", "rm", "gold-rm", "rlhf"}
    rm, gold = registry.manifest(aliases["rm"]), registry.manifest(aliases["gold-rm"])
    assert gold.metrics["gold"] and gold.metrics["train_pairs"] > rm.metrics["train_pairs"]
    assert {s: rm.metrics["rm_eval"][s]["n"] for s in rm.metrics["rm_eval"]} == {
        "conversation": 40,
        "hatespeech": 20,
        "translation": 40,
        "overall": 100,
    }
    policy = registry.manifest(aliases["rlhf"])
    assert policy.parents == [aliases["sft"], aliases["rm"]]
    sets = policy.metrics["policy_eval"]["sets"]
    assert policy.metrics["policy_eval"]["gold_rm"] == aliases["gold-rm"]
    overall, parts = sets["overall"], [v for k, v in sets.items() if k != "overall"]
    assert overall["n"] == sum(part["n"] for part in parts) == 100
    # the overall win rate is over all prompts: the sets' rates weighted by their sizes
    weighted = sum(part["win_rate"] * part["n"] for part in parts) / overall["n"]
    assert overall["win_rate"] == pytest.approx(weighted)
    assert policy.metrics["win_rate"] == overall["win_rate"]


@pytest.mark.slow  # a whole policy evaluation: 100 prompts, two policies, the gold RM
def test_policy_against_itself_is_an_exact_tie(micro_settings: Settings, tmp_path) -> None:  # noqa: ANN001
    import shutil

    home = tmp_path / "home"
    shutil.copytree(micro_settings.home, home, ignore=shutil.ignore_patterns("logs", "runs"))
    settings = Settings(home=home, data_dir=micro_settings.data_dir)
    results = eval_policy(
        settings,
        Registry(settings.models_dir),
        "sft",
        "sft",
        "gold-rm",
        PolicyEvalConfig(max_new_tokens=12),
    )
    overall = results[-1]
    assert overall.name == "overall" and overall.win_rate.value == 0.5  # same seed → same answers
    assert overall.kl_a_sft == pytest.approx(0.0, abs=1e-4)
    assert overall.reward_a == pytest.approx(overall.reward_b)
    sft_version = Registry(settings.models_dir).aliases()["sft"]
    stored = Registry(settings.models_dir).manifest(sft_version).metrics
    assert stored["win_rate"] == 0.5 and stored["policy_eval"]["baseline"] == sft_version


@pytest.mark.slow  # scores the seed's held-out pairs
def test_eval_rm_cli_json_counts_the_pairs_the_rm_ranks_right(micro_settings: Settings) -> None:
    """`eval rm --json` per set: n, accuracy (chosen scored above rejected) and the mean scores,
    checked against the RM scoring each answer alone (no batch, no padding)."""
    result = CliRunner().invoke(app, ["--home", str(micro_settings.home), "eval", "rm", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    model, tokenizer = load_reward_model(Registry(micro_settings.models_dir).resolve("rm"))
    pairs = read_rm(micro_settings.data_dir, "test")
    scored = [
        (
            pair.subset,
            *(
                score_texts(model, tokenizer, [pair.prompt], [text], 256)[0]
                for text in (pair.chosen, pair.rejected)
            ),
        )
        for pair in pairs
    ]
    assert set(data) == {pair.subset for pair in pairs} | {"overall"}
    for name, got in data.items():
        rows = [(c, r) for subset, c, r in scored if name in (subset, "overall")]
        right = sum(c > r for c, r in rows) / len(rows)
        close = sum(abs(c - r) < 1e-4 for c, r in rows)  # batched scores may round across
        assert got["n"] == len(rows)
        assert abs(got["accuracy"] - right) <= close / len(rows), (name, got, right)
        if close == 0:  # the same wins, so the same bootstrap interval
            interval = bootstrap([float(c > r) for c, r in rows])
            assert (got["accuracy_low"], got["accuracy_high"]) == (interval.low, interval.high)
        assert got["chosen_mean"] == pytest.approx(sum(c for c, _ in rows) / len(rows), abs=1e-4)
        assert got["rejected_mean"] == pytest.approx(sum(r for _, r in rows) / len(rows), abs=1e-4)


def test_repetition_and_bootstrap_helpers() -> None:
    assert is_repetitive([1, 2, 3] * 6)
    assert not is_repetitive(list(range(18)))
    assert not is_repetitive([1, 1, 1])  # too short to judge
    est = bootstrap([1.0] * 30 + [0.0] * 10)
    assert est.value == 0.75 and est.low < 0.75 < est.high and est.n == 40
