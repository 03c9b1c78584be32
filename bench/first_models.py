"""The first visit's models: the lean loop against TRL's SFTTrainer, same seeds, same data.

    python bench/first_models.py --seeds 8

For each seed, the micro preset's tokenizer, base LM and SFT are trained twice from the same
initial weights, once with each trainer (`SftConfig.trainer`: "trl", "torch"), each in a scratch
home. Prints the held-out perplexity of the base LM and of the SFT model (on the SFT split's
held-out answers) and the seconds of each stage in this warm process (TRL's import is paid once
here, before the first seed: its cost to a fresh install is in `bench/first_answer.py`), then
the paired difference lean − TRL with a 95% t interval over the seeds. Run by hand, alone.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.table import Table
from scipy import stats

from kindchat.config import Settings
from kindchat.models.presets import get_preset
from kindchat.models.registry import Registry
from kindchat.retrain.sft import SftConfig, Trainer, train_base, train_sft

ROOT = Path(__file__).resolve().parent.parent


def one(seed: int, trainer: Trainer, data_dir: Path) -> dict[str, float]:
    preset = get_preset("micro")
    preset = replace(preset, base=replace(preset.base, seed=seed))  # the initial weights
    with tempfile.TemporaryDirectory(prefix="kindchat-first-models-") as home:
        settings = Settings(home=Path(home), data_dir=data_dir)
        settings.ensure_dirs()
        registry = Registry.for_settings(settings)
        start = time.perf_counter()
        base = train_base(settings, registry, preset, trainer)
        base_s = time.perf_counter() - start
        config = SftConfig.for_preset(preset, seed=seed, trainer=trainer)
        start = time.perf_counter()
        sft = train_sft(settings, registry, base.version, config)
        return {
            "base ppl": base.metrics["heldout_ppl"],
            "sft ppl": sft.metrics["heldout_ppl"],
            "base s": base_s,
            "sft s": time.perf_counter() - start,
        }


def interval(diffs: list[float]) -> str:
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return f"{mean:+.2f}"
    half = stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / len(diffs) ** 0.5
    return f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "vaiv")
    args = parser.parse_args()
    rows = {t: [one(s, t, args.data_dir) for s in range(args.seeds)] for t in ("trl", "torch")}
    columns = list(rows["trl"][0])
    table = Table(title=f"micro base + SFT, TRL against the lean loop, {args.seeds} seeds")
    for column in ("seed", *(f"{c} ({t})" for c in columns for t in ("trl", "lean"))):
        table.add_column(column, justify="right")
    for seed in range(args.seeds):
        cells = [f"{rows[t][seed][c]:.2f}" for c in columns for t in ("trl", "torch")]
        table.add_row(str(seed), *cells)
    table.add_row(
        "lean − TRL",
        *(
            interval([rows["torch"][s][c] - rows["trl"][s][c] for s in range(args.seeds)])
            if t == "torch"
            else ""
            for c in columns
            for t in ("trl", "torch")
        ),
    )
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
