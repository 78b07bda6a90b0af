"""The inference engine: loading and quantizing the model, batching, decoding, detokenizing and
the model process. Plain Python, torch and transformers: no Django, and no other package of this
project but `core` (tests/test_layers.py checks it). docs/engine.md describes it."""
