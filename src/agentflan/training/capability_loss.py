"""Training loss per capability (the paper's Figure 3: capabilities are learned at different speeds).

Capability labels travel with the labels: `token_capabilities` gives each token of an encoded
sample the capability of the assistant turn it belongs to (0 for untrained tokens), a parallel
`capabilities` column of the prepared rows that packing concatenates and the collator pads like
the labels. `with_capability_loss(SFTTrainer)` is a trainer that pops the column from each batch
and reads the per-token log-probabilities TRL's fused LM head already computes for the loss (a
forward hook on the model: no extra forward, no logits), sums them per capability, and logs the
mean loss of each capability (`loss_reasoning`, `loss_retrieval`, ...) with the training loss.

Mapping tokens to turns is template-agnostic: every template trains an assistant turn as one run
of consecutive trained tokens, separated from the next trained turn by untrained markup, so the
k-th trained run is the k-th trained assistant turn. When the counts disagree (a template that
splits a turn), the trained tokens are labelled `unlabelled` rather than guessed.
"""

from __future__ import annotations

import logging
from typing import Any

from agentflan.schema import CAPABILITIES, AssistantMessage, Message

log = logging.getLogger(__name__)
IGNORE = -100
NAMES: tuple[str, ...] = ("untrained", *CAPABILITIES, "unlabelled")
"""Capability of a token by id: 0 untrained, then the four capabilities, then trained without one."""
UNLABELLED = len(NAMES) - 1


def token_capabilities(labels: list[int], messages: list[Message]) -> tuple[list[int], bool]:
    """Per-token capability ids of an encoded sample (`labels`) rendered from `messages`, and whether
    the trained runs matched the trained turns one to one."""
    trained = [m for m in messages if isinstance(m, AssistantMessage) and m.loss]
    ids = [NAMES.index(m.capability) if m.capability else UNLABELLED for m in trained]
    runs: list[tuple[int, int]] = []
    start = None
    for i, label in enumerate([*labels, IGNORE]):
        if label != IGNORE and start is None:
            start = i
        elif label == IGNORE and start is not None:
            runs.append((start, i))
            start = None
    out = [0] * len(labels)
    # truncation may cut the last turns: fewer runs than turns is fine, more is a mismatch
    ok = len(runs) <= len(ids)
    for k, (a, b) in enumerate(runs):
        out[a:b] = [ids[k] if ok else UNLABELLED] * (b - a)
    return out, ok


def with_capability_loss(trainer_cls: type[Any]) -> type[Any]:
    """A subclass of TRL's `SFTTrainer` that logs the loss of each capability (see the module doc)."""
    import torch

    class CapabilityLossTrainer(trainer_cls):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._cap_sum = torch.zeros(len(NAMES), dtype=torch.float64)
            self._cap_count = torch.zeros(len(NAMES), dtype=torch.float64)
            self._captured: Any = None
            self._warned = False
            self.model.register_forward_hook(self._capture)

        def _capture(self, module: Any, args: Any, output: Any) -> None:
            if getattr(output, "log_probs", None) is not None and getattr(output, "label_mask", None) is not None:
                self._captured = (output.log_probs.detach(), output.label_mask)

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            caps = inputs.pop("capabilities", None)
            self._captured = None
            result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                          num_items_in_batch=num_items_in_batch)
            if caps is not None and self.model.training:
                self._accumulate(caps)
            return result

        def _accumulate(self, caps: Any) -> None:
            captured, self._captured = self._captured, None
            if captured is None:
                if not self._warned:
                    log.warning("no per-token log-probabilities from the model's fused LM head: the loss per "
                                "capability is not logged")
                    self._warned = True
                return
            log_probs, mask = captured
            shifted = caps[:, 1:].to(log_probs.device)  # log_probs[t] scores the label at t + 1
            if shifted.shape != log_probs.shape:
                return
            ids = shifted[mask].long()
            nll = -log_probs[mask].double()
            self._cap_sum += torch.bincount(ids, weights=nll, minlength=len(NAMES)).cpu()
            self._cap_count += torch.bincount(ids, minlength=len(NAMES)).double().cpu()

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            if self.model.training and "loss" in logs:
                sums = self.accelerator.reduce(self._cap_sum.to(self.accelerator.device), reduction="sum").cpu()
                counts = self.accelerator.reduce(self._cap_count.to(self.accelerator.device), reduction="sum").cpu()
                for i, name in enumerate(NAMES):
                    if i and counts[i] > 0:
                        logs[f"loss_{name}"] = round(float(sums[i] / counts[i]), 4)
                self._cap_sum.zero_()
                self._cap_count.zero_()
            super().log(logs, start_time)

    return CapabilityLossTrainer
