"""`agentflan recipes`: list, show and copy the packaged recipes."""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from agentflan.pipeline.recipe import packaged_recipes as _data_recipes


def packaged_recipes() -> dict[str, Path]:
    """Data and training recipes shipped with agentflan, by name."""
    from importlib import resources

    root = resources.files("agentflan") / "recipes" / "train"
    train = {p.name.removesuffix(".yaml"): Path(str(p)) for p in root.iterdir() if p.name.endswith(".yaml")}
    return {**_data_recipes(), **train}


@click.group("recipes", invoke_without_command=True)
@click.pass_context
def recipes(ctx: click.Context) -> None:
    """List (default), show or copy the packaged recipes."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_cmd)


@recipes.command("list")
def list_cmd() -> None:
    """Packaged data and training recipes with their launch command."""
    import yaml

    for name, path in sorted(packaged_recipes().items()):
        data = yaml.safe_load(path.read_text())
        first = path.read_text().splitlines()[0].lstrip("# ")
        desc = " ".join(str(data.get("description", "")).split())
        click.echo(f"{name}\n    {desc}\n    $ {first}")


@recipes.command("show")
@click.argument("name")
def show_cmd(name: str) -> None:
    """Print a packaged recipe."""
    path = packaged_recipes().get(name)
    if path is None:
        raise click.ClickException(f"no packaged recipe {name!r} (see `agentflan recipes list`)")
    click.echo(path.read_text())


@recipes.command("cp")
@click.argument("name")
@click.argument("dest", type=click.Path(path_type=Path))
def cp_cmd(name: str, dest: Path) -> None:
    """Copy a packaged recipe to DEST for editing."""
    path = packaged_recipes().get(name)
    if path is None:
        raise click.ClickException(f"no packaged recipe {name!r} (see `agentflan recipes list`)")
    if dest.is_dir():
        dest = dest / path.name
    shutil.copyfile(path, dest)
    click.echo(f"copied {name} to {dest}")
