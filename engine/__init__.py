"""The inference engine: loading and quantizing the model, batching, decoding, detokenizing and
the model process. Plain Python, torch and transformers: no Django, and no other package of this
project but `core` (tests/test_layers.py checks it). docs/engine.md describes it."""

import os

# Before torch loads its OpenMP runtime (it reads these once), here because every path to the
# model imports this package first: the model process (python -m engine.worker) and, in the
# thread mode, the server. OpenMP's idle threads otherwise spin between parallel regions, and
# on a CPU shared with other processes (the server, Redis, Postgres, a neighbour) a spinning
# thread holds the core its partner needs to finish the region: measured 5-15x slower decoder
# steps and encoder passes at load 6-9 on 2 cores (docs/benchmarks.md). An operator's own
# setting wins.
if "GOMP_SPINCOUNT" not in os.environ:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
