"""The engine's configuration: a module of its own, so the model process (engine/worker.py) and
its handle (engine/remote.py) can import it without the engine (engine/runtime.py)."""

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineConfig:
    """Everything the engine needs; inference/engines.py fills it from Django settings."""

    model: str
    adapter: str = ""
    quantization: str = "auto"  # auto | bnb-int8 | torch-int8 | bf16 | none
    device: str = "auto"  # auto | cpu | cuda
    max_batch: int = 32
    # "continuous": rows join the running batch between decoder steps (engine/decoding.py);
    # "static": a batch runs until its last row ends, newcomers wait for the next one.
    scheduler: str = "continuous"
    # Tokens the running rows may hold in the caches, counted per row as its prompt plus its
    # max_tokens (what it may come to hold); a row larger than the budget still runs alone.
    token_budget: int = 16384
    # Encoder tokens (newcomers x their longest prompt) admitted together into one encoder
    # pass while a batch runs: a burst of long prompts joins over several passes.
    max_prefill_tokens: int = 1024
    # The encoder work run between two decoder steps while rows decode, in prompt tokens
    # through the whole encoder (a layer over n padded tokens counts n / layers; at least
    # one layer): a pass is cut at layer boundaries so the running streams' gap between
    # tokens stays bounded. 0: a pass runs whole.
    prefill_step_tokens: int = 32
    # Newcomers' encoder passes on a thread of their own beside the decoder steps, with half
    # the model thread's torch threads (engine/prefill.py), instead of in pauses between two
    # steps (prefill_step_tokens): auto | on | off; auto: on a CPU with two threads or more.
    prefill_thread: str = "auto"
    # Rows a batch may hold past max_batch for tenants that hold no row in it: one tenant
    # filling the batch does not hold another's first token until one of its rows ends.
    # 0 here (max_batch is the bound); Django's INFERENCE_TENANT_HEADROOM defaults to 2.
    tenant_headroom: int = 0
    max_wait_ms: int = 10
    max_queue: int = 256
    # Seconds a job may wait in the queue without starting before it fails with QueueTimeout;
    # 0: no bound (benchmarks). Django's INFERENCE_MAX_QUEUE_WAIT_SECONDS defaults to 30.
    max_queue_wait: float = 0.0
    threads: int = 0  # torch intra-op threads; 0: one per available core
    # Added to the model thread's nice value (and its intra-op threads', which inherit it): on
    # a shared CPU, answering requests (429s, auth, streaming) goes before batch work.
    nice: int = 0
    # CPUs the model thread (and its intra-op threads) may run on; empty: wherever the process
    # may. On a CPU node, keeping the request path off the model's cores (docs/engine.md).
    cpus: tuple[int, ...] = ()
    max_input_tokens: int = 0  # 0: the tokenizer's model_max_length (512 for flan-t5)
    max_output_tokens: int = 512
    allow_download: bool = True  # a hub id missing from the cache may be fetched
    warmup: bool = True
    # Per-row adapters held at once (engine/lora.py; least recently used evicted beyond it,
    # never one with running rows; the default adapter is not counted): INFERENCE_MAX_ADAPTERS.
    max_adapters: int = 16
    # The largest adapter rank the model process loads (core/adapters.py checks it first).
    max_adapter_rank: int = 64
    # Decode in a model process of its own (spawned; nice and cpus apply to it) instead of a
    # thread of the serving process: the request path and the decoder stop sharing one
    # interpreter lock. Django's INFERENCE_MODEL_PROCESS defaults to on.
    process: bool = False
