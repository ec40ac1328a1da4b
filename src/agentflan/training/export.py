"""Pre-tokenized exports: `input_ids` and `labels` rendered with our templates and loss masks.

The one way to give another trainer exact per-message loss: TRL's `SFTTrainer` uses a dataset's
`labels` column as it is (no template, no `assistant_only_loss` guessing), so what it trains is
what `agentflan train` trains, untrained turns (AgentInstruct's "OK.", negative samples' bad
turns) included. Each row is `{"id", "input_ids", "labels"}` (-100 outside trained spans); a
trajectory left without a trained token is counted `unwritable: no_trainable_tokens`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from agentflan.errors import ConfigError
from agentflan.formats.templates import ChatTemplate
from agentflan.io.files import base_suffix
from agentflan.io.writers.base import JsonSink, WriteReport
from agentflan.schema import Trajectory
from agentflan.training.masking import NoTrainableTokens, encode


def tokenized_rows(trajectories: Iterable[Trajectory], template: ChatTemplate, tokenizer: Any,
                   report: WriteReport, max_length: int | None = None) -> Iterable[dict[str, Any]]:
    """One `{"id", "input_ids", "labels"}` row per trajectory with a trained token (others counted)."""
    for traj in trajectories:
        try:
            enc = encode(traj, template, tokenizer, max_length=max_length)
        except NoTrainableTokens:
            report.unwritable["no_trainable_tokens"] += 1
            continue
        if enc.truncated:
            report.lossy["truncated"] += 1
        report.written += 1
        yield {"id": traj.id, "input_ids": enc.input_ids, "labels": enc.labels}


def export_tokenized(trajectories: Iterable[Trajectory], path: str | Path, template: ChatTemplate,
                     tokenizer: Any, max_length: int | None = None) -> WriteReport:
    """Write `tokenized_rows` to a `.jsonl`/`.json` file (optionally `.gz`/`.zst`)."""
    path = Path(path)
    if base_suffix(str(path)) not in (".jsonl", ".json"):
        raise ConfigError(f"tokenized exports are .jsonl or .json files (+.gz/.zst), not {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    report = WriteReport()
    with JsonSink(path) as sink:
        for row in tokenized_rows(trajectories, template, tokenizer, report, max_length):
            sink.add(row)
    return report
