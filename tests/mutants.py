"""A hand-written mutation pass over the code whose mistakes pass silently: loss masks, packing,
record accounting, verdicts and resume. Each mutant is one small edit a plausible bug would make;
it is applied to a copy of `src/` (the checkout is never touched), the tests that should catch it
run against the copy, and the first failing test is recorded. A mutant that no test catches is a
gap: docs/reliability.md lists the results.

Run from the repository root (a few minutes; CPU-heavy tests, so `nice`):

    PYTHONPATH=src nice -n 10 python -m tests.mutants [NAME ...]
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    area: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    """pytest arguments: the tests that should catch it."""


MUTANTS = [
    # ---- loss masks -------------------------------------------------------------------------------
    Mutant("llama2-last-of-consecutive", "mask", "formats/templates.py",
           "segs.append((m.content.strip(), m.loss))",
           "segs.append((m.content.strip(), m.loss and k == len(group) - 1))", ("tests/unit/test_masks.py",)),
    Mutant("llama2-eos-untrained", "mask", "formats/templates.py",
           'segs.append((" </s>", last.loss))', 'segs.append((" </s>", False))', ("tests/unit/test_masks.py",)),
    Mutant("agentflan-every-turn-trained", "mask", "formats/templates.py",
           "(m.content + STOP, m.loss)", "(m.content + STOP, True)", ("tests/unit/test_masks.py",)),
    Mutant("encode-trains-everything", "mask", "training/masking.py",
           "            if is_trained:\n                labels += piece",
           "            if True:\n                labels += piece", ("tests/unit/test_masks.py",)),
    Mutant("truncation-keeps-stale-count", "mask", "training/masking.py",
           "            trained = len(labels) - labels.count(IGNORE)", "            pass",
           ("tests/unit/test_training.py", "tests/unit/test_tokenize.py")),
    # ---- packing ----------------------------------------------------------------------------------
    Mutant("pack-trains-first-token", "packing", "training/packing.py",
           'labels += [-100, *s["labels"][1:]]', 'labels += s["labels"]', ("tests/unit/test_training.py",)),
    Mutant("pack-positions-continue", "packing", "training/packing.py",
           'pos += list(range(len(s["input_ids"])))', 'pos += list(range(len(pos), len(pos) + len(s["input_ids"])))',
           ("tests/unit/test_training.py",)),
    Mutant("pack-never-shares-rows", "packing", "training/packing.py",
           "k = bisect.bisect_left(free, (n, -1))", "k = len(free)", ("tests/unit/test_training.py",)),
    Mutant("pack-overfills", "packing", "training/packing.py",
           "k = bisect.bisect_left(free, (n, -1))", "k = 0 if free else 0", ("tests/unit/test_training.py",)),
    Mutant("collator-no-block-mask", "packing", "training/collator.py",
           "mask[r, 0, start:start + sl, start:start + sl] = causal[:sl, :sl]",
           "mask[r, 0, start:start + sl, :start + sl] = True", ("tests/unit/test_training.py",)),
    Mutant("collator-positions-not-restarted", "packing", "training/collator.py",
           "pos[r, start:start + sl] = torch.arange(sl)", "pos[r, start:start + sl] = torch.arange(start, start + sl)",
           ("tests/unit/test_training.py",)),
    # ---- accounting -------------------------------------------------------------------------------
    Mutant("skipped-not-counted", "accounting", "io/base.py",
           "        else:\n            self.report.skipped += 1", "        else:\n            pass",
           ("tests/unit/test_io.py", "tests/unit/test_bad_input.py", "tests/unit/test_hostile_input.py")),
    Mutant("dropped-not-counted", "accounting", "io/base.py",
           "self.report.dropped[d.reason] += 1", "pass",
           ("tests/unit/test_io.py", "tests/unit/test_bad_input.py")),
    Mutant("quarantined-counted-as-skipped", "accounting", "io/base.py",
           "            self.report.quarantined += 1", "            self.report.skipped += 1",
           ("tests/unit/test_io.py", "tests/unit/test_bad_input.py")),
    Mutant("balance-ignores-dropped", "accounting", "io/base.py",
           "self.skipped + sum(self.dropped.values())", "self.skipped",
           ("tests/unit/test_io.py", "tests/unit/test_bad_input.py")),
    # ---- verdicts ---------------------------------------------------------------------------------
    Mutant("db-numbers-exact", "verdict", "envs/db.py",
           "            return _close(x, y)\n        return a == b", "            return x == y\n        return a == b",
           ("tests/unit/test_db_agentbench.py", "tests/unit/test_envs.py")),
    Mutant("db-case-insensitive", "verdict", "envs/db.py",
           "            return _close(x, y)\n        return a == b", "            return _close(x, y)\n        return a.lower() == b.lower()",
           ("tests/unit/test_db_agentbench.py", "tests/unit/test_envs.py")),
    Mutant("toolapi-empty-answer-ok", "verdict", "envs/toolapi.py",
           'return Verdict(False, "no final answer")', 'pass', ("tests/unit/test_envs.py", "tests/unit/test_eval.py")),
    Mutant("toolapi-inventory-unchecked", "verdict", "envs/toolapi.py",
           "            if inv != state:", "            if False:", ("tests/unit/test_envs.py", "tests/unit/test_eval.py")),
    Mutant("errors-scored-as-failures", "verdict", "eval/score.py",
           'scored = [r for r in records if r.get("error") is None and r.get("verdict") is not None]',
           'scored = [r for r in records if r.get("verdict") is not None or r.get("error") is not None]',
           ("tests/unit/test_eval.py",)),
    # ---- resume -----------------------------------------------------------------------------------
    Mutant("resume-keeps-errored-episodes", "resume", "eval/runlog.py",
           'done = {r["task_id"]: r for r in read_log(log_path) if r.get("error") is None}',
           'done = {r["task_id"]: r for r in read_log(log_path)}', ("tests/unit/test_eval.py",)),
    Mutant("resume-ignores-config", "resume", "eval/runlog.py",
           'if {k: v for k, v in old.items() if k != "engine"} != {k: v for k, v in config.items() if k != "engine"}:',
           "if False:", ("tests/unit/test_eval.py",)),
    Mutant("log-tail-not-repaired", "resume", "eval/runlog.py",
           "    repair_tail(log_path)  # a cut last line", "    pass  # a cut last line",
           ("tests/unit/test_log_recovery.py",)),
    Mutant("log-cut-line-kept", "resume", "jsonlog.py",
           "        f.truncate(pos)", "        pass", ("tests/unit/test_log_recovery.py",)),
    Mutant("build-stage-done-ignores-fingerprint", "resume", "pipeline/build.py",
           "return marker.exists() and marker.read_text().strip() == fingerprint", "return marker.exists()",
           ("tests/unit/test_build.py", "-k", "resume or crash or changed_recipe")),
    Mutant("cache-key-ignores-body", "resume", "client.py",
           'blob = json.dumps({"url": self.url, "body": body}, sort_keys=True, ensure_ascii=False)',
           'blob = json.dumps({"url": self.url}, sort_keys=True, ensure_ascii=False)',
           ("tests/unit/test_eval.py", "tests/unit/test_log_recovery.py")),
]


def run(mutant: Mutant, work: Path) -> tuple[str, str]:
    """(status, the first failing test or why not) of one mutant, on a fresh copy of src/."""
    src = work / "src"
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(ROOT / "src", src)
    path = src / "agentflan" / mutant.file
    text = path.read_text(encoding="utf-8")
    if text.count(mutant.old) != 1:
        return "not applied", f"{mutant.old!r} occurs {text.count(mutant.old)} times in {mutant.file}"
    path.write_text(text.replace(mutant.old, mutant.new), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{ROOT}", "HF_HUB_OFFLINE": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HOME": str(work / "hf")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "--no-header",
                           "-rf", *mutant.tests], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    failed = re.findall(r"^FAILED (\S+)", proc.stdout, re.M)
    if proc.returncode == 0:
        return "SURVIVED", " ".join(mutant.tests)
    if failed:
        return "caught", failed[0]
    return "error", proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-200:]


def main(names: list[str]) -> int:
    chosen = [m for m in MUTANTS if not names or m.name in names]
    rows = []
    with tempfile.TemporaryDirectory(prefix="agentflan-mutants-") as tmp:
        for m in chosen:
            status, where = run(m, Path(tmp))
            rows.append((m, status, where))
            print(f"{m.area:10} {m.name:40} {status:12} {where}", flush=True)
    print("\n| area | mutant | result | caught by |\n|---|---|---|---|")
    for m, status, where in rows:
        print(f"| {m.area} | `{m.name}` | {status} | `{where}` |")
    survived = [m.name for m, status, _ in rows if status != "caught"]
    print(f"\n{len(rows) - len(survived)} of {len(rows)} caught" + (f"; not caught: {', '.join(survived)}" if survived
                                                                  else ""))
    return 1 if survived else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
