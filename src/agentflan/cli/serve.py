"""`agentflan serve MODEL`: an OpenAI-compatible server that prompts the model as it was trained."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Any

import click

from agentflan.errors import AgentflanError, require

API_KEY_ENV = "AGENTFLAN_API_KEY"


def listen_socket(host: str, port: int) -> socket.socket:
    """A bound socket for `host:port` (bound before the model loads: a port in use fails at once)."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise AgentflanError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise AgentflanError(f"cannot listen on {host}:{port}: {e.strerror or e} (is another server running "
                             "there? choose another --port)") from None
    sock.set_inheritable(True)
    return sock


LOCAL_ONLY = ("max_queue", "max_per_client", "max_tokens_limit", "max_prompt_tokens", "max_body_mb", "request_timeout",
              "threads")
"""Options of agentflan's own server that vLLM's server does not have (refused with --engine vllm)."""


def vllm_command(model: Path, *, host: str, port: int, protocol: str | None, model_names: tuple[str, ...],
                 api_keys: tuple[str, ...], batch_size: int, max_new_tokens: int, dtype: str,
                 tool_parser: str | None) -> list[str]:
    """The command line of vLLM's OpenAI server for a model `agentflan train` wrote: its trained
    chat template (saved in the tokenizer) and a tool parser that reads its protocol.

    Raises:
        ConfigError: A protocol vLLM's server cannot serve as trained (ReAct/JSON: vLLM's chat
            template cannot state the tools in the protocol's words; T-FLAN: several generations
            per action), or several API keys (vLLM takes one).
    """
    import json
    import sys

    from agentflan.errors import ConfigError
    from agentflan.formats.protocols import TFlanProtocol, get_protocol
    from agentflan.formats.templates import get_template
    from agentflan.models.info import ModelInfo
    from agentflan.training.models import ModelConfig, load_tokenizer

    info = ModelInfo.load(model)
    name = protocol or info.episode_protocols(None)[0]
    template = get_template(info.template, load_tokenizer(ModelConfig(name_or_path=str(model))))
    proto = get_protocol(name, template)
    resolved = proto.name
    if resolved != "native":
        why = ("its harness plays elicit turns, several generations per action" if isinstance(proto, TFlanProtocol)
               else "vLLM renders the prompt with the chat template, which does not state the tools in this "
                    "protocol's words (the agentflan-* parser plugins read such replies when the client sends the "
                    "protocol's prompt: docs/serve.md)")
        raise ConfigError(f"{model} replies in protocol {resolved!r} ({name}): vLLM's OpenAI server cannot serve it "
                          f"as trained: {why}; serve it with `agentflan serve` (--engine local)")
    if len(api_keys) > 1:
        raise ConfigError("vLLM's server takes one API key; give one --api-key with --engine vllm")
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--host", host,
           "--port", str(port), "--max-num-seqs", str(batch_size), "--dtype", dtype,
           "--override-generation-config", json.dumps({"max_new_tokens": max_new_tokens}),
           "--enable-auto-tool-choice", "--tool-call-parser", tool_parser or "hermes"]
    if model_names:
        cmd += ["--served-model-name", *model_names]
    if api_keys:
        cmd += ["--api-key", api_keys[0]]
    return cmd


def is_loopback(sock: socket.socket) -> bool:
    try:
        return ipaddress.ip_address(sock.getsockname()[0]).is_loopback
    except ValueError:
        return False


@click.command("serve")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind (a non-loopback address without --api-key serves anyone who can reach it).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--protocol", help="Protocol for requests with tools (default: the one the model was trained on most).")
@click.option("--model-name", "model_names", multiple=True,
              help="The name clients use (repeat for aliases; default: the folder path). Other names get 404.")
@click.option("--api-key", "api_keys", multiple=True, envvar=API_KEY_ENV,
              help=f"Require `Authorization: Bearer KEY` (repeat for several keys; or ${API_KEY_ENV}, "
                   "whitespace-separated, which keeps keys out of the process list).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Requests generating at once (continuous batching: each joins and leaves between steps).")
@click.option("--max-queue", type=click.IntRange(min=0), default=64, show_default=True,
              help="Requests waiting beyond --batch-size before 503 busy (with Retry-After).")
@click.option("--max-per-client", type=click.IntRange(min=1), default=None,
              help="Requests (choices, for n > 1) one client may have queued or running at once; beyond that "
                   "429 with Retry-After. A client is its API key (its address without --api-key). Default: "
                   "no per-client limit.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=512, show_default=True,
              help="Tokens generated when a request names no max_tokens.")
@click.option("--max-tokens-limit", type=click.IntRange(min=1), default=4096, show_default=True,
              help="The most max_tokens a request may ask for (400 above).")
@click.option("--max-prompt-tokens", type=click.IntRange(min=1), default=None,
              help="The longest prompt in tokens (400 above; default: the model's context).")
@click.option("--max-body-mb", type=click.FloatRange(min=0, min_open=True), default=2.0, show_default=True,
              help="The largest request body (413 above, before it is read).")
@click.option("--request-timeout", type=click.FloatRange(min=0, min_open=True), default=600.0, show_default=True,
              help="Seconds a request may take, queue included (504 after).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch threads on CPU (default: torch's; 1 or 2 on a machine other work keeps busy).")
@click.option("--engine", type=click.Choice(["local", "vllm"]), default="local", show_default=True,
              help="local: agentflan's server (continuous batching in transformers; every protocol). vllm: start "
                   "vLLM's OpenAI server on the model (CUDA; native-protocol models; see docs/serve.md).")
@click.option("--vllm-tool-parser", help="With --engine vllm: vLLM's --tool-call-parser (default hermes: "
                                         "<tool_call>{json}</tool_call> replies).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True)
def serve(model: Path, host: str, port: int, protocol: str | None, model_names: tuple[str, ...],
          api_keys: tuple[str, ...], batch_size: int, max_queue: int, max_per_client: int | None, max_new_tokens: int,
          max_tokens_limit: int, max_prompt_tokens: int | None, max_body_mb: float, request_timeout: float,
          threads: int | None, engine: str, vllm_tool_parser: str | None, device: str, dtype: str) -> None:
    """Serve MODEL (a folder `agentflan train` wrote) at http://HOST:PORT/v1 (chat completions with
    tools and tool_calls, streaming or not, /v1/models, /health). See docs/serve.md."""
    if max_new_tokens > max_tokens_limit:
        raise click.BadParameter(f"{max_new_tokens} is above --max-tokens-limit {max_tokens_limit}",
                                 param_hint="--max-new-tokens")
    keys = tuple(k for value in api_keys for k in value.split())
    if engine == "vllm":
        _serve_vllm(model, host=host, port=port, protocol=protocol, model_names=model_names, api_keys=keys,
                    batch_size=batch_size, max_new_tokens=max_new_tokens, dtype=dtype, tool_parser=vllm_tool_parser)
        return
    if vllm_tool_parser:
        raise click.BadParameter("only with --engine vllm", param_hint="--vllm-tool-parser")
    require("fastapi", "serve")
    require("uvicorn", "serve")
    import uvicorn

    from agentflan.models.engines import HFEngine
    from agentflan.serve import Limits, Server, create_app

    sock = listen_socket(host, port)
    try:
        if not keys and not is_loopback(sock):
            click.echo(f"agentflan: warning: serving on {host} without --api-key: anyone who can reach port "
                       f"{port} can use the model", err=True)
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        hf = HFEngine(str(model), batch_size=batch_size, max_new_tokens=max_new_tokens, device=device,
                          dtype=dtype, prefix_cache_gb=0)
        limits = Limits(max_tokens=max_new_tokens, max_tokens_limit=max_tokens_limit,
                        max_prompt_tokens=max_prompt_tokens, max_body_bytes=int(max_body_mb * 2**20),
                        request_timeout=request_timeout)
        server = Server(hf, protocol=protocol, model_name=model_names[0] if model_names else None,
                        aliases=model_names[1:], max_active=batch_size, max_queue=max_queue, limits=limits,
                        api_keys=keys, max_per_client=max_per_client)
        bound = sock.getsockname()
        click.echo(f"serving {server.model_name} (template {hf.template.name}, protocol {server.protocol_name}, "
                   f"batch {batch_size}, queue {max_queue}, "
                   f"{f'{max_per_client} per client, ' if max_per_client else ''}"
                   f"{'API key required' if keys else 'no API key'}) "
                   f"at http://{host}:{bound[1]}/v1", err=True)
        config: Any = uvicorn.Config(create_app(server), log_level="warning", timeout_graceful_shutdown=5)
        try:
            uvicorn.Server(config).run(sockets=[sock])
        finally:
            server.close()
    finally:
        sock.close()


def _serve_vllm(model: Path, **kw: Any) -> None:
    """Replace this process by vLLM's OpenAI server (signals and exit status are then vLLM's)."""
    import importlib.util
    import os

    from agentflan.errors import ConfigError, MissingDependencyError

    ctx = click.get_current_context()
    given = [f"--{n.replace('_', '-')}" for n in LOCAL_ONLY
             if ctx.get_parameter_source(n) not in (click.core.ParameterSource.DEFAULT, None)]
    if given:
        raise ConfigError(f"{', '.join(given)}: options of agentflan's own server; vLLM's server has no such "
                          "option (drop them with --engine vllm)")
    if importlib.util.find_spec("vllm") is None:
        raise MissingDependencyError("--engine vllm needs vLLM on a CUDA GPU (pip install vllm); use --engine local "
                                     "(the default) on this machine")
    cmd = vllm_command(model, **kw)
    secret = set(kw["api_keys"])
    click.echo(f"agentflan: starting vLLM's OpenAI server: {' '.join('***' if c in secret else c for c in cmd)}",
               err=True)
    os.execv(cmd[0], cmd)
