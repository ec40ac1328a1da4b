"""Our exports loaded by the peers themselves: rows each peer loads and can train on, per dataset.

* LLaMA-Factory (`--to sharegpt` + the dataset_info entry): rows its `get_dataset` (template
  `qwen`, SFT) returns with at least one trained token, vs records we wrote (needs `llamafactory`
  installed without dependencies, as `make test-slow` does).
* TRL (`--to hf`): rows `SFTTrainer` prepares with `assistant_only_loss=True` on a tiny tokenizer
  whose ChatML template has `{% generation %}` markers, and how many of them carry exactly our
  loss mask (they differ where an assistant turn is untrained).
* TRL (`agentflan data tokenize`): rows prepared, and how many carry exactly our labels.

    python bench/peer_exports.py [--shared ../shared/data]
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))
for key in ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(key, "1")
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="agentflan-hf-"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    args = ap.parse_args()
    from datasets import load_dataset
    from tests.unit.test_peers import TOOL_CHATML, _trainer

    from agentflan.envs.synth import synth
    from agentflan.formats.protocols import training_texts
    from agentflan.formats.templates import HFTemplate
    from agentflan.io import WRITERS, read
    from agentflan.training.export import export_tokenized
    from agentflan.training.masking import encode
    from agentflan.training.models import tiny_tokenizer

    work = Path(tempfile.mkdtemp(prefix="agentflan-peers-"))
    synth("db", 200, "train", work / "env", seed=0)
    synth("toolapi", 200, "train", work / "env", seed=0)
    sources = {
        "glaive (sharegpt)": (str(args.shared / "llamafactory/glaive_toolcall_en_demo.json"), "sharegpt"),
        "FireAct (react)": (str(args.shared / "fireact/hotpotqa_react.jsonl"), "react"),
        "ToolBench answers": (str(args.shared / "toolbench/answer"), "toolbench"),
        "reason_tool_use (openai)": (str(args.shared / "llamafactory/reason_tool_use_demo_50.jsonl"), "openai"),
        "alpaca": (str(args.shared / "llamafactory/alpaca_en_demo.json"), "alpaca"),
        "env db (agentinstruct)": (str(work / "env/db/train/agentinstruct.jsonl"), "agentinstruct"),
        "env toolapi (toolbench)": (str(work / "env/toolapi/train/toolbench_answer"), "toolbench"),
    }
    corpora = {name: list(read(path, fmt)) for name, (path, fmt) in sources.items()}
    tok = tiny_tokenizer(training_texts([t for ts in corpora.values() for t in ts[:200]], limit=10**9))
    tok.chat_template = TOOL_CHATML
    ours = HFTemplate(tok)
    lf = _llamafactory(tok, work) if importlib.util.find_spec("llamafactory") else None
    print("| dataset | read | LLaMA-Factory: written / loaded, trainable | TRL `hf`: prepared / our mask | "
          "TRL tokenized: written / our labels |\n|---|---|---|---|---|")
    for i, (name, trajs) in enumerate(corpora.items()):
        key = f"d{i}"
        writer = WRITERS.get("sharegpt")()
        rep = writer.write(trajs, work / f"{key}.json")
        info = writer.dataset_info(work / f"{key}.json")
        unw = ", ".join(f"{k} {v}" for k, v in sorted(rep.unwritable.items()))
        lf_cell = f"{rep.written}" + (f" ({unw})" if unw else "")
        if lf is not None and info is not None:
            lf_cell += f" / {lf(info)}"
        hf_rep = WRITERS.get("hf")().write(trajs, work / f"{key}.hf.jsonl")
        trainer = _trainer(load_dataset("json", data_files=str(work / f"{key}.hf.jsonl"), split="train"), tok,
                           work, assistant_only_loss=True)
        same = 0
        for t, row in zip(trajs, trainer.train_dataset, strict=True):
            same += _trainable(t, ours, tok) and row["labels"] == encode(t, ours, tok).labels
        untrained = hf_rep.lossy.get("untrained_assistant_turns", 0)
        hf_cell = f"{len(trainer.train_dataset)} / {same}" + (f" ({untrained} untrained turns)" if untrained else "")
        tok_rep = export_tokenized(trajs, work / f"{key}.tok.jsonl", ours, tok)
        trainer = _trainer(load_dataset("json", data_files=str(work / f"{key}.tok.jsonl"), split="train"), tok, work)
        kept = [t for t in trajs if _trainable(t, ours, tok)]
        exact = sum(row["labels"] == encode(t, ours, tok).labels
                    for t, row in zip(kept, trainer.train_dataset, strict=True))
        tok_cell = f"{tok_rep.written} / {exact}"
        print(f"| {name} | {len(trajs)} | {lf_cell} | {hf_cell} | {tok_cell} |")


def _trainable(traj: object, template: object, tok: object) -> bool:
    from agentflan.training.masking import NoTrainableTokens, encode

    try:
        encode(traj, template, tok)  # type: ignore[arg-type]
    except NoTrainableTokens:
        return False
    return True


def _llamafactory(tok: object, work: Path):  # type: ignore[no-untyped-def]
    """A function loading one dataset_info entry with LLaMA-Factory's `get_dataset`: trainable rows."""
    import json
    import types

    os.environ["DISABLE_VERSION_CHECK"] = "1"
    if importlib.util.find_spec("torchaudio") is None:  # imported by its multimodal plugin only
        stub = types.ModuleType("torchaudio")
        stub.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
        sys.modules["torchaudio"] = stub
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from transformers import AutoTokenizer

    tok.save_pretrained(work / "tok")  # type: ignore[attr-defined]

    def load(entry: dict) -> int:  # type: ignore[type-arg]
        (name,) = entry
        (work / "lf").mkdir(exist_ok=True)
        (work / "lf" / "dataset_info.json").write_text(json.dumps(entry))
        model_args, data_args, training_args, *_ = get_train_args({
            "stage": "sft", "model_name_or_path": str(work / "tok"), "dataset": name,
            "dataset_dir": str(work / "lf"), "template": "qwen", "output_dir": str(work / "out"),
            "do_train": True, "cutoff_len": 1_000_000, "overwrite_cache": True, "report_to": "none"})
        lf_tok = AutoTokenizer.from_pretrained(work / "tok")
        template = get_template_and_fix_tokenizer(lf_tok, data_args)
        ds = get_dataset(template, model_args, data_args, training_args, stage="sft", tokenizer=lf_tok)
        return sum(any(x != -100 for x in row["labels"]) for row in ds["train_dataset"])

    return load


if __name__ == "__main__":
    main()
