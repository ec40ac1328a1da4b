"""One registry for every named kind: entry point plugins (a real dist-info on a temporary
`sys.path` entry), name clashes and broken plugins, CLI choices from the registries, and a new
reader, protocol and environment each added from this module alone and used end to end."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import click
import pytest
from click.testing import CliRunner

from agentflan.cli.choices import RegistryChoice
from agentflan.cli.main import cli
from agentflan.envs import ENVIRONMENTS, EnvInfo, get_env
from agentflan.envs.base import (
    FINISH,
    Environment,
    Expert,
    ExpertPolicy,
    Task,
    Verdict,
    play,
    run_episode,
    system_prompt,
    user,
)
from agentflan.errors import ConfigError
from agentflan.formats.protocols import (
    PROTOCOLS,
    Action,
    Completion,
    Prompt,
    TextProtocol,
    get_protocol,
    protocol_names,
)
from agentflan.formats.templates import TEMPLATES, AgentFlanTemplate, get_template
from agentflan.io import READERS, WRITERS, read
from agentflan.pipeline.base import STEPS
from agentflan.pipeline.executor import EXECUTORS, LocalExecutor, make_executor
from agentflan.registry import Registry
from agentflan.schema import AssistantMessage, Message, SystemMessage, ToolCall, ToolMessage, ToolSpec, Trajectory

REGISTRIES: list[Registry[Any]] = [READERS, WRITERS, STEPS, PROTOCOLS, TEMPLATES, ENVIRONMENTS, EXECUTORS]


# ---- a plugin distribution, installed for real on a temporary sys.path entry ------------------------------

def install_plugin(root: Path, dist: str, entry_points: dict[str, dict[str, str]], modules: dict[str, str]) -> None:
    """Write `<dist>-0.1.dist-info` (METADATA, entry_points.txt) and the plugin's modules under `root`."""
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{name} = {value}\n" for name, value in eps.items()) + "\n"
        for group, eps in entry_points.items()), encoding="utf-8")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")


@pytest.fixture
def plugin_root(tmp_path: Path) -> Iterator[Path]:
    """A folder on sys.path for plugin distributions; afterwards the registries forget them."""
    root = tmp_path / "site"
    root.mkdir()
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    try:
        yield root
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m.startswith("toyplug")]:
            del sys.modules[name]
        for registry in REGISTRIES:
            registry.reload_plugins()


TOY_READER = '''
from typing import Any, ClassVar

from agentflan.io.base import Reader, RecordContext, require_key
from agentflan.schema.trajectory import trajectory_from_dict


class ToyReader(Reader):
    """One question and one answer per line: {"q": ..., "a": ...}."""

    name: ClassVar[str] = "toy"

    def parse(self, record: Any, ctx: RecordContext):
        q = require_key(record, "q", str)
        a = require_key(record, "a", str)
        return trajectory_from_dict({
            "id": ctx.default_id(), "source": ctx.source_dict(None), "lineage": ["read:toy"],
            "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
'''


def test_registry_names_order_unknown_and_unregister() -> None:
    reg: Registry[int] = Registry("widget", group="agentflan.test_widgets_none")
    reg.register("zeta", 1, "the last")
    reg.register("alpha", "json:dumps")
    assert reg.names() == ["alpha", "zeta"] and reg.names(ordered=True) == ["zeta", "alpha"]
    assert reg.get("zeta") == 1 and reg.get("alpha") is json.dumps and reg.doc("zeta") == "the last"
    assert reg.origin("zeta") is None
    with pytest.raises(ConfigError, match="already registered"):
        reg.register("zeta", 2)
    with pytest.raises(ConfigError, match=r"unknown widget 'zta' \(known: alpha, zeta\); did you mean zeta\?"):
        reg.get("zta")
    with pytest.raises(ValueError, match="did you mean alpha"):
        reg.known("alpah")
    reg.unregister("zeta")
    assert "zeta" not in reg and reg.names() == ["alpha"]


def test_importing_the_cli_reads_no_entry_points() -> None:
    """Entry points are read on a registry's first use: `agentflan --version` costs no scan."""
    import subprocess

    code = ("import agentflan.cli.main\n"
            "from agentflan.envs import ENVIRONMENTS\nfrom agentflan.formats.protocols import PROTOCOLS\n"
            "from agentflan.formats.templates import TEMPLATES\nfrom agentflan.io import READERS, WRITERS\n"
            "from agentflan.pipeline.base import STEPS\nfrom agentflan.pipeline.executor import EXECUTORS\n"
            "print([r._discovered for r in (READERS, WRITERS, STEPS, PROTOCOLS, TEMPLATES, ENVIRONMENTS, EXECUTORS)])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[0] == str([False] * 7)


def test_entry_point_reader_converts_through_the_cli(plugin_root: Path, tmp_path: Path) -> None:
    assert "toy" not in READERS.names()
    install_plugin(plugin_root, "toyplug_reader", {"agentflan.readers": {"toy": "toyplug_reader_mod:ToyReader"}},
                   {"toyplug_reader_mod": TOY_READER})
    assert "toy" not in READERS.names()  # entry points are read once
    READERS.reload_plugins()
    assert "toy" in READERS.names()
    origin = READERS.origin("toy")
    assert origin is not None and origin.distribution == "toyplug_reader" and origin.version == "0.1"
    assert READERS.doc("toy") == "from toyplug_reader 0.1" and READERS.origin("native") is None
    assert "toyplug_reader_mod" not in sys.modules  # listing imports nothing

    src = tmp_path / "qa.jsonl"
    src.write_text('{"q": "2+2?", "a": "4"}\n{"q": "capital of France?", "a": "Paris"}\n', encoding="utf-8")
    out = tmp_path / "out.jsonl"
    res = CliRunner().invoke(cli, ["data", "convert", str(src), "--from", "toy", "-o", str(out)])
    assert res.exit_code == 0, res.output
    trajs = list(read(str(out), "native"))
    assert [t.messages[1].content for t in trajs] == ["4", "Paris"]
    assert trajs[0].lineage == ["read:toy"]
    help_text = CliRunner().invoke(cli, ["data", "convert", "--help"]).output
    assert "toy" in help_text.split("--from")[1].split("]")[0]


def test_plugin_may_not_take_a_built_in_name(plugin_root: Path, tmp_path: Path) -> None:
    install_plugin(plugin_root, "toyplug_clash", {"agentflan.readers": {"native": "toyplug_clash_mod:ToyReader"}},
                   {"toyplug_clash_mod": TOY_READER})
    READERS.reload_plugins()
    with pytest.raises(ConfigError, match=r"plugin toyplug_clash 0\.1 \(entry point native = toyplug_clash_mod:"
                                          r"ToyReader in agentflan\.readers\) registers the reader 'native', which "
                                          r"is built in"):
        READERS.get("native")
    # through the CLI: the one-line error of the boundary, exit 4 (configuration), no traceback
    res = CliRunner().invoke(cli, ["data", "convert", str(tmp_path / "x.jsonl"), "--from", "native", "-o",
                                   str(tmp_path / "o.jsonl")])
    assert res.exit_code == 4, res.output
    assert "registers the reader 'native', which is built in" in res.output and "Traceback" not in res.output


def test_two_plugins_may_not_take_one_name(plugin_root: Path) -> None:
    for dist in ("toyplug_a", "toyplug_b"):
        install_plugin(plugin_root, dist, {"agentflan.templates": {"same": f"{dist}_mod:T"}}, {})
    TEMPLATES.reload_plugins()
    with pytest.raises(ConfigError, match=r"plugin toyplug_b 0\.1 .* registers the template 'same', which "
                                          r"plugin toyplug_a 0\.1 .* registers too"):
        TEMPLATES.names()


def test_broken_plugins_are_config_errors_naming_them(plugin_root: Path) -> None:
    install_plugin(plugin_root, "toyplug_broken", {
        "agentflan.readers": {"crash": "toyplug_broken_mod:Reader", "notareader": "toyplug_broken_ok:NotAReader"},
        "agentflan.protocols": {"gone": "toyplug_missing_mod:P"},
    }, {"toyplug_broken_mod": "raise RuntimeError('boom at import')\n",
        "toyplug_broken_ok": "class NotAReader:\n    pass\n"})
    READERS.reload_plugins()
    PROTOCOLS.reload_plugins()
    with pytest.raises(ConfigError, match=r"reader 'crash': plugin toyplug_broken 0\.1 \(entry point crash = "
                                          r"toyplug_broken_mod:Reader in agentflan\.readers\) failed to load: "
                                          r"RuntimeError: boom at import"):
        READERS.get("crash")
    with pytest.raises(ConfigError, match=r"reader 'notareader': plugin toyplug_broken .* is not usable: .*not a "
                                          r"subclass of agentflan\.io\.base\.Reader"):
        READERS.get("notareader")
    with pytest.raises(ConfigError, match=r"protocol 'gone': plugin toyplug_broken .*ModuleNotFoundError"):
        get_protocol("gone")
    assert READERS.get("native").name == "native"  # the others still work
    assert "gone" in protocol_names()


# ---- CLI choices and config fields come from the registries -----------------------------------------------

def _choice_params(group: click.Group, path: str = "agentflan") -> Iterator[tuple[str, click.Parameter]]:
    for name, cmd in sorted(group.commands.items()):
        where = f"{path} {name}"
        if isinstance(cmd, click.Group):
            yield from _choice_params(cmd, where)
        for param in cmd.params:
            if isinstance(param.type, click.Choice):
                yield f"{where} {param.name}", param


def check_choices(group: click.Group) -> list[str]:
    """Every Choice that lists registered names must be the registry's own (a `RegistryChoice`).
    (`--engine auto|hf|openai|vllm` shares two names with the writers but lists engines.)"""
    problems = []
    for where, param in _choice_params(group):
        choices = {str(c) for c in param.type.choices}  # type: ignore[attr-defined]
        if isinstance(param.type, RegistryChoice):
            if choices != set(param.type.registry.names()):
                problems.append(f"{where}: {sorted(choices)} is not the {param.type.registry.kind} registry")
            continue
        for registry in REGISTRIES:  # a hand-written list: two or more registered names and nothing else
            if len(choices) >= 2 and choices <= set(registry.names()):
                problems.append(f"{where}: lists {registry.kind} names by hand: {sorted(choices)}")
    return problems


def test_cli_choices_are_the_registries() -> None:
    assert check_choices(cli) == []
    walked = {where for where, _ in _choice_params(cli)}
    assert {"agentflan data convert fmt", "agentflan data convert to", "agentflan data tokenize template",
            "agentflan data inspect template"} <= walked


def test_cli_choice_check_catches_a_hand_written_list() -> None:
    @click.group()
    def g() -> None:
        pass

    @g.command("x")
    @click.option("--template", type=click.Choice(["agentflan", "llama2", "hf"]))
    @click.option("--from", "fmt", type=RegistryChoice(READERS))
    def x(template: str, fmt: str) -> None:
        pass

    assert check_choices(g) == ["agentflan x template: lists template names by hand: ['agentflan', 'hf', 'llama2']"]


class ToyTemplate(AgentFlanTemplate):
    name: ClassVar[str] = "toytemplate"
    jinja: ClassVar[str | None] = "{{ messages }}"


def test_registered_names_reach_choices_and_listings() -> None:
    from agentflan.formats.jinja import jinja_for

    TEMPLATES.register("toytemplate", ToyTemplate)
    try:
        res = CliRunner().invoke(cli, ["data", "tokenize", "--help"])
        assert "[agentflan|llama2|hf|toytemplate]" in res.output  # built-ins in their order, then the new one
        assert check_choices(cli) == []
        # what training saves with the tokenizer is the template's own attribute
        assert jinja_for("toytemplate") == "{{ messages }}" and jinja_for("hf") is None
    finally:
        TEMPLATES.unregister("toytemplate")
    res = CliRunner().invoke(cli, ["eval", "--list-protocols"])
    assert res.output.split() == PROTOCOLS.names()


def test_config_names_are_checked_against_the_registries() -> None:
    from agentflan.pipeline.recipe import DataRecipe
    from agentflan.training.sft import DataConfig

    assert DataConfig(paths=["x"], template="llama2").template == "llama2"
    with pytest.raises(ValueError, match=r"unknown template 'lama2' .*did you mean llama2"):
        DataConfig(paths=["x"], template="lama2")
    from agentflan.pipeline.steps.decontaminate import DecontaminateConfig

    assert DecontaminateConfig(envs=["db"]).envs == ["db"]
    with pytest.raises(ValueError, match=r"unknown environment 'tollapi' .*did you mean toolapi"):
        DecontaminateConfig(envs=["tollapi"])
    base = {"name": "r", "sources": {}, "outputs": {}}
    assert DataRecipe.model_validate({**base, "executor": "ray"}).executor == "ray"
    with pytest.raises(ValueError, match=r"unknown executor 'rey' .*did you mean ray"):
        DataRecipe.model_validate({**base, "executor": "rey"})


def test_executors_and_templates_come_from_their_registries() -> None:
    assert EXECUTORS.names() == ["local", "ray"] and TEMPLATES.names(ordered=True) == ["agentflan", "llama2", "hf"]
    with make_executor("local", 1) as ex:
        assert isinstance(ex, LocalExecutor) and ex.map(abs, [-1, 2]) == [1, 2]
    with pytest.raises(ConfigError, match=r"unknown executor 'lokal'.*did you mean local"):
        make_executor("lokal", 1)
    with pytest.raises(ConfigError, match=r"unknown template 'agentflna'.*did you mean agentflan"):
        get_template("agentflna")
    assert not get_template("llama2").tool_aware and TEMPLATES.get("hf").tool_aware


def test_protocol_traits_are_attributes() -> None:
    """What was read from protocol names is an attribute of the protocol."""
    style = {n: get_protocol(n).reply_style for n in protocol_names()}
    assert {n for n, s in style.items() if s == "react"} == {
        "react", "json", "react:random", "json:random", "toolllama", *(n for n in style if n.startswith("agentinstruct:"))}
    assert get_protocol('react:{"action_key": "Tool"}').reply_style == "react"
    assert not get_protocol("fireact").fits("toolapi") and not get_protocol("source").fits(None)
    db = get_protocol("agentinstruct:db")
    assert db.fits("db") and not db.fits("toolapi") and db.fits(None)
    assert get_protocol("tflan").fits("db") and get_protocol("native").task is None
    assert not get_protocol("instruct:json").fits(None)  # single steps: no episode
    negatives = {n for n in protocol_names() if get_protocol(n).renders_negatives}
    assert not negatives & {"toolllama", "fireact", "source", "agentinstruct:db"} and "tflan" in negatives


# ---- a new protocol from this module, rendering and reading a trajectory -----------------------------------

class ToyProtocol(TextProtocol):
    """Calls as `CALL name {json}` lines, the answer as `ANSWER text`, results as user turns."""

    name = "toy"
    stops = ("\nRESULT",)

    def render(self, traj: Trajectory, key: str = "") -> list[Message]:
        final = traj.tags.get("final_tool")
        out: list[Message] = []
        for m in traj.messages:
            if isinstance(m, AssistantMessage) and m.tool_calls:
                c = m.tool_calls[0]
                text = (f"ANSWER {c.arguments.get('final_answer', '')}" if c.name == final
                        else f"CALL {c.name} {json.dumps(c.arguments, sort_keys=True)}")
                out.append(AssistantMessage(content=text, loss=m.loss))
            elif isinstance(m, ToolMessage):
                out.append(SystemMessage(content=f"RESULT {m.content}"))
            else:
                out.append(m)
        return out

    def parse(self, text: str, traj: Trajectory, key: str = "") -> Action:
        head, _, rest = text.strip().partition(" ")
        if head == "ANSWER":
            return Action("answer", answer=rest)
        name, _, args = rest.partition(" ")
        if head != "CALL" or not name:
            return Action("unparseable", error="neither CALL nor ANSWER")
        return Action("call", calls=[ToolCall(id="call_0", name=name, arguments=json.loads(args or "{}"))])


# ---- a new environment from this module ---------------------------------------------------------------------

ADD = ToolSpec(name="add", description="Add two integers.", parameters={
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]})


class AddEnvironment(Environment):
    """Sum two numbers with the `add` tool, then answer."""

    name: ClassVar[str] = "toyadd"

    def reset(self, task: Task) -> list[Message]:
        return [system_prompt(), user(task.query)]

    def step(self, call: ToolCall) -> ToolMessage:
        if call.name != "add":
            return self.observation(call, {"error": f"no tool {call.name}"}, self.max_observation_chars)
        return self.observation(call, {"sum": call.arguments["a"] + call.arguments["b"]}, self.max_observation_chars)

    def verify(self, task: Task, final_answer: str | None, transcript: list[Message]) -> Verdict:
        ok = final_answer is not None and final_answer.strip() == str(task.expected["sum"])
        return Verdict(ok, "correct" if ok else f"expected {task.expected['sum']}, got {final_answer!r}")


def add_tasks(n: int, split: str, seed: int) -> list[Task]:
    base = 100 if split == "heldout" else 0
    return [Task(id=f"toyadd-{split}-{seed}-{i}", env="toyadd", split=split, kind="single",  # type: ignore[arg-type]
                 query=f"What is {base + i} plus {seed + 2 * i}?", tools=[ADD],
                 data={"a": base + i, "b": seed + 2 * i}, expected={"sum": base + i + seed + 2 * i})
            for i in range(n)]


def add_expert(task: Task) -> Expert:
    obs = yield AssistantMessage(content="I add them.", tool_calls=[
        ToolCall(id="call_0", name="add", arguments={"a": task.data["a"], "b": task.data["b"]})])
    total = json.loads(obs.content)["sum"] if obs is not None else None
    yield AssistantMessage(content="", tool_calls=[ToolCall(id="call_1", name=FINISH, arguments={
        "return_type": "give_answer", "final_answer": str(total)})])


TOY_ENV = EnvInfo("toyadd", "add two numbers (a test environment)", AddEnvironment, add_tasks, add_expert, ())


@pytest.fixture
def toy_components() -> Iterator[None]:
    """The toy protocol and environment, registered as a newcomer would: one line each."""
    PROTOCOLS.register("toy", ToyProtocol, "test protocol")
    ENVIRONMENTS.register("toyadd", TOY_ENV)
    try:
        yield
    finally:
        PROTOCOLS.unregister("toy")
        ENVIRONMENTS.unregister("toyadd")


def test_toy_protocol_renders_and_reads_back_an_episode(toy_components: None) -> None:
    proto = get_protocol("toy")
    assert "toy" in protocol_names() and proto.name == "toy" and proto.reply_style == "general"
    info = get_env("toolapi")
    task = info.generate(3, "heldout", 0)[2]
    traj = run_episode(info.make(), task, ExpertPolicy(info.expert(task))).trajectory
    rendered = proto.render(traj)
    # every assistant turn, read back by the protocol from the rendered prefix, is the expert's action
    for i, m in enumerate(traj.messages):
        if not isinstance(m, AssistantMessage):
            continue
        prefix = traj.model_copy(update={"messages": traj.messages[:i]})
        gen = proto.act(prefix)
        prompt = next(gen)
        assert isinstance(prompt, Prompt) and prompt.stop == ("\nRESULT",)
        with pytest.raises(StopIteration) as stop:
            gen.send(Completion(text=rendered[i].content))
        action: Action = stop.value.value
        if m.tool_calls[0].name == traj.tags["final_tool"]:
            assert action.kind == "answer" and action.answer == m.tool_calls[0].arguments["final_answer"]
        else:
            assert action.kind == "call" and [(c.name, c.arguments) for c in action.calls] == [
                (c.name, c.arguments) for c in m.tool_calls]


def test_toy_environment_played_in_the_toy_protocol(toy_components: None) -> None:
    """A model's replies in the new protocol, in the new environment: the episode succeeds."""
    task = get_env("toyadd").generate(2, "heldout", 7)[1]
    gen = play(get_env("toyadd").make(), task, get_protocol("toy"))
    replies = iter([f"CALL add {json.dumps({'a': task.data['a'], 'b': task.data['b']})}",
                    f"ANSWER {task.expected['sum']}"])
    try:
        prompt = next(gen)
        while True:
            assert isinstance(prompt, Prompt)
            prompt = gen.send(Completion(text=next(replies)))
    except StopIteration as stop:
        episode = stop.value
    assert episode.verdict is not None and episode.verdict.success, episode.verdict
    assert episode.steps == 2


def test_toy_environment_through_the_cli(toy_components: None, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["env", "list"])
    assert res.exit_code == 0 and "toyadd: add two numbers" in res.output
    res = runner.invoke(cli, ["env", "play", "toyadd", "--index", "1"])
    assert res.exit_code == 0, res.output
    assert "== SUCCESS: correct" in res.output
    res = runner.invoke(cli, ["env", "synth", "toyadd", "-n", "3", "-o", str(tmp_path / "env")])
    assert res.exit_code == 0, res.output
    written = list(read(str(tmp_path / "env" / "toyadd" / "train" / "native.jsonl"), "native"))
    assert len(written) == 3 and written[0].source.format == "env:toyadd"
    out = tmp_path / "eval"
    res = runner.invoke(cli, ["eval", "toyadd", "--policy", "expert", "-n", "2", "-o", str(out)])
    assert res.exit_code == 0, res.output
    records = [json.loads(line) for line in next(out.rglob("episodes.jsonl")).read_text().splitlines()]
    assert [r["verdict"]["success"] for r in records] == [True, True] and records[0]["env"] == "toyadd"
    res = runner.invoke(cli, ["env", "play", "toyad"])
    assert res.exit_code == 4 and "did you mean toyadd" in res.output


def test_entry_point_environment_and_protocol(plugin_root: Path) -> None:
    """The third-party path for an environment and a protocol: one module, two entry points."""
    install_plugin(plugin_root, "toyplug_env", {
        "agentflan.environments": {"plugadd": "toyplug_env_mod:make_env"},
        "agentflan.protocols": {"toy": "toyplug_env_mod:ToyProtocol"},
    }, {"toyplug_env_mod": """
        import dataclasses

        from tests.unit.test_registry import TOY_ENV, ToyProtocol


        def make_env():
            return dataclasses.replace(TOY_ENV, name="plugadd", description="adds, from a plugin")
        """})
    ENVIRONMENTS.reload_plugins()
    PROTOCOLS.reload_plugins()
    runner = CliRunner()
    assert "plugadd: adds, from a plugin" in runner.invoke(cli, ["env", "list"]).output
    assert "toy" in runner.invoke(cli, ["eval", "--list-protocols"]).output.split()
    res = runner.invoke(cli, ["env", "play", "plugadd"])
    assert res.exit_code == 0 and "== SUCCESS: correct" in res.output, res.output
    assert get_protocol("toy").name == "toy" and ENVIRONMENTS.origin("plugadd").distribution == "toyplug_env"  # type: ignore[union-attr]
