"""Entry point for `accelerate launch -m agentflan.training.launch RECIPE [key=value ...]`."""

from __future__ import annotations

import sys

from agentflan.training.sft import read_train_recipe, run, validate_train_recipe


def main() -> None:
    path, data = read_train_recipe(sys.argv[1], sys.argv[2:])
    from agentflan.training import rl

    if rl.is_rl_data(data):
        rl.run(rl.load_rl_recipe(path, data))
        return
    run(validate_train_recipe(path, data))


if __name__ == "__main__":
    main()
