"""Evaluation: engines (local, endpoint, vLLM), lockstep driving, suites, logs and scores.

`agentflan eval` plays held-out tasks of the executable environments with a model, under the
protocol it was trained with, and the single-action suites (`agent_h`: hallucination, `steps`:
step-level T-Eval style, `bfcl`: BFCL-format function calling; see `suites`); `agentflan score`
re-scores any log without a model.
"""
