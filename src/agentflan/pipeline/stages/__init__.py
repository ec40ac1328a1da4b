"""The stages of `agentflan data build`, one module each; `agentflan.pipeline.build.STAGES` declares their order."""
