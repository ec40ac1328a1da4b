"""`agentflan demo`: does the recipe work? Two arms trained on the same episodes, evaluated beside the
untrained model, one report.

1. **episodes**: the executable environments (`toolapi`, `db`) generate training tasks and their
   scripted experts solve them; only verified episodes are kept;
2. **data**: the same episodes built into two datasets: the **Agent-FLAN** arm (`builtin` recipe:
   aligned to chat, decomposed and balanced, format-following samples, negatives) and the
   **AgentTuning** arm (`builtin-agenttuning`: each episode in its original agent format);
3. **training**: the same model, steps, batch and sequence length on each arm;
4. **evaluation**: the untrained model and both arms on held-out environment tasks, each arm in the
   protocols it was trained with (the untrained model in all of them), and on the Agent-H suite;
5. **report**: `report.md` and `report.html` with charts, re-scored from the logs as `agentflan
   score` does.

Every stage is resumable and skipped when done with the same settings (`.stages/<stage>.json`
records what it was run with): `make demo` run twice does no work twice, an interrupted run goes
on where it stopped (training from its last checkpoint, evaluation from its last logged episode).
`--model tiny` runs the same pipeline on a random two-layer model in seconds (a smoke test: there
is no pretrained base to compare against, so the untrained row is left out).

`demo(DemoConfig(...))` is the whole workflow; `agentflan demo` only parses its options.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from agentflan.errors import ConfigError, RunFailed
from agentflan.io.files import write_atomic

ARMS = {"agent-flan": "builtin", "agenttuning": "builtin-agenttuning"}


def demo_envs() -> tuple[str, ...]:
    """The environments the demo synthesizes episodes of and evaluates on: every registered one."""
    from agentflan.envs import env_names

    return tuple(env_names(ordered=True))


@dataclass(frozen=True)
class Preset:
    """How the demo trains and evaluates one model family."""

    train_recipe: str
    steps: int
    train_tasks: int
    eval_tasks: int
    agent_h_items: int
    max_new_tokens: int
    batch_size: int
    base: str | None  # the untrained model to evaluate (None: nothing pretrained to compare)
    dtype: str = "float32"
    overrides: tuple[str, ...] = ()


PRESETS = {
    # SmolLM2-135M-Instruct, fully fine-tuned: on 2 CPU cores it learns more in the time than LoRA
    # (docs/results.md). 20 steps of 2 x 1024 tokens, ~7 minutes an arm on 2 idle cores; evaluation
    # costs about a second of CPU per 100 prompt tokens (tool lists make prompts ~1,000 tokens), so
    # 12 tasks per environment and 12 Agent-H items per style keep the demo within 30 minutes. For
    # tighter error bars: --eval-tasks 100 (or bench/reproduce.py).
    "smollm2": Preset(train_recipe="smollm2-135m-full", steps=20, train_tasks=300, eval_tasks=12,
                      agent_h_items=12, max_new_tokens=96, batch_size=16, base="gguf:smollm2-135m-instruct",
                      dtype="bfloat16"),
    "tiny": Preset(train_recipe="tiny-cpu-smoke", steps=6, train_tasks=24, eval_tasks=3, agent_h_items=8,
                   max_new_tokens=12, batch_size=8, base=None),
}


@dataclass
class Demo:
    out: Path
    preset: Preset
    arms: dict[str, str]  # arm name -> data recipe
    model: str
    steps: int
    eval_tasks: int
    agent_h_items: int
    device: str
    seed: int
    train_tasks: int = 0  # 0: the preset's
    with_base: bool = True
    suites: tuple[str, ...] = ()  # single-action suites played beside the environments and Agent-H: steps, bfcl
    echo: Callable[[str], None] = field(default=print)
    times: dict[str, float] = field(default_factory=dict)

    def stage(self, name: str, key: dict[str, Any], work: Callable[[], Any]) -> Any:
        """Run `work` unless the stage was done with the same `key`; its result is kept in the stamp."""
        stamp = self.out / ".stages" / f"{name}.json"
        if stamp.exists():
            done = json.loads(stamp.read_text())
            if done.get("key") == key:
                self.echo(f"   {name}: done before ({done['seconds']:.0f} s), skipped")
                self.times[name] = done["seconds"]
                return done.get("result")
        start = time.perf_counter()
        result = work()
        seconds = round(time.perf_counter() - start, 1)
        self.times[name] = seconds
        stamp.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(stamp, json.dumps({"key": key, "seconds": seconds, "result": result}, indent=1, default=str) + "\n")
        return result


def _episodes(d: Demo, n: int) -> dict[str, Any]:
    from agentflan.envs.synth import synth

    out = {}
    for env in demo_envs():
        r = synth(env, n, "train", d.out / "env", seed=d.seed)
        d.echo(f"   {env}: {r.written}/{r.tasks} verified ({', '.join(f'{k} {v}' for k, v in sorted(r.kinds.items()))})")
        out[env] = {"written": r.written, "tasks": r.tasks, "kinds": dict(r.kinds)}
        if not r.written:
            raise RunFailed(f"the {env} expert solved none of its {r.tasks} tasks")
    return out


def _data(d: Demo, arm: str) -> dict[str, Any]:
    from agentflan.pipeline.build import build
    from agentflan.pipeline.recipe import load_recipe

    recipe, resolved = load_recipe(d.arms[arm], [f"vars.env_dir={d.out / 'env'}"])
    result = build(recipe, resolved, d.out / "data" / arm, echo=lambda s: d.echo(f"   {s}"))
    return {"outputs": {n: o.get("records") for n, o in result.stats["outputs"].items()},
            "description": recipe.description,
            "train": str(d.out / "data" / arm / "native" / "train.jsonl")}


def _train(d: Demo, arm: str) -> dict[str, Any]:
    from agentflan.training.sft import load_train_recipe, run

    run_dir = d.out / "runs" / arm
    overrides = [f"data.paths=[{d.out / 'data' / arm / 'native' / 'train.jsonl'}]", f"output_dir={run_dir}",
                 f"trl.max_steps={d.steps}", f"trl.save_steps={max(1, d.steps // 4)}", "trl.save_strategy=steps",
                 "trl.save_total_limit=1", f"trl.logging_steps={max(1, min(5, d.steps // 8))}",
                 f"trl.seed={d.seed}", f"data_recipe={d.arms[arm]}", "resume=true", *d.preset.overrides]
    if d.device != "cpu":
        overrides += list(GPU_TRAIN_OVERRIDES)
    metrics = run(load_train_recipe(d.preset.train_recipe, overrides))
    losses = [h["loss"] for h in metrics["log_history"] if "loss" in h]
    data = metrics["data"]
    d.echo(f"   {arm}: {data['samples']} samples, {data['trained_tokens']:,} trained tokens; "
           f"loss {losses[0]:.3f} -> {losses[-1]:.3f}; {metrics['tokens_per_second']:.0f} tokens/s")
    return {"model": str(metrics.get("merged") or run_dir / "final")}


def _protocols(model_dir: str) -> dict[str, list[str]]:
    """The protocol an arm is played in per environment: its most trained one, except that db is
    played in AgentBench's own dialect when the arm was trained on it (the held-in task's exact
    prompt, as the paper evaluates it)."""
    from agentflan.models.info import ModelInfo

    info = ModelInfo.load(model_dir)
    out = {}
    for env in demo_envs():
        trained = info.episode_protocols(env)
        out[env] = ["agentinstruct:db"] if env == "db" and "agentinstruct:db" in trained else trained[:1]
    return out


GPU_EVAL_BATCH = 128  # prompts per generate call on a GPU: a held-out set of 100 tasks steps in lockstep
GPU_TRAIN_OVERRIDES = ("trl.use_cpu=false", "trl.bf16=true", "trl.per_device_train_batch_size=16")


def _evaluate(d: Demo, name: str, model: str, protocols: dict[str, list[str]]) -> dict[str, Any]:
    from agentflan.eval.evaluate import EvalConfig, evaluate
    from agentflan.models.engines import HFEngine

    config = EvalConfig(suites=(*demo_envs(), "agent-h", *d.suites), model=model, policy="model", count=d.eval_tasks,
                        split="heldout", seed=d.seed, max_steps=8, output=d.out / "eval" / name, resume=True,
                        max_new_tokens=d.preset.max_new_tokens, run_name=name, suite_protocols=dict(protocols),
                        suite_counts={"agent-h": d.agent_h_items})
    engine = HFEngine(model, batch_size=d.preset.batch_size if d.device == "cpu" else GPU_EVAL_BATCH,
                      max_new_tokens=d.preset.max_new_tokens, device=d.device,
                      dtype=d.preset.dtype if d.device == "cpu" else "bfloat16")
    code = evaluate(config, engine, echo=d.echo, warn=d.echo).exit_code
    if code:
        raise RunFailed(f"evaluation of {name} ended with errors (exit {code}); run the demo again")
    return {"protocols": protocols}


def _model_dir(spec: str) -> str:
    from agentflan.training.models import ModelConfig, resolve

    return resolve(ModelConfig(name_or_path=spec))


def datasets(d: Demo) -> tuple[dict[str, Any], dict[str, Any]]:
    """Stages 1 and 2: the verified episodes, and each arm's dataset built from them."""
    n = d.train_tasks or d.preset.train_tasks
    d.echo(f"== 1. expert episodes in the executable environments ({n} training tasks each, verified)")
    episodes = d.stage("episodes", {"n": n, "seed": d.seed}, lambda: _episodes(d, n))
    d.echo(f"== 2. the arms' datasets from the same episodes ({', '.join(f'{a}: {r}' for a, r in d.arms.items())})")
    data = {arm: d.stage(f"data-{arm}", {"recipe": recipe, "episodes": episodes}, partial(_data, d, arm))
            for arm, recipe in d.arms.items()}
    return episodes, data


def run_demo(d: Demo) -> tuple[Path, Path]:
    """The whole demo (see the module doc); returns the report's Markdown and HTML paths."""
    from agentflan.eval.report import Arm, write_report
    from agentflan.eval.suites import paired, rescore_logs

    p = d.preset
    total = time.perf_counter()
    episodes, data = datasets(d)
    d.echo(f"== 3. training {d.model} for {d.steps} steps on each arm ({p.train_recipe})")
    from agentflan.training.sft import load_train_recipe

    recipe = load_train_recipe(p.train_recipe).model_dump(mode="json")  # an edited recipe trains again
    models = {}
    for arm in d.arms:
        key = {"recipe": p.train_recipe, "config": recipe, "steps": d.steps, "data": data[arm], "device": d.device, "seed": d.seed,
               "overrides": list(p.overrides)}
        models[arm] = d.stage(f"train-{arm}", key, partial(_train, d, arm))["model"]
    arm_protocols = {arm: _protocols(models[arm]) for arm in d.arms}
    evals = dict(models)
    if p.base and d.with_base:
        evals = {"base": _model_dir(p.base), **models}
    d.echo(f"== 4. evaluation on held-out tasks ({d.eval_tasks} per environment and protocol) and Agent-H "
           f"({d.agent_h_items} items per style)")
    for name, model in evals.items():
        protos = arm_protocols.get(name) or {env: sorted({x for a in arm_protocols.values() for x in a[env]})
                                              for env in demo_envs()}
        key = {"model": model, "protocols": protos, "n": d.eval_tasks, "agent_h": d.agent_h_items, "seed": d.seed,
               **({"suites": list(d.suites)} if d.suites else {}),
               "max_new_tokens": p.max_new_tokens, "device": d.device,
               "trained": d.out.joinpath(".stages", f"train-{name}.json").read_text() if name in models else None}
        d.echo(f"   {name}: " + "; ".join(f"{env} in {', '.join(ps)}" for env, ps in protos.items()))
        d.stage(f"eval-{name}", key, partial(_evaluate, d, name, model, protos))
    d.echo("== 5. report (re-scored from the logs)")
    from agentflan.eval.runlog import find_logs

    scored, mismatches = rescore_logs(find_logs(tuple(d.out / "eval" / n for n in evals)), warn=d.echo)
    summaries = [s.summary for s in scored]
    if mismatches:
        raise RunFailed(f"{mismatches} logged verdict(s) differ from the re-scored ones (see above)")
    order = {n: i for i, n in enumerate(evals)}
    summaries.sort(key=lambda s: (order.get(str(s.get("run")), 99), str(s.get("env") or s.get("suite")),
                                  str(s.get("protocol"))))
    arms = [Arm(arm, json.loads((d.out / "runs" / arm / "metrics.json").read_text()), data[arm]) for arm in d.arms]
    d.times["this run, total"] = round(time.perf_counter() - total, 1)
    names = list(d.arms)
    heads = [(names[i], names[j]) for i in range(len(names)) for j in range(i + 1, len(names))]
    pairs = [*heads, *((a, "base") for a in names if "base" in evals)]
    rows = paired(scored, pairs=pairs)
    write_atomic(d.out / "paired.json", json.dumps([r.to_json() for r in rows], indent=1) + "\n")
    return write_report(d.out, title=f"agentflan demo: {' vs '.join(d.arms)} on {d.model}",
                        intro=_intro(d, data), summaries=summaries, arms=arms, sections=_sections(d, episodes, data, evals),
                        paired_rows=rows, headline_pairs=heads)


def _intro(d: Demo, data: dict[str, Any]) -> str:
    arms = "\n".join(f"- **{arm}** (recipe `{d.arms[arm]}`): {' '.join(str(info.get('description', '')).split())}"
                     for arm, info in data.items())
    return (f"The same {d.train_tasks or d.preset.train_tasks} verified expert episodes per environment (`toolapi`: ToolBench-style "
            "tool use; `db`: AgentBench-style SQL) were built into one training set per arm:\n\n"
            f"{arms}\n\n`{d.model}` was trained {d.steps} steps on each with the same settings and "
            f"evaluated{' beside the untrained model' if d.preset.base else ''} on held-out tasks the training never "
            "saw, each arm in the protocols it was trained with"
            f"{' (the untrained model in all of them)' if d.preset.base else ''}. Every number below is re-derived from the evaluation logs; "
            f"`agentflan score {d.out / 'eval'}` prints the same. Every model played the same {d.eval_tasks} held-out tasks "
            "per environment and the same Agent-H items, so the models are compared item by item (paired, below); "
            "rates in the other tables are ± one standard error.")


def _sections(d: Demo, episodes: dict[str, Any], data: dict[str, Any], evals: dict[str, str]) -> list[tuple[str, str]]:
    cfg = {k: v for k, v in asdict(d.preset).items() if k != "overrides"}
    data_rows = "\n".join(f"| {arm} | " + ", ".join(f"`{o}` {n}" for o, n in info["outputs"].items()) + " |"
                          for arm, info in data.items())
    times = "\n".join(f"| {k} | {v:.0f} |" for k, v in d.times.items())
    out = d.out
    commands = f"""```
agentflan score {out / 'eval'}                      # the numbers above, from the logs
agentflan env play toolapi --policy local --model {evals.get('agent-flan', '')} --index 0   # watch an episode
agentflan eval toolapi db agent-h --model {evals.get('agent-flan', '')} -n 100   # more tasks, every trained protocol
agentflan serve {evals.get('agent-flan', '')}       # an OpenAI-compatible endpoint
agentflan data build agent-flan -o out/agent-flan vars.data_dir=../shared/data   # the paper's recipe on real data
agentflan train smollm2-135m-full 'data.paths=[out/agent-flan/native/train.jsonl]'
make demo DEMO_ARGS="--steps 200 --eval-tasks 100"   # longer training, tighter error bars
```"""
    return [
        ("Setup", "Episodes: " + ", ".join(f"{e} {v['written']}/{v['tasks']}" for e, v in episodes.items())
         + f".\n\n| arm | records per output |\n|---|---|\n{data_rows}\n\n"
         f"Preset `{d.model}`: `{json.dumps(cfg)}`; steps {d.steps}, device {d.device}, seed {d.seed}. "
         f"Models evaluated: " + ", ".join(f"{n} (`{m}`)" for n, m in evals.items()) + "."),
        ("Time per stage (seconds)", f"| stage | seconds |\n|---|---|\n{times}"),
        ("Go further", commands),
    ]


@dataclass(frozen=True)
class DemoConfig:
    """One `agentflan demo` (see its help): None takes the preset's value."""

    output: Path = Path("out/demo")
    model: str = "smollm2"
    """A preset (`PRESETS`): `smollm2`, or `tiny` (a random two-layer model, a smoke test)."""
    steps: int | None = None
    eval_tasks: int | None = None
    train_tasks: int | None = None
    with_base: bool = True
    agent_h_items: int | None = None
    device: str = "cpu"
    seed: int = 0
    arms: tuple[str, ...] = ()
    """`[NAME=]RECIPE` specs (default: `ARMS`)."""
    suites: tuple[str, ...] = ()
    no_train: bool = False
    """Stop after the datasets (no torch needed)."""


def demo(config: DemoConfig, echo: Callable[[str], None] = print) -> tuple[Path, Path] | Path:
    """The whole demo (see the module doc): the report's Markdown and HTML paths, or with `no_train`
    the datasets' folder."""
    if config.model not in PRESETS:
        raise ConfigError(f"unknown demo model {config.model!r} (known: {', '.join(sorted(PRESETS))})")
    preset = PRESETS[config.model]
    arms = (dict(spec.partition("=")[::2] if "=" in spec else (spec, spec) for spec in config.arms) or dict(ARMS))
    if len(arms) != len(config.arms or ARMS) or "base" in arms:
        raise ConfigError("--arm names must be distinct and not `base`")
    d = Demo(config.output, preset, arms, config.model, config.steps or preset.steps,
             config.eval_tasks or preset.eval_tasks, config.agent_h_items or preset.agent_h_items, config.device,
             config.seed, train_tasks=config.train_tasks or 0, with_base=config.with_base,
             suites=tuple(dict.fromkeys(config.suites)), echo=echo)
    if config.no_train:
        datasets(d)
        return config.output / "data"
    return run_demo(d)
