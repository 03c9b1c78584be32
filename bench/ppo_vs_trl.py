"""kindchat's PPO against TRL's last PPOTrainer (trl 1.12.0, `trl.experimental.ppo`), same run.

Both get the same SFT policy (actor and reference), the same RM (reward and critic init), the
same prompts in the KULLM template, rollout batch, mini-batch, PPO epochs, response length and
sampling. Each runs in its own subprocess (TRL 1.12 is imported only there) and is timed over its
PPO updates alone (model loading excluded). Prints samples/s and the ratio.

    pip install --no-deps --target bench/.trl112 trl==1.12.0     # once; only this bench uses it
    python bench/ppo_vs_trl.py --home var --steps 8               # models from a bootstrap
    python bench/ppo_vs_trl.py --preset micro --steps 8           # bootstraps micro models first
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRL_DIR = HERE / ".trl112"


def run_kindchat(home: Path, steps: int, batch: int, mini: int, epochs: int, length: int) -> dict:
    import torch

    from kindchat.config import Settings
    from kindchat.models.registry import Registry
    from kindchat.retrain.ppo import PpoConfig, PpoTrainer, build_rlhf_models, ppo_prompts

    settings = Settings(home=home)
    registry = Registry(settings.models_dir)
    config = PpoConfig(
        steps=steps,
        batch_size=batch,
        mini_batch_size=mini,
        ppo_epochs=epochs,
        max_new_tokens=length,
        max_prompt_tokens=128,
        temperature=1.0,
        checkpoint_every=0,
    )
    torch.manual_seed(0)
    models = build_rlhf_models(registry.resolve("sft"), registry.resolve("rm"), config)
    trainer = PpoTrainer(models, ppo_prompts(settings, config), config, Path(tempfile.mkdtemp()))
    trainer.step()  # warm-up (first-call allocations), not timed
    trainer.config.steps = steps + 1
    start = time.perf_counter()
    trainer.train(progress=False)
    seconds = time.perf_counter() - start
    return {"impl": "kindchat", "samples": steps * batch, "seconds": seconds}


def run_trl(
    home: Path, steps: int, batch: int, mini: int, epochs: int, length: int, defaults: bool
) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    from kindchat.config import Settings
    from kindchat.models.registry import Registry
    from kindchat.models.template import prompt_format
    from kindchat.models.tokenizer import load_tokenizer
    from kindchat.retrain.ppo import PpoConfig, ppo_prompts

    settings = Settings(home=home)
    registry = Registry(settings.models_dir)
    sft, rm = registry.resolve("sft"), registry.resolve("rm")
    tokenizer = load_tokenizer(sft)
    tokenizer.padding_side = "left"
    prompts = ppo_prompts(settings, PpoConfig())[: (steps + 1) * batch]
    fmt = prompt_format(tokenizer)
    ids = [tokenizer(fmt.single(p), add_special_tokens=False)["input_ids"][-128:] for p in prompts]
    dataset = Dataset.from_dict({"input_ids": ids})
    args = PPOConfig(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=mini,
        gradient_accumulation_steps=batch // mini,
        num_mini_batches=batch // mini,
        num_ppo_epochs=epochs,
        total_episodes=(steps + 1) * batch,
        response_length=length,
        stop_token="eos",
        temperature=1.0,
        local_rollout_forward_batch_size=batch,
        learning_rate=1e-5,
        report_to=[],
        save_strategy="no",
        num_sample_generations=0,
        use_cpu=not torch.cuda.is_available(),
        seed=0,
        logging_steps=1,
    )
    if not defaults:  # the same knobs as kindchat: fp32 on CPU, no activation checkpointing
        args.bf16 = False
        args.gradient_checkpointing = False
    torch.manual_seed(0)
    trainer = PPOTrainer(
        args=args,
        processing_class=tokenizer,
        model=AutoModelForCausalLM.from_pretrained(sft),
        ref_model=AutoModelForCausalLM.from_pretrained(sft),
        reward_model=AutoModelForSequenceClassification.from_pretrained(rm, num_labels=1),
        value_model=AutoModelForSequenceClassification.from_pretrained(rm, num_labels=1),
        train_dataset=dataset,
    )
    times: list[float] = []

    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_step_end(self, *a: object, **k: object) -> None:
            times.append(time.perf_counter())

    trainer.add_callback(Clock())
    trainer.train()
    # Time from the end of the first update (warm-up) to the end of the last.
    name = "trl-1.12 defaults" if defaults else "trl-1.12 same knobs"
    return {"impl": name, "samples": (len(times) - 1) * batch, "seconds": times[-1] - times[0]}


def child(impl: str, args: argparse.Namespace) -> None:
    shape = (args.home, args.steps, args.batch, args.mini, args.epochs, args.length)
    if impl == "kindchat":
        result = run_kindchat(*shape)
    else:
        result = run_trl(*shape, defaults=impl == "trl-defaults")
    print("RESULT " + json.dumps(result))


def spawn(impl: str, args: argparse.Namespace) -> dict:
    env = dict(os.environ)
    if impl.startswith("trl"):
        if not (TRL_DIR / "trl").is_dir():
            sys.exit(
                f"install TRL 1.12 first: pip install --no-deps --target {TRL_DIR} trl==1.12.0"
            )
        env["PYTHONPATH"] = os.pathsep.join([str(TRL_DIR), env.get("PYTHONPATH", "")])
    env["TRL_EXPERIMENTAL_SILENCE"] = "1"
    cmd = [
        sys.executable,
        __file__,
        "--child",
        impl,
        "--home",
        str(args.home),
        "--steps",
        str(args.steps),
        "--batch",
        str(args.batch),
        "--mini",
        str(args.mini),
        "--epochs",
        str(args.epochs),
        "--length",
        str(args.length),
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        sys.exit(f"{impl} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", type=Path, help="KINDCHAT_HOME with sft and rm aliases")
    parser.add_argument(
        "--preset", default="micro", help="bootstrap this preset if --home is not given"
    )
    parser.add_argument(
        "--steps", type=int, default=8, help="timed PPO updates (after one warm-up)"
    )
    parser.add_argument("--batch", type=int, default=16, help="rollouts per update")
    parser.add_argument("--mini", type=int, default=8, help="rollouts per optimiser step")
    parser.add_argument("--epochs", type=int, default=1, help="PPO epochs per rollout batch")
    parser.add_argument("--length", type=int, default=48, help="response tokens")
    parser.add_argument(
        "--child", choices=["kindchat", "trl", "trl-defaults"], help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        child(args.child, args)
        return
    if args.home is None:
        from kindchat.config import Settings
        from kindchat.models.presets import get_preset
        from kindchat.retrain.bootstrap import run_bootstrap

        args.home = Path(tempfile.mkdtemp()) / "home"
        run_bootstrap(Settings(home=args.home), get_preset(args.preset), until="rm")
    results = [spawn("kindchat", args), spawn("trl", args), spawn("trl-defaults", args)]
    print(
        f"\nPPO samples/s — batch {args.batch}, mini-batch {args.mini}, PPO epochs {args.epochs}, "
        f"{args.length} response tokens, models from {args.home}"
    )
    print(f"{'implementation':<16}{'samples':>9}{'seconds':>10}{'samples/s':>12}")
    for r in results:
        print(
            f"{r['impl']:<16}{r['samples']:>9}{r['seconds']:>10.1f}{r['samples'] / r['seconds']:>12.2f}"
        )
    ours, same, defaults = (r["samples"] / r["seconds"] for r in results)
    print(
        f"ratio kindchat / trl-1.12 (same knobs): {ours / same:.2f}x; "
        f"/ trl-1.12 (its defaults: bf16 autocast, activation checkpointing): {ours / defaults:.2f}x"
    )


if __name__ == "__main__":
    main()
