"""The OpenAI-compatible HTTP API over the serving runtime: `python -m llm.serving.http`."""
