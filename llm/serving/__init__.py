"""Serving: the engine that owns the models and the batch, the registry, the limits, the chat rules and the
HTTP API. The model library (`llm/`) never imports from here."""
