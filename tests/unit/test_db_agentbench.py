"""AgentBench's DB rules: table build, table hash, SELECT scoring; the optional MariaDB engine.

The scoring cases below were derived from AgentBench's `DBResultProcessor` (its FC release) and
checked against it with `bench/agentbench_db.py --agentbench-src` (5383 of 5387 generated
variants agree; the 4 others are the documented `eval` difference, last case here).
"""

from __future__ import annotations

import hashlib
import json
import random
import time

import pytest

from agentflan.envs import get_env, run_episode
from agentflan.envs.base import ExpertPolicy, Task
from agentflan.envs.db import (
    DBEnvironment,
    SQLiteEngine,
    agentbench_hash,
    answers_match,
    clean_answer,
    task_from_agentbench,
)
from agentflan.envs.mysql import MySQLEngine
from agentflan.errors import AgentflanError
from agentflan.schema import AssistantMessage, ToolCall, Trajectory

# (answer, label, AgentBench's verdict)
CASES = [
    (["Paris"], ["Paris"], True),
    (["paris"], ["Paris"], False),  # case-sensitive
    ("['Paris']", ["Paris"], True),  # a printed list is parsed
    ("[('Paris',)]", ["Paris"], True),  # a printed MySQL result too
    ("Paris", ["Paris"], True),  # a bare string is one value
    ("'Paris'", ["Paris"], True),  # quotes stripped
    ([" Paris "], ["Paris"], True),
    (["b", "a", "a"], ["a", "b"], True),  # text lists compare as sets: order and duplicates ignored
    (["a"], ["a", "b"], False),
    (["1", "1", "2"], ["1", "2"], False),  # number lists compare as multisets: duplicates count
    (["2", "1"], ["1", "2"], True),  # ... not order
    (["3.004"], ["3"], True),  # within 0.01
    (["3.02"], ["3"], False),
    (["3.000", "4.009"], ["4", "3"], True),
    (["7"], ["7.0"], True),
    (["45%"], ["45"], True),  # % stripped
    (["45 %"], ["45"], True),
    (["1,234"], ["1234"], True),  # thousands separators removed
    (["1,234%"], ["1234"], False),  # a value ending in % keeps its commas
    ([None], ["none"], True),  # None, none, null, nan, inf, "" are all "0"
    ("", ["0"], True),
    (["NaN"], ["null"], True),
    (None, ["0"], True),
    (["0"], ["none"], True),
    ([], ["none"], False),  # an empty answer is no value
    ("[]", ["none"], False),
    ([("x",)], ["x"], True),  # one-value tuples unwrapped
    ("['unterminated", ["'unterminated"], False),
    ("[a, 'b, c']", ["a", "b, c"], True),  # a bracketed answer that does not parse is split outside quotes
    ("[1+1]", ["2"], False),  # AgentBench evals this (True); we never evaluate model output
]


@pytest.mark.parametrize(("answer", "label", "expected"), CASES)
def test_select_scoring_follows_agentbench(answer, label, expected):
    assert answers_match(answer, label) is expected


def test_clean_answer_forms():
    assert clean_answer("[('a',), ('b', 'c'), (3,)]") == ["a", "3"]  # multi-value rows are skipped, as AgentBench does
    assert clean_answer(42) == ["42"] and clean_answer(["1,000", "50%"]) == ["1000", "50"]


def _task(rows, columns=("A", "B"), kind="select", **expected):
    return Task(id="t", env="db", kind=kind, query="q", expected=expected,
                data={"table": {"name": "T", "columns": [{"name": c, "type": "INT"} for c in columns], "rows": rows}})


def test_table_is_built_all_text_with_str_values():
    env = DBEnvironment()
    env.reset(_task([[1, 2.5], [None, True]]))
    obs = env.step(ToolCall(id="c", name="operation", arguments={"sql": "SELECT typeof(A), A, B FROM T"}))
    assert obs.content == "[('text', '1', '2.5'), ('text', 'None', 'True')]"
    env.close()


def test_agentbench_hash_matches_mysql_semantics():
    assert agentbench_hash([]) == "[(None,)]"  # md5(group_concat()) of no rows is NULL
    row_hash = hashlib.md5(b"a,c").hexdigest()[:5]  # CONCAT_WS skips NULLs
    assert agentbench_hash([("a", None, "c")]) == str([(hashlib.md5(row_hash.encode()).hexdigest(),)])
    many = [(str(i),) for i in range(400)]  # group_concat_max_len 1024: only the first ~170 hashes count
    hashes = sorted(hashlib.md5(str(i).encode()).hexdigest()[:5] for i in range(400))
    assert agentbench_hash(many) == str([(hashlib.md5(",".join(hashes)[:1024].encode()).hexdigest(),)])


@pytest.mark.parametrize(("columns", "rows", "reason"), [
    (("A", "a"), [["1", "2"]], "duplicate column name"),
    (("A", "B"), [["1"]], "row 0 has 1 values for 2 columns"),
])
def test_a_table_that_cannot_be_built_fails_the_episode_with_a_reason(columns, rows, reason):
    task = _task(rows, columns, label=["1"])
    env = DBEnvironment()
    env.reset(task)
    obs = env.step(ToolCall(id="c", name="operation", arguments={"sql": "SELECT 1"}))
    assert "could not be built" in obs.content and reason in obs.content
    transcript = [AssistantMessage(tool_calls=[ToolCall(id="a", name="answer", arguments={"answer": ["1"]})])]
    verdict = env.verify(task, '["1"]', transcript)
    assert not verdict.success and reason in verdict.reason
    env.close()


def test_verify_scores_the_submitted_value_as_agentbench_takes_it():
    task = _task([["x", "1"]], label=["1", "2"])
    env = DBEnvironment()
    env.reset(task)
    answer = lambda value: [AssistantMessage(tool_calls=[  # noqa: E731
        ToolCall(id="a", name="answer", arguments={"answer": value})])]
    assert env.verify(task, None, answer(["2", "1.001"])).success
    assert env.verify(task, None, answer("[2, 1]")).success
    assert not env.verify(task, None, answer(["1"])).success
    assert not env.verify(task, None, [AssistantMessage(tool_calls=[ToolCall(id="a", name="answer")])]).success
    text_reply = env.verify(task, "[1, 2]", [AssistantMessage(content="[1, 2]")])
    assert not text_reply.success and "text reply is not scored" in text_reply.reason
    env.close()


# ---- the MariaDB engine (slow: starts a server) --------------------------------------------------

def _mariadb():
    pytest.importorskip("pymysql", reason="pip install 'agentflan[mysql]'")
    from agentflan.envs.mysql import MariaDBServer, server_binaries

    if server_binaries() is None:
        pytest.skip("no MariaDB server on this machine (apt-get install mariadb-server)")
    return MariaDBServer


@pytest.fixture(scope="module")
def dev(shared_data):
    lines = (shared_data / "agentbench/dbbench/dev.jsonl").read_text().splitlines()
    return [task_from_agentbench(json.loads(line), i) for i, line in enumerate(lines)]


@pytest.mark.slow
def test_mariadb_reproduces_every_dev_answer_md5(dev):
    _mariadb()
    expert = get_env("db").expert
    mods = [t for t in dev if t.kind != "select"]
    results = [run_episode(DBEnvironment("mysql"), t, ExpertPolicy(expert(t))).verdict for t in mods]
    assert [v.reason for v in results if not v.success] == [] and len(mods) == 40


@pytest.mark.slow
def test_mariadb_refuses_what_agentbench_mysql_refuses(dev):
    _mariadb()
    empty_header = dev[5]  # a column named "" (MySQL refuses it; SQLite accepts it)
    assert "" in [c["name"] for c in empty_header.data["table"]["columns"]]
    env = DBEnvironment("mysql")
    env.reset(empty_header)
    verdict = env.verify(empty_header, '["17"]', [])
    assert not verdict.success and "could not be built" in verdict.reason and "column name" in verdict.reason.lower()
    env.close()


@pytest.mark.slow
def test_mariadb_and_sqlite_hash_the_same_tables():
    server = _mariadb()
    from agentflan.envs.mysql import MySQLEngine

    rng = random.Random(0)
    for n in (0, 1, 30, 400):
        table = {"name": "T % x", "columns": [{"name": c} for c in ("a", "b c", "Ünï")],
                 "rows": [[rng.choice(["x", "é", "", "1.50", None, 7]) for _ in range(3)] for _ in range(n)]}
        lite, maria = SQLiteEngine(), MySQLEngine(server.shared())
        for e in (lite, maria):
            e.build(table)
        cols = [c["name"] for c in table["columns"]]
        assert lite.table_hash("T % x", cols) == maria.table_hash("T % x", cols), n
        lite.close()
        maria.close()


@pytest.mark.slow
@pytest.mark.parametrize(("sql", "fragment"), [
    ("SELECT LOAD_FILE('/etc/passwd')", "[(None,)]"),  # no FILE privilege: NULL
    ("SELECT * FROM mysql.user", "denied"),
    ("SELECT 'x' INTO OUTFILE '/tmp/agentflan-x'", "denied"),
    ("SET GLOBAL max_connections = 1", "denied"),
    ("SELECT 1; DROP TABLE T", "syntax"),  # one statement per call
    ("SELECT SLEEP(5) FROM T", "max_statement_time"),
    ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000) SELECT x FROM c",
     "only the first 100 rows"),
])
def test_mariadb_contains_hostile_sql(sql, fragment):
    _mariadb()
    env = DBEnvironment("mysql")
    env.reset(_task([["1", "2"]], label=["1"]))
    obs = env.step(ToolCall(id="h", name="operation", arguments={"sql": sql}))
    assert fragment in obs.content, obs.content
    env.close()


@pytest.mark.slow
def test_mariadb_server_is_private_and_removed_when_stopped():
    server_cls = _mariadb()
    with server_cls() as server:
        assert server.dir is not None and server.running
        folder = server.dir
        assert (folder / "mysqld.sock").exists()
        with server.connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT @@skip_networking, @@group_concat_max_len, @@sql_mode")
            networking_off, max_len, mode = cur.fetchone()
        assert networking_off == 1 and max_len == 1024 and "STRICT_TRANS_TABLES" in mode
    assert not server.running and not folder.exists()


# ---- an agent that drops or renames the task's table: a 0, never a crash --------------------------

VANDAL_SQL = ["DROP TABLE `{t}`", "ALTER TABLE `{t}` RENAME TO `gone`", "ALTER TABLE `{t}` RENAME COLUMN `{c}` TO `x`"]


def _vandal(task: Task, sql: str):
    """An agent that runs `sql` on the task's table, then answers."""
    table = task.data["table"]
    yield AssistantMessage(content="I break the table.", tool_calls=[ToolCall(
        id="c0", name="operation", arguments={"sql": sql.format(t=table["name"], c=table["columns"][0]["name"])})])
    yield AssistantMessage(content="Done.", tool_calls=[ToolCall(id="c1", name="answer", arguments={"answer": []})])


def _modification_tasks() -> list[Task]:
    tasks = [t for t in get_env("db").generate(10, "train", 0) if t.kind != "select"]
    assert {t.kind for t in tasks} == {"insert", "update"}
    return tasks


@pytest.mark.parametrize("sql", VANDAL_SQL)
def test_a_dropped_or_renamed_table_scores_zero(sql):
    task = _modification_tasks()[0]
    ep = run_episode(DBEnvironment(), task, ExpertPolicy(_vandal(task, sql)))
    assert ep.error is None and ep.verdict is not None and not ep.verdict.success
    assert "cannot be hashed" in ep.verdict.reason, ep.verdict.reason


def test_a_dropped_table_scores_zero_in_eval_score_and_env_play(tmp_path):
    from click.testing import CliRunner

    from agentflan.cli.main import cli
    from agentflan.eval.envs import read_log, rescore, run_env

    tasks = _modification_tasks()
    run = run_env("db", tasks, lambda t: ExpertPolicy(_vandal(t, VANDAL_SQL[tasks.index(t) % 3])), None,
                  tmp_path / "run", protocol_name="native", agent_name="vandal", config={})
    records = read_log(tmp_path / "run" / "episodes.jsonl")
    assert len(records) == len(tasks) and run.summary["scored"] == len(tasks)
    assert all(r["verdict"] == {"success": False, "reason": r["verdict"]["reason"]} for r in records)
    assert all("cannot be hashed" in r["verdict"]["reason"] for r in records)
    assert all(rescore(r)["success"] is False and rescore(r)["observations_match"] for r in records)
    runner = CliRunner()
    res = runner.invoke(cli, ["score", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    index = int(tasks[0].id.rsplit("-", 1)[1])  # env play takes task `index` and record `index` of the file
    replay = tmp_path / "vandal.jsonl"
    replay.write_text((json.dumps(Trajectory.model_validate(records[0]["transcript"]).to_json_dict()) + "\n")
                      * (index + 1))
    res = runner.invoke(cli, ["env", "play", "db", "--policy", "replay", "--replay", str(replay),
                              "--index", str(index)])
    assert res.exit_code == 0 and "== FAILURE" in res.output and "cannot be hashed" in res.output, res.output


# ---- MySQL on the embedded engine: the four kinds of AgentBench task SQLite used to get wrong ----------

def _engine(name: str, columns: list[str], rows: list[list[str]]) -> SQLiteEngine:
    engine = SQLiteEngine()
    engine.build({"name": name, "columns": [{"name": c} for c in columns], "rows": rows})
    return engine


def _run(engine, sql: str):
    res = engine.execute(sql, 100, 2.0)
    assert res.error is None, (sql, res.error)
    return res.rows


def test_sqlite_reads_mysql_backslash_escapes():  # standard.jsonl 164, 242
    engine = _engine("Local Authorities", ["Name", "Former"], [["Formby", "x"]])
    _run(engine, r"INSERT INTO `Local Authorities` (`Name`, `Former`) VALUES ('Formby Range', 'Formby\nUrban\'s')")
    assert _run(engine, "SELECT `Former` FROM `Local Authorities` WHERE `Name` = 'Formby Range'") == [("Formby\nUrban's",)]
    assert engine.table_hash("Local Authorities", ["Name", "Former"]) == agentbench_hash(
        [("Formby", "x"), ("Formby Range", "Formby\nUrban's")])
    assert _run(engine, 'SELECT "double-quoted string", `Name` FROM `Local Authorities` LIMIT 1') == [
        ("double-quoted string", "Formby")]
    unknown = engine.execute("SELECT `Nme` FROM `Local Authorities`", 10, 2.0)  # a name, never a string
    assert unknown.error is not None and "no such column" in unknown.error


def test_sqlite_reads_names_that_start_with_a_digit():  # standard.jsonl 180
    engine = _engine("1952_British_Grand_Prix_0", ["Pos", "No", "Driver"], [["1", "15", "Alberto Ascari"]])
    _run(engine, "INSERT INTO 1952_British_Grand_Prix_0 (Pos, No, Driver) VALUES (22, 2, 'Tony Gaze');")
    assert _run(engine, "SELECT Driver FROM 1952_British_Grand_Prix_0 WHERE Pos = 22") == [("Tony Gaze",)]


def test_sqlite_compares_text_as_mysql_does_case_and_accent_insensitively():  # standard.jsonl 206
    engine = _engine("Airports", ["Rank", "Airport"], [["17", "Montréal-Pierre Elliott Trudeau"], ["3", "Zürich"],
                                                       ["5", "straße"], ["9", "Bergen "]])
    _run(engine, "UPDATE `Airports` SET `Rank` = '19' WHERE `Airport` = 'Montreal-Pierre Elliott Trudeau'")
    assert _run(engine, "SELECT `Rank` FROM `Airports` WHERE `Airport` LIKE 'montreal%'") == [("19",)]
    assert _run(engine, "SELECT `Rank` FROM `Airports` WHERE `Airport` IN ('ZURICH', 'STRASSE') ORDER BY `Rank`") == [
        ("3",), ("5",)]
    assert _run(engine, "SELECT `Rank` FROM `Airports` WHERE `Airport` = 'Bergen'") == []  # no padding, as 0900_ai_ci
    assert _run(engine, r"SELECT COUNT(*) FROM `Airports` WHERE `Airport` LIKE '%\_%' OR `Airport` REGEXP '^ZÜR'") == [
        (1,)]
    assert _run(engine, "SELECT `Airport` FROM `Airports` ORDER BY `Airport` LIMIT 2") == [
        ("Bergen ",), ("Montréal-Pierre Elliott Trudeau",)]


def test_sqlite_compares_text_with_numbers_as_doubles_without_strict_mode():  # standard.jsonl 278, 295
    engine = _engine("Grand Prix", ["No", "Driver"], [["?", "a"], ["16", "b"], ["16.0", "c"], ["7", "d"]])
    _run(engine, "UPDATE `Grand Prix` SET `Driver` = 'Charles Leclerc' WHERE `No` = 16;")
    assert _run(engine, "SELECT `No` FROM `Grand Prix` WHERE `Driver` = 'charles leclerc'") == [("16",), ("16.0",)]
    assert _run(engine, "SELECT COUNT(*) FROM `Grand Prix` WHERE `No` > 10") == [(2,)]  # as text, '7' > '10'
    assert _run(engine, "SELECT COUNT(*) FROM `Grand Prix` WHERE `No` IN (0, 7) OR `No` BETWEEN 15 AND 16") == [(4,)]
    assert _run(engine, "SELECT 7 / 2, 7 DIV 2") == [(3.5, 3)]


# ---- the MariaDB sandbox: each hole has a test (these start a server: about 2 s) -------------------

def _mysql_env(rows=(("1", "2"),)) -> DBEnvironment:
    _mariadb()
    env = DBEnvironment("mysql")
    env.reset(_task([list(r) for r in rows], label=["1"]))
    return env


def _sql(env: DBEnvironment, sql: str) -> str:
    return env.step(ToolCall(id="s", name="operation", arguments={"sql": sql})).content


@pytest.mark.parametrize("sql", ["SET STATEMENT max_statement_time=0 FOR SELECT SLEEP(6) FROM T",
                                 "SET STATEMENT max_statement_time=0 FOR SELECT BENCHMARK(10000000000, MD5('x'))"])
def test_mariadb_time_limit_cannot_be_lifted(sql):
    env = _mysql_env()
    t0 = time.monotonic()
    out = _sql(env, sql)
    assert time.monotonic() - t0 < env.time_limit_s + 3 and "time limit" in out, out
    assert _sql(env, "SELECT COUNT(*) FROM T") == "[(1,)]"  # the kill reached that statement only
    assert "max_statement_time" in _sql(env, "SET SESSION max_statement_time = 0") + _sql(env, "SELECT SLEEP(6)")
    env.close()


def test_mariadb_reconnects_after_a_lost_connection():
    env = _mysql_env()
    assert "connection lost" in _sql(env, "KILL CONNECTION_ID()")
    for _ in range(2):
        assert _sql(env, "SELECT COUNT(*) FROM T") == "[(1,)]"
    assert "STRICT_TRANS_TABLES" in _sql(env, "SELECT @@sql_mode")
    env.close()


def test_mariadb_episode_cannot_create_databases_or_reach_other_episodes():
    env, other = _mysql_env(), _mysql_env()
    assert isinstance(env.engine, MySQLEngine) and isinstance(other.engine, MySQLEngine)
    mine, theirs = env.engine.database, other.engine.database
    for name in ("scratch", mine.replace("_", "X"), theirs + "x"):  # `_` would be a wildcard in a grant
        assert "denied" in _sql(env, f"CREATE DATABASE `{name}`"), name
    assert "denied" in _sql(env, f"SELECT * FROM `{theirs}`.T")
    assert "denied" in _sql(env, f"DROP TABLE `{theirs}`.T")
    assert sorted(_sql(env, "SHOW DATABASES").strip('[]').split(', ')) == [f"('{mine}',)", "('information_schema',)"]
    assert _sql(other, "SELECT COUNT(*) FROM T") == "[(1,)]"
    env.close()
    other.close()


def test_mariadb_plays_many_episodes_at_once_on_one_connection_each():
    """A lockstep run keeps up to 4 x the batch size episodes live (64 at batch 16): each holds its
    agent's connection only (the server allowed 64 connections and each episode held two: `eval db
    --db-engine mysql -n 60` stopped with 'Too many connections')."""
    envs = [_mysql_env(rows=((str(i), "2"),)) for i in range(100)]
    server = envs[0].engine.server  # type: ignore[union-attr]
    with server.connect() as conn, conn.cursor() as cur:
        cur.execute("SHOW STATUS LIKE 'Threads_connected'")
        connected = int(cur.fetchone()[1])
    assert connected <= 100 + 1, connected  # the agents' and this one
    assert [_sql(e, "SELECT A FROM T") for e in envs] == [f"[('{i}',)]" for i in range(100)]
    for e in envs:
        e.close()


def test_mariadb_out_of_connections_is_a_clear_error(monkeypatch):
    import agentflan.envs.mysql as mysql

    server_cls = _mariadb()
    monkeypatch.setattr(mysql, "MAX_CONNECTIONS", 10)  # MariaDB's least
    with server_cls() as server:
        engines = []
        with pytest.raises(AgentflanError, match=r"refused a connection: 10 are open, one per episode in play; play "
                                                 r"fewer episodes at once \(a smaller --batch-size\)"):
            for _ in range(20):
                engines.append(MySQLEngine(server=server))
        assert 5 <= len(engines) <= 10
        for e in engines:
            e.close()


def _database_dropper():
    """An agent that asks which database it is in, then drops it."""
    obs = yield AssistantMessage(tool_calls=[ToolCall(id="c0", name="operation", arguments={"sql": "SELECT DATABASE()"})])
    name = obs.content.split("'")[1]
    yield AssistantMessage(tool_calls=[ToolCall(id="c1", name="operation", arguments={"sql": f"DROP DATABASE `{name}`"})])
    yield AssistantMessage(tool_calls=[ToolCall(id="c2", name="answer", arguments={"answer": []})])


@pytest.mark.parametrize("sql", [*VANDAL_SQL, "DROP DATABASE"])
def test_mariadb_a_dropped_or_renamed_table_scores_zero(sql):
    _mariadb()
    task = _modification_tasks()[0]
    agent = _database_dropper() if sql == "DROP DATABASE" else _vandal(task, sql)
    ep = run_episode(DBEnvironment("mysql"), task, ExpertPolicy(agent))
    assert ep.error is None and ep.verdict is not None and not ep.verdict.success
    assert "cannot be hashed" in ep.verdict.reason, ep.verdict.reason


def _names_shower():
    """An agent whose observations name its database and user: an error, then SELECT DATABASE()."""
    yield AssistantMessage(tool_calls=[ToolCall(id="c0", name="operation", arguments={"sql": "SELECT * FROM nowhere"})])
    yield AssistantMessage(tool_calls=[ToolCall(id="c1", name="operation", arguments={
        "sql": "SELECT DATABASE(), CURRENT_USER()"})])
    yield AssistantMessage(tool_calls=[ToolCall(id="c2", name="answer", arguments={"answer": ["x"]})])


def test_mariadb_episodes_see_the_same_names_in_every_run_and_in_score(tmp_path):
    """What the agent sees does not depend on the process: a task's database and user are named after
    the task (`SELECT DATABASE()` and error messages are the same in `score`'s replay); episodes of
    one task live at once get names of their own."""
    from click.testing import CliRunner

    from agentflan.cli.main import cli
    from agentflan.eval.envs import read_log, run_env

    _mariadb()
    tasks = _modification_tasks()[:3]
    for out in ("a", "b"):
        run_env("db", tasks, lambda t: ExpertPolicy(_names_shower()), None, tmp_path / out, protocol_name="native",
                agent_name="n", config={}, db_engine="mysql")
    a, b = (read_log(tmp_path / out / "episodes.jsonl") for out in ("a", "b"))
    seen = [m["content"] for r in a for m in r["transcript"]["messages"] if m["role"] == "tool"]
    assert any("doesn't exist" in s and "dbbench_" in s for s in seen) and any("ep_" in s for s in seen), seen
    assert [r["transcript"] for r in a] == [r["transcript"] for r in b]
    res = CliRunner().invoke(cli, ["score", str(tmp_path / "a")])
    assert res.exit_code == 0 and "differ" not in res.output, res.output
    envs = [_mysql_env() for _ in range(3)]  # one task three times at once (a GRPO group)
    names = [_sql(e, "SELECT DATABASE()") for e in envs]
    assert len(set(names)) == 3 and names[0].endswith("_0',)]"), names
    for e in envs:
        e.close()


# ---- the expert derives its queries on the episode's engine, in MySQL ------------------------------

def _aggregation_task() -> Task:
    rows = [["Lyon", "12.5"], ["Lyon", "7"], ["Porto", "3"], ["Graz", "1,5"]]
    return Task(id="agg", env="db", split="dev", kind="select", query="What is the total of the Lyon sales?",
                template="agentbench", expected={"label": ["19.5"], "select_type": "aggregation-SUM"},
                data={"table": {"name": "Sales", "columns": [{"name": "City"}, {"name": "Total"}], "rows": rows}})


@pytest.mark.parametrize("engine", ["sqlite", "mysql"])
def test_expert_derives_queries_in_mysql_on_the_episode_engine(engine):
    if engine == "mysql":
        _mariadb()
    from agentflan.envs.db import derive_select_sql
    from agentflan.envs.db_tasks import expert_for

    task = _aggregation_task()
    sql = derive_select_sql(task, engine)
    assert sql == "SELECT SUM(CAST(`Total` AS DOUBLE)) FROM `Sales` WHERE `City` = 'Lyon'"
    ep = run_episode(DBEnvironment(engine), task, ExpertPolicy(expert_for(task, engine)))
    assert ep.verdict is not None and ep.verdict.success, ep.verdict


def test_expert_never_answers_with_an_error():
    from agentflan.envs.db_tasks import expert_for

    task = get_env("db").generate(1, "heldout", 0)[0].model_copy(deep=True)
    task.expected["gold_sql"] = ["SELECT `Nope` FROM `Student Records`"]
    ep = run_episode(DBEnvironment(), task, ExpertPolicy(expert_for(task)))
    answer = ep.trajectory.messages[-1].tool_calls[0].arguments["answer"]
    assert "no such column" in ep.trajectory.messages[-2].content and answer == ["none"]


@pytest.mark.slow
def test_mariadb_expert_solves_every_derivable_dev_select(dev):
    _mariadb()
    from agentflan.envs.db import derive_select_sql
    from agentflan.envs.db_tasks import expert_for

    selects = [t for t in dev if t.kind == "select"]
    derivable = [t for t in selects if derive_select_sql(t, "mysql") is not None]
    # the 12 of sqlite but dev 5, whose empty column name MySQL refuses (AgentBench's data error)
    assert len(derivable) == 11 and "dbbench-dev-5" not in {t.id for t in derivable}
    assert all(run_episode(DBEnvironment("mysql"), t, ExpertPolicy(expert_for(t, "mysql"))).verdict.success
               for t in derivable)


@pytest.mark.slow
def test_mariadb_env_play_expert_runs_on_the_chosen_engine(shared_data):
    _mariadb()
    from click.testing import CliRunner

    from agentflan.cli.main import cli

    dev_file = shared_data / "agentbench/dbbench/dev.jsonl"
    # dev 7's gold names its table as a string (`FROM 'Football Matches'`): repaired for MySQL
    res = CliRunner().invoke(cli, ["env", "play", "db", "--tasks", str(dev_file), "--index", "7", "--db-engine", "mysql"])
    assert res.exit_code == 0 and "== SUCCESS" in res.output and "FROM `Football Matches`" in res.output, res.output


def test_sqlite_engine_without_sqlglot_names_the_install(monkeypatch):
    import importlib.util

    from agentflan.errors import MissingDependencyError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sqlglot" else real(name, *a))
    with pytest.raises(MissingDependencyError, match=r"pip install 'sqlglot>=25'"):
        SQLiteEngine()


# ---- --sql-mode: AgentBench's labels were made without strict mode (standard.jsonl 278, 295) -------

def _grand_prix_file(tmp_path):
    """One AgentBench UPDATE task that strict mode refuses (`WHERE No = 16` on a TEXT column holding
    '?': error 1292) and whose label is the table after the update as non-strict MySQL makes it."""
    rows = [["?", "a"], ["16", "b"], ["7", "d"]]
    after = [["?", "a"], ["16", "Charles Leclerc"], ["7", "d"]]
    record = {"description": "Set the driver of car 16 to Charles Leclerc.", "type": ["UPDATE"],
              "label": ["UPDATE `Grand Prix` SET `Driver` = 'Charles Leclerc' WHERE `No` = 16"],
              "answer_md5": agentbench_hash([tuple(r) for r in after]),
              "table": {"table_name": "Grand Prix", "table_info": {
                  "columns": [{"name": "No", "type": "TEXT"}, {"name": "Driver", "type": "TEXT"}], "rows": rows}}}
    path = tmp_path / "update.jsonl"
    path.write_text(json.dumps(record) + "\n")
    return path


@pytest.mark.parametrize(("args", "message"), [
    (["--sql-mode", "NO_ENGINE_SUBSTITUTION"], "--sql-mode applies to --db-engine mysql only"),
    (["--db-engine", "mysql", "--sql-mode", "ANSI'; DROP USER root; --"], "is not a comma-separated list"),
])
@pytest.mark.parametrize("command", [["eval", "db", "--policy", "expert", "-n", "1"],
                                     ["env", "play", "db", "--policy", "expert"]])
def test_sql_mode_is_checked_before_anything_runs(tmp_path, command, args, message):
    from click.testing import CliRunner

    from agentflan.cli.main import cli

    res = CliRunner().invoke(cli, [*command, *args] + (["-o", str(tmp_path / "out")] if command[0] == "eval" else []))
    assert res.exit_code == 2 and message in res.output, res.output
    assert not (tmp_path / "out").exists()


def test_mariadb_sql_mode_decides_agentbench_updates_and_is_logged(tmp_path):
    _mariadb()
    from click.testing import CliRunner

    from agentflan.cli.main import cli
    from agentflan.eval.envs import read_log

    tasks = _grand_prix_file(tmp_path)
    runner = CliRunner()
    verdicts = {}
    for mode in (None, "no_engine_substitution"):
        out = tmp_path / f"out-{mode}"
        res = runner.invoke(cli, ["eval", "db", "--policy", "expert", "--tasks", str(tasks), "--db-engine", "mysql",
                                  "-o", str(out), *(["--sql-mode", mode] if mode else [])])
        assert res.exit_code == 0, res.output
        (rec,) = read_log(out / "db-expert" / "episodes.jsonl")
        verdicts[mode] = rec["verdict"]["success"]
        assert rec.get("sql_mode") == (mode.upper() if mode else None)
        config = json.loads((out / "db-expert" / "config.json").read_text())
        assert config.get("sql_mode") == (mode.upper() if mode else None)
        res = runner.invoke(cli, ["score", str(out)])  # the replay runs in the logged mode
        assert res.exit_code == 0, res.output
    assert verdicts == {None: False, "no_engine_substitution": True}  # strict refuses the UPDATE
    res = runner.invoke(cli, ["env", "play", "db", "--policy", "expert", "--tasks", str(tasks), "--db-engine", "mysql",
                              "--sql-mode", "NO_ENGINE_SUBSTITUTION"])
    assert res.exit_code == 0 and "SUCCESS" in res.output, res.output


def test_mariadb_refuses_an_unknown_sql_mode_in_one_line(tmp_path):
    _mariadb()
    from click.testing import CliRunner

    from agentflan.cli.main import cli

    res = CliRunner().invoke(cli, ["env", "play", "db", "--policy", "expert", "--tasks", str(_grand_prix_file(tmp_path)),
                                   "--db-engine", "mysql", "--sql-mode", "NO_SUCH_MODE"])
    assert res.exit_code == 4, res.output
    assert "sql_mode 'NO_SUCH_MODE': MariaDB refused it" in res.output and "Traceback" not in res.output
