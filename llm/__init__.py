"""A GPT-2 written from scratch in PyTorch: model, tokenizer, weights, generation.

The pieces, each in its own module:
    config      GPTConfig and the named presets (gpt2 ... gpt2-xl)
    tokenizer   GPT-2 BPE through tiktoken, offline-capable
    model       the transformer (attention, MLP, block, GPT, classifier) and its KV cache
    weights     Hugging Face GPT-2 checkpoints: download, map, load
    checkpoint  the project's own checkpoint format (config.json + model.safetensors)
    generate    sampling, streaming and batched generation, and the `python -m llm.generate` CLI
"""
