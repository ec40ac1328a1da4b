"""Evaluation: suites, logs and scores, over the models layer (`agentflan.models`: engines, driving).

`agentflan eval` plays held-out tasks of the executable environments with a model, under the
protocol it was trained with, and the single-action suites (`agent_h`: hallucination, `steps`:
step-level T-Eval style, `bfcl`: BFCL-format function calling; see `suites`); `agentflan score`
re-scores any log without a model.
"""
