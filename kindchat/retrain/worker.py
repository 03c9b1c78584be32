"""A retrain cycle in a child process at low priority, so a server beside it keeps answering.

The parent writes one JSON request to the child's stdin — settings (secrets included: they never
touch the disk or the command line), the cycle's config and the queued run id — and the child
(`python -m kindchat.retrain.worker`) lowers its priority with `os.nice`, runs
:func:`run_retrain_cycle` and exits: 0 when the run finished (succeeded, refused, skipped), 3
when another cycle held the lock, 1 when a stage failed. Its console output goes to
`runs/retrain-<run id>/worker.log`; its log lines also go to `logs/kindchat.log`.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from typing import Any

from pydantic import SecretStr

from kindchat.config import Settings
from kindchat.logs import setup_logging
from kindchat.retrain.bootstrap_state import lower_priority
from kindchat.retrain.errors import RetrainBusyError, RetrainFailedError
from kindchat.retrain.loop_config import RetrainConfig
from kindchat.retrain.recorder import run_dir

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_BUSY = 0, 1, 3


def settings_payload(settings: Settings) -> dict[str, Any]:
    """`settings` as JSON-ready data with secrets revealed (for the child's stdin only)."""
    data = settings.model_dump()
    for key, value in data.items():
        if isinstance(value, SecretStr):
            data[key] = value.get_secret_value()
    return json.loads(json.dumps(data, default=str))


def spawn_cycle(settings: Settings, config: RetrainConfig, run_id: str) -> subprocess.Popen[bytes]:
    """Start the child that runs the cycle of the queued run `run_id`; return its process."""
    out_dir = run_dir(settings, run_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    request = {"settings": settings_payload(settings), "config": config.to_json(), "run_id": run_id}
    with (out_dir / "worker.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "kindchat.retrain.worker"],
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    if process.stdin is not None:  # always, with stdin=PIPE
        with process.stdin as stdin:
            stdin.write(json.dumps(request).encode("utf-8"))
    logger.info(
        "retrain run %s: worker pid %d (nice +%d)", run_id, process.pid, settings.retrain_nice
    )
    return process


def main() -> int:
    request = json.loads(sys.stdin.read())
    settings = Settings(**request["settings"])
    lower_priority(settings.retrain_nice)

    setup_logging(settings.logs_dir, settings.log_level)
    config = RetrainConfig.from_json(request["config"])
    # lazy: the training stack is the child's, not the server's (it spawns this module)
    from kindchat.retrain.cycle import run_retrain_cycle

    try:
        run = run_retrain_cycle(settings, config, run_id=request["run_id"])
    except RetrainBusyError as err:
        logger.warning("%s", err)
        return EXIT_BUSY
    except RetrainFailedError:
        logger.exception("retrain cycle failed")
        return EXIT_FAILED
    logger.info("retrain run %s finished: %s", run.id, run.status)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
