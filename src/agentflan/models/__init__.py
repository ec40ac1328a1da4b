"""The models layer, between training and its users (eval, serve, the CLI): what a model is to them.

* `engines`: one interface (`Engine.generate`: prompts in, completions or request errors out) for a
  local transformers model, vLLM and any OpenAI-compatible endpoint; engines are registered by name
  in `engines.ENGINES` and built by `engines.make_engine(EngineOptions)`.
* `driver`: `drive`, the lockstep loop that advances many episodes with one batched call per round.
* `decode`: batched greedy decoding with a prefix cache (the local engine's generation).
* `batching`: `ContinuousDecoder`, requests joining and leaving a running batch (`agentflan serve`).
* `info`: `ModelInfo`, what `agentflan train` recorded beside a model (template, trained protocols).

Importing this package imports no torch; the engines import their heavy dependencies when built.
"""
