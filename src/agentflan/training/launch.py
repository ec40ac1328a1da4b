"""Entry point for `accelerate launch -m agentflan.training.launch RECIPE [key=value ...]`."""

from __future__ import annotations

import sys

from agentflan.training.sft import load_train_recipe, run


def main() -> None:
    recipe = load_train_recipe(sys.argv[1], sys.argv[2:])
    run(recipe)


if __name__ == "__main__":
    main()
