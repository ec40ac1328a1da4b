"""Evaluation: engines (local, endpoint, vLLM), lockstep driving, suites, logs and scores.

`agentflan eval` plays held-out tasks of the executable environments with a model, under the
protocol it was trained with; `agentflan score` re-scores any log without a model.
"""
