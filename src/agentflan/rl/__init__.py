"""Reinforcement learning on agentflan's environments (GRPO through TRL's `rollout_func`).

This layer sits above `models` and `eval` and below `cli` (AGENTS.md, "Layering"): a rollout is an
episode generator driven by `models.driver.drive`, the one lockstep loop between episode
generators and engines (eval's loop), with a token-level engine (`rl.rollout.TokenEngine`), so
RL needs `models`; and an episode source may be an eval suite that plays episodes (BFCL
multi-turn on its own backends, `eval.bfcl_multi`), so RL sits above `eval` too. It trains with
`training`'s pieces (masking, checkpoints, model info), which sit below. Nothing but the CLI
imports it.

* `rl.rollout`: token-exact rollouts (`EnvRollout`, TRL's `rollout_func`), `exact_rollout`.
* `rl.grpo`: the RL recipe, its rewards and the run (`agentflan train RL-RECIPE`).
"""
