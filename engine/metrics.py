"""The engine's Prometheus metrics (names agreed in the brief; no label carries a prompt or key).

Gauges declare a multiprocess_mode because several daphne processes may share one
PROMETHEUS_MULTIPROC_DIR.
"""

from collections.abc import Sequence
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

from engine.generation import FINISH_CANCELLED, GenerationResult

if TYPE_CHECKING:  # engine.batcher imports this module: Job is read for the types only
    from engine.batcher import Job

REQUEST_RESULTS = ("completed", "cancelled", "rejected", "failed", "expired")

QUEUE_DEPTH = Gauge(
    "inference_queue_depth",
    "Requests waiting for the model (not yet in a batch): the waiting rows.",
    multiprocess_mode="livesum",
)
RUNNING_ROWS = Gauge(
    "inference_running_rows",
    "Rows in the batch being decoded.",
    multiprocess_mode="livesum",
)
CACHE_TOKENS = Gauge(
    "inference_cache_tokens",
    "Tokens the running rows may hold in the caches (prompt plus max_tokens each; "
    "INFERENCE_TOKEN_BUDGET bounds it).",
    multiprocess_mode="livesum",
)
STEP_SECONDS = Histogram(
    "inference_step_seconds",
    "One decoder step of the running batch (newcomers' encoder time included).",
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2.5),
)
TOKEN_GAP_SECONDS = Histogram(
    "inference_token_gap_seconds",
    "Between two pieces of one stream's text, as the engine hands them out.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
BATCH_SIZE = Histogram(
    "inference_batch_size",
    "Rows in each batch when it starts.",
    buckets=(1, 2, 4, 8, 12, 16, 24, 32, 48, 64),
)
TIME_TO_FIRST_TOKEN = Histogram(
    "inference_time_to_first_token_seconds",
    "From submission to the first generated token (queue wait included).",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
GENERATION_SECONDS = Histogram(
    "inference_generation_seconds",
    "From the start of the request's batch to the request's last token.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160),
)
TOKENS_GENERATED = Counter(
    "inference_tokens_generated",
    "Completion tokens generated (end-of-sequence token included).",
)
PROMPT_TOKENS = Counter("inference_prompt_tokens", "Prompt tokens encoded.")
REQUESTS = Counter("inference_requests", "Requests by how they ended.", labelnames=("result",))
MODEL_LOAD_SECONDS = Gauge(
    "inference_model_load_seconds",
    "Seconds the last model load took (tokenizer, weights, adapter merge, quantization).",
    multiprocess_mode="livemax",
)
MODEL_READY = Gauge(
    "inference_model_ready",
    "1 when this process's model is loaded and warmed up, else 0.",
    multiprocess_mode="livemin",
)
CUDA_MEMORY_BYTES = Gauge(
    "inference_cuda_memory_bytes",
    "CUDA memory allocated by torch in this process (0 on the CPU).",
    multiprocess_mode="livesum",
)

for _result in REQUEST_RESULTS:
    REQUESTS.labels(result=_result)


def record_batch(jobs: "Sequence[Job]") -> None:
    """A batch's size and prompt tokens, in the process that serves /metrics."""
    BATCH_SIZE.observe(len(jobs))
    record_join(jobs)


def record_join(jobs: "Sequence[Job]") -> None:
    """The prompt tokens of jobs that joined a running batch."""
    PROMPT_TOKENS.inc(sum(len(job.prompt_ids) for job in jobs))


def record_result(result: GenerationResult, *, first_token: bool = False) -> None:
    """A finished row's figures (and its time to first token, when not observed as it came)."""
    if first_token and result.first_token_seconds is not None:
        TIME_TO_FIRST_TOKEN.observe(result.first_token_seconds)
    GENERATION_SECONDS.observe(result.generation_seconds)
    TOKENS_GENERATED.inc(result.completion_tokens)
    outcome = "cancelled" if result.finish_reason == FINISH_CANCELLED else "completed"
    REQUESTS.labels(result=outcome).inc()
