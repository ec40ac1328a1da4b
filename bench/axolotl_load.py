"""Our `--to hf` export loaded by axolotl's own dataset code (`axolotl.utils.data.prepare_datasets`,
the `chat_template` strategy with per-message `train` flags), as docs/formats.md configures it.

axolotl replaces transformers, TRL, datasets and pydantic with its own pins, so it lives in a
separate virtual environment; this script has two halves that run in the two environments:

    # 1. here: a tokenizer (tiny, trained on the data, a tool-aware ChatML template), the hf export,
    #    and our own token ids and labels for it (what `agentflan data tokenize --template hf` writes)
    PYTHONPATH=src python bench/axolotl_load.py prepare OUT --data ../shared/data
    # 2. axolotl's environment (python3 -m venv /work/venv-axolotl; pip install axolotl)
    /work/venv-axolotl/bin/python bench/axolotl_load.py load OUT

`load` prints, for every record written: whether axolotl kept it, whether its `input_ids` equal
ours and how many of its trained tokens (labels != -100) equal ours, and exits 1 if any record was
lost or has no trained token.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# ChatML that knows tools; prefix-preserving, so our HF template can mask it exactly (the template
# of tests/unit/test_peers.py without TRL's generation markers, and `m['tool_calls']` where that
# has `m.get('tool_calls')`: axolotl passes a message only the fields it finds the template
# reading, and it does not see a `.get`)
TOOL_CHATML = (
    "{%- if tools %}<|im_start|>system\n{% if messages and messages[0]['role'] == 'system' %}"
    "{{ messages[0]['content'] }}\n{% endif %}Tools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{%- for m in messages %}"
    "{%- if m['role'] == 'system' and tools and loop.first %}"
    "{%- elif m['role'] == 'assistant' %}<|im_start|>assistant\n{{ m['content'] }}"
    "{%- for c in m['tool_calls'] or [] %}<tool_call>{{ {'name': c['function']['name'], "
    "'arguments': c['function']['arguments']} | tojson }}</tool_call>{% endfor %}<|im_end|>\n"
    "{%- else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}"
    "{%- endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def prepare(out: Path, data: Path) -> None:
    from agentflan.formats.protocols import training_texts
    from agentflan.formats.templates import HFTemplate
    from agentflan.io import WRITERS, read
    from agentflan.training.export import export_tokenized
    from agentflan.training.models import tiny_model, tiny_tokenizer

    trajs = []
    for rel, fmt in [("llamafactory/glaive_toolcall_en_demo.json", "sharegpt"),
                     ("llamafactory/reason_tool_use_demo_50.jsonl", "openai"), ("toolbench/answer", "toolbench")]:
        trajs += list(read(str(data / rel), fmt))[:20]
    tok = tiny_tokenizer(training_texts(trajs, limit=len(trajs)))
    tok.chat_template = TOOL_CHATML
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(out / "tok")
    tiny_model(len(tok)).config.save_pretrained(out / "tok")  # axolotl reads the model's config first
    report = WRITERS.get("hf")().write(trajs, out / "train.hf.jsonl")
    ours = export_tokenized(trajs, out / "ours.jsonl", HFTemplate(tok), tok)
    print(f"hf export: {report.written} written, unwritable {dict(report.unwritable)}; tokenized: {ours.written}")


def load(out: Path) -> int:
    from axolotl.utils.config import normalize_config, validate_config
    from axolotl.utils.data import prepare_datasets
    from axolotl.utils.dict import DictDefault
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out / "tok")
    cfg = validate_config(DictDefault({
        "base_model": str(out / "tok"), "tokenizer_config": str(out / "tok"),
        "datasets": [{"path": str(out / "train.hf.jsonl"), "ds_type": "json", "type": "chat_template",
                      "field_messages": "messages", "field_tools": "tools",
                      "message_field_training": "train", "chat_template": "tokenizer_default",
                      "train_on_eot": "turn",  # the turn's end trained after a trained turn, as ours
                      # every field a message has: axolotl otherwise passes only those it sees the template read
                      "message_property_mappings": {"role": "role", "content": "content", "tool_calls": "tool_calls",
                                                    "tool_call_id": "tool_call_id", "name": "name"}}],
        "eot_tokens": ["<|im_end|>"],  # axolotl reads this one from the top level, not the dataset's entry
        "chat_template": "tokenizer_default", "sequence_len": 1_000_000, "sample_packing": False,
        "dataset_prepared_path": str(out / "axolotl-prepared"), "output_dir": str(out / "axolotl-out"),
        "micro_batch_size": 1, "gradient_accumulation_steps": 1, "num_epochs": 1, "learning_rate": 1e-4,
        "val_set_size": 0, "dataset_processes": 1, "shuffle_merged_datasets": False,
    }))
    normalize_config(cfg)
    train, _, _, _ = prepare_datasets(cfg, tok)
    ours = [json.loads(line) for line in (out / "ours.jsonl").read_text().splitlines()]
    written = sum(1 for _ in (out / "train.hf.jsonl").open())
    same_ids = same_labels = trained = 0
    shown = 0
    for theirs, mine in zip(train, ours, strict=False):
        trained += any(x != -100 for x in theirs["labels"])
        same_ids += list(theirs["input_ids"]) == mine["input_ids"]
        same_labels += list(theirs["labels"]) == mine["labels"]
        for key in ("input_ids", "labels"):
            a, b = list(theirs[key]), mine[key]
            if a != b and shown < 4:  # where the first few differ, decoded
                shown += 1
                k = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
                ids = mine["input_ids"]
                print(f"{mine['id']} {key}: lengths {len(a)} (axolotl) {len(b)} (ours), first difference at {k}: "
                      f"axolotl {a[k:k + 6]} ours {b[k:k + 6]}; text there {tok.decode(ids[max(0, k - 8):k + 8])!r}")
    print(json.dumps({"written": written, "axolotl_rows": len(train), "rows_with_trained_tokens": trained,
                      "input_ids_equal_ours": same_ids, "labels_equal_ours": same_labels}, indent=2))
    return 0 if len(train) == written == trained else 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["prepare", "load"])
    ap.add_argument("out", type=Path)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    args = ap.parse_args()
    if args.step == "prepare":
        prepare(args.out, args.data)
    else:
        sys.exit(load(args.out))


if __name__ == "__main__":
    main()
