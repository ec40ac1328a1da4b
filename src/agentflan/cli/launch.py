"""Entry point for `accelerate launch -m agentflan.cli.launch RECIPE [key=value ...]` (and `torchrun`).

It lives in the CLI layer because it dispatches to both trainers: SFT (`training.sft`) and, for a
recipe with an `rl:` section, GRPO (`rl.grpo`, a layer above `training`).
"""

from __future__ import annotations

import sys

from agentflan.rl import grpo
from agentflan.training.sft import read_train_recipe, run, validate_train_recipe


def main() -> None:
    path, data = read_train_recipe(sys.argv[1], sys.argv[2:])
    if grpo.is_rl_data(data):
        grpo.run(grpo.load_rl_recipe(path, data))
        return
    run(validate_train_recipe(path, data))


if __name__ == "__main__":
    main()
