"""The kernel every app imports: client-visible errors (`errors`), Redis clients (`redis`), the
client address behind our proxy (`clientaddr`) and the request JSON parser (`jsonbody`).

A leaf: it imports no other package of this project (tests/test_layers.py checks it)."""
