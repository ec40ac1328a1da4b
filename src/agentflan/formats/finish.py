"""ToolBench's terminal tool, `Finish`: its spec and the call that gives an answer.

ToolBench ends every episode with a call to `Finish` whose arguments are `return_type`
(`give_answer`, or `give_up_and_restart`) and `final_answer`. The environments, the negatives and
the eval suites all offer this tool and build this call, so both are defined here, once.
"""

from __future__ import annotations

from agentflan.schema import ToolCall, ToolSpec

FINISH = "Finish"
"""The terminal tool's name."""

FINISH_SPEC = ToolSpec(
    name=FINISH,
    description="Give the final answer to the user. Call it at the end of the task with return_type "
                "give_answer and the answer in final_answer.",
    parameters={"type": "object", "properties": {
        "return_type": {"type": "string", "enum": ["give_answer", "give_up_and_restart"]},
        "final_answer": {"type": "string"}}, "required": ["return_type"]})
"""The terminal tool as the environments, negatives and suites offer it."""


def give_answer(answer: str, call_id: str = "call_0") -> ToolCall:
    """The `Finish` call that gives `answer`.

    Args:
        answer: The final answer.
        call_id: The call's id.

    Returns:
        The call, with ToolBench's arguments in ToolBench's order (`return_type` first).

    Examples:
        >>> give_answer("42").arguments
        {'return_type': 'give_answer', 'final_answer': '42'}
    """
    return ToolCall(id=call_id, name=FINISH, arguments={"return_type": "give_answer", "final_answer": answer})
