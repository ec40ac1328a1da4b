"""The `agentflan` command line."""

from __future__ import annotations

import logging
import sys

import click

from agentflan import __version__
from agentflan.cli.data import data
from agentflan.cli.demo import demo
from agentflan.cli.env import env
from agentflan.cli.evaluate import eval_cmd, score_cmd
from agentflan.cli.recipes import recipes
from agentflan.cli.serve import serve
from agentflan.cli.train import train


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="agentflan")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
def cli(verbose: int) -> None:
    """agentflan: Agent-FLAN data, training and evaluation for tool-using LLM agents."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


cli.add_command(data)
cli.add_command(demo)
cli.add_command(env)
cli.add_command(eval_cmd)
cli.add_command(score_cmd)
cli.add_command(recipes)
cli.add_command(serve)
cli.add_command(train)


def main() -> None:
    cli(prog_name="agentflan")


if __name__ == "__main__":
    main()
