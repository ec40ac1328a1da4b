"""Source format instructions, the request they wrap, and their protocol-neutral replacements.

Agent corpora state their own reply format in the prompt: ToolBench's system prompt ("You are
AutoGPT ... ALWAYS call "Finish" function ..."), each AgentInstruct task's first human turn (the
AgentBench instruction: "Think: ... Act: bash", "Action: Operation", ...) acknowledged by an
untrained "OK." and followed by a one-shot demonstration. A protocol that renders the
conversation in another text format (T-FLAN, ReAct/JSON with a stated format, instruct) must not
keep those instructions: the sample would state one format and answer in another, which teaches the
model to ignore stated formats. `neutral_view` replaces them with a statement of the task that
names no reply format (the protocol states its own), and `request_of` finds the user's request
itself (what negatives and decontamination look at), never the task's format instruction.

The source protocols (`toolllama`, `fireact`, `agentinstruct:<task>`) keep the source text as it
is: that is the AgentTuning arm, and the held-in prompt. So does `native` (the chat template's own
function calling, where ToolBench's `Finish` is an offered tool): a structured conversation is
trained exactly as the `hf`/`openai` exports write it.
"""

from __future__ import annotations

import re

from agentflan.schema import AssistantMessage, Message, SystemMessage, Trajectory, UserMessage

TOOL_SYSTEM = ("You are a helpful assistant that can use tools. Use a tool only when the request needs it. "
               "If no offered tool can do what is asked, say so and answer without using tools.")
"""The tool-using assistant's system prompt: the Tool-API environment's, and what replaces a source
system prompt that states a reply format (ToolBench's)."""

TASK_STATEMENTS: dict[str, str] = {
    "db": ("I will ask you a question, then you should help me operate a SQL database to answer the question. "
           "Explain the problem and your reasoning, run one SQL statement at a time, and answer with the list of "
           "values that answers the question. If the question is about modifying the database, the answer can be "
           "an empty list once the change is done."),
    "os": ("You are an assistant working in a Linux (Ubuntu) shell. Carry out the operations the user asks for, "
           "or answer their question about the system, by running shell commands one at a time and reading their "
           "output."),
    "kg": ("You answer questions from the facts stored in a knowledge base. Explore it with its query functions "
           "one step at a time; each result is stored in a variable, and the answer is the variable that holds it."),
    "webshop": ("You are shopping on a web store for the user. Search for products, open them, choose their "
                "options and buy the one that matches the user's instruction."),
    "alfworld": ("You act in a household to complete the user's task, one command at a time, reading what you "
                 "observe after each command."),
    "mind2web": ("You operate a web page for the user: at each step, choose the element to act on and the "
                 "operation that moves the task forward."),
}
"""Each AgentInstruct/AgentBench task stated without its reply format (ours; `db` is the DB
environment's own system prompt)."""

_TOOLBENCH_SYSTEM = re.compile(r"^\s*You are AutoGPT\b")
_TOOLBENCH_TOOLS = re.compile(r"\n(You have access of the following tools:\n.*)\Z", re.DOTALL)
_LEAD_INS = (
    re.compile(r"^\s*Now, I will start a new problem(?: in a new OS)?\.\s*My problem is:\s*", re.IGNORECASE),
    re.compile(r"^\s*Now, my problem is:\s*", re.IGNORECASE),
)
_TRAILERS = (re.compile(r"\s*Begin!\s*\Z"),)


def request_index(traj: Trajectory) -> int | None:
    """Index of the user turn that holds the request: the last user turn before the first trained
    assistant turn (after an AgentInstruct task's instruction and its one-shot demonstration), or
    the first user turn of a conversation with nothing trained."""
    users = [i for i, m in enumerate(traj.messages) if isinstance(m, UserMessage)]
    if not users:
        return None
    trained = next((i for i, m in enumerate(traj.messages) if isinstance(m, AssistantMessage) and m.loss), None)
    before = [i for i in users if trained is None or i < trained]
    return before[-1] if before else users[0]


def clean_request(text: str) -> str:
    """A request without the lead-ins and trailers its source wraps it in ("Now, I will start a new
    problem in a new OS. My problem is:", ToolBench's "Begin!").

    Examples:
        >>> clean_request("Now, I will start a new problem in a new OS. My problem is:\\n\\nHow many files?")
        'How many files?'
    """
    return (_unwrap(text) or text).strip()


def _unwrap(text: str) -> str | None:
    """`text` without its source's lead-ins and trailers, or None when it has none."""
    out = text
    for rx in (*_LEAD_INS, *_TRAILERS):
        out = rx.sub("", out)
    return out.strip() if out != text else None


def request_of(traj: Trajectory) -> str | None:
    """The user's request (see `request_index`), cleaned; None when there is none."""
    i = request_index(traj)
    if i is None:
        return None
    return clean_request(traj.messages[i].content) or None


def is_source_instruction(traj: Trajectory) -> bool:
    """Does the conversation begin with its source's own reply-format instruction?"""
    msgs = traj.messages
    if msgs and isinstance(msgs[0], SystemMessage) and _TOOLBENCH_SYSTEM.match(msgs[0].content):
        return True
    i = request_index(traj)
    return traj.tags.get("task") in TASK_STATEMENTS and i is not None and i > 0 \
        and not isinstance(msgs[0], SystemMessage)


def neutral_system(traj: Trajectory) -> str | None:
    """The system prompt `neutral_view` gives `traj` (None: it has none)."""
    msgs = traj.messages
    head = msgs[0] if msgs and isinstance(msgs[0], SystemMessage) else None
    if head is not None and _TOOLBENCH_SYSTEM.match(head.content):
        tools = _TOOLBENCH_TOOLS.search(head.content)  # the services the APIs belong to: context, not format
        return TOOL_SYSTEM + (f"\n{tools.group(1).rstrip()}" if tools else "")
    task = traj.tags.get("task")
    if task in TASK_STATEMENTS and is_source_instruction(traj):
        return TASK_STATEMENTS[task]
    return head.content if head is not None else None


def neutral_view(traj: Trajectory) -> Trajectory:
    """`traj` without its source's format instructions: ToolBench's system prompt becomes
    `TOOL_SYSTEM` (its list of services kept); an AgentInstruct task's instruction turn, its
    acknowledgement and its one-shot demonstration become the task's `TASK_STATEMENTS` entry as
    the system prompt; the request loses its source lead-ins and trailers. Anything else is
    returned as it is (a conversation played in an environment is never changed)."""
    msgs = list(traj.messages)
    i = request_index(traj)
    if not is_source_instruction(traj) and (i is None or _unwrap(msgs[i].content) is None):
        return traj
    system = neutral_system(traj)
    out: list[Message] = [SystemMessage(content=system)] if system else []
    start = i if (i is not None and traj.tags.get("task") in TASK_STATEMENTS and is_source_instruction(traj)) else 0
    for k, m in enumerate(msgs[start:], start):
        if k == 0 and isinstance(m, SystemMessage):
            continue
        if k == i and _unwrap(m.content) is not None:
            m = UserMessage(content=_unwrap(m.content) or "", metadata=m.metadata)
        out.append(m)
    return traj.model_copy(update={"messages": out})
