"""`agentflan serve MODEL`: an OpenAI-compatible server that prompts the model as it was trained."""

from __future__ import annotations

from pathlib import Path

import click

from agentflan.errors import AgentflanError, require


@click.command("serve")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--protocol", help="Protocol for requests with tools (default: the one the model was trained on most).")
@click.option("--model-name", help="The name clients use (default: the folder path).")
@click.option("--batch-size", type=int, default=16, show_default=True,
              help="Requests generated together (the rest wait in the queue).")
@click.option("--max-queue", type=int, default=64, show_default=True, help="Waiting requests before 503 busy.")
@click.option("--max-new-tokens", type=int, default=512, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", default="float32", show_default=True)
def serve(model: Path, host: str, port: int, protocol: str | None, model_name: str | None, batch_size: int,
          max_queue: int, max_new_tokens: int, device: str, dtype: str) -> None:
    """Serve MODEL (a folder `agentflan train` wrote) at http://HOST:PORT/v1 (chat completions with
    tools and tool_calls, streaming or not, /v1/models, /health)."""
    try:
        require("fastapi", "serve")
        require("uvicorn", "serve")
        import uvicorn

        from agentflan.eval.engines import HFEngine
        from agentflan.serve import Server, create_app

        engine = HFEngine(str(model), batch_size=batch_size, max_new_tokens=max_new_tokens, device=device, dtype=dtype)
        server = Server(engine, protocol=protocol, model_name=model_name, max_active=batch_size, max_queue=max_queue)
    except AgentflanError as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"serving {server.model_name} (template {engine.template.name}, protocol {server.default_protocol}) "
               f"at http://{host}:{port}/v1", err=True)
    try:
        uvicorn.run(create_app(server), host=host, port=port, log_level="warning")
    finally:
        server.close()
