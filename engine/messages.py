"""What the engine's parts tell each other: the events a job receives, and the messages between
the serving process (engine/remote.py) and the model process (engine/worker.py).

Events. A job gets any number of Delta (text and the completion tokens it covers so far; with
GenerationRequest.logprobs set, also each new token's TokenLogprob), then
exactly one Done (its GenerationResult) or Failed (an EngineError for its stream to raise). The
model thread or the model process sends them (engine/decoding.py), the queue sends Failed for a
job that waited too long (engine/batcher.py), the engine Done or Failed for a job it withdraws or
gives up on (engine/runtime.py); GenerationStream turns them into text, a result or a raise.

The model process protocol, over one multiprocessing Connection (every message is pickled, so
every type here must stay picklable: engine/tests/test_messages.py checks it):

    server -> model   Configure                      once, first
    model -> server   Ready (ModelFacts) | LoadFailed   once: loaded and warmed up, or why not
    server -> model   Batch (BatchRow, ...)          one batch at a time, then for that batch:
    server -> model   Join (BatchRow, ...)           any number (continuous batching): rows
                                                     that join the running batch (read between
                                                     decoder steps)
    model -> server   Events ((job id, event), ...)  once per decoder step (step times)
    model -> server   BatchDone                      once, after the batch's last Events
    server -> model   Cancel | Abort                 any time (read between decoder steps)
    server -> model   SetAdapters                    any time: the adapter registry
    server -> model   Stop                           end after the batch being decoded

A Join can cross the BatchDone of a batch that just ended: the model process then starts a
batch with its rows (answered by Events and a BatchDone of its own), and the server waits for
BatchDone until every row it sent has ended. An Abort also ends rows sent by Join that had not
started (as cancelled).

A model process whose connection closes ends; a server that finds it closed starts a new one.
"""

from dataclasses import dataclass

from engine.config import EngineConfig
from engine.generation import EngineError, GenerationRequest, GenerationResult

# --- events a job receives ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One generated token: its id, its text, its log-probability (the log-softmax of the
    model's logits in float32, before temperature and top_p) and, when asked, the most likely
    alternatives at that step (each a TokenLogprob without alternatives of its own)."""

    token_id: int
    text: str
    logprob: float
    top: tuple["TokenLogprob", ...] = ()


@dataclass(frozen=True, slots=True)
class Delta:
    """More text for the stream; `tokens`: the completion tokens it covers so far, in all;
    `logprobs`: the tokens accepted since the previous Delta (only when the request asked for
    them: the text may then be empty, for tokens whose text is held back or trimmed)."""

    text: str
    tokens: int
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class Done:
    """The job ended with a result (also a cancelled one); the last event it gets."""

    result: GenerationResult


@dataclass(frozen=True, slots=True)
class Failed:
    """The job ended with an error its stream raises; the last event it gets."""

    error: EngineError


Event = Delta | Done | Failed


# --- server process -> model process ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Configure:
    """The first message: what to load, and the serving process's log level for the engine."""

    config: EngineConfig
    log_level: int
    # The adapter registry at start (name, folder): a non-empty one loads the per-row base.
    adapters: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class BatchRow:
    """One job of a Batch; `submitted_at` is the server's perf_counter when it was queued."""

    job_id: int
    request: GenerationRequest
    prompt_ids: list[int]
    cancelled: bool
    submitted_at: float


@dataclass(frozen=True, slots=True)
class Batch:
    """Decode these rows together; answered by Events and one BatchDone."""

    rows: tuple[BatchRow, ...]


@dataclass(frozen=True, slots=True)
class Join:
    """Rows that join the batch being decoded at its next step (or start one, if it ended).
    urgent: the tenant headroom's rows, encoded whole at the next step even while another
    pass is under way (Scheduler.take_joiners)."""

    rows: tuple[BatchRow, ...]
    urgent: bool = False


@dataclass(frozen=True, slots=True)
class Cancel:
    """Stop one row of the batch being decoded (it ends cancelled at the next step)."""

    job_id: int


@dataclass(frozen=True, slots=True)
class Abort:
    """Cancel every row of the batch being decoded (a shutdown past its deadline)."""


@dataclass(frozen=True, slots=True)
class Stop:
    """End the process once the batch being decoded is done."""


@dataclass(frozen=True, slots=True)
class SetAdapters:
    """The whole adapter registry (name, folder), read between two decoder steps
    (Engine.set_adapters; engine/lora.py's AdapterHost)."""

    adapters: tuple[tuple[str, str], ...]


ToModel = Configure | Batch | Join | Cancel | Abort | Stop | SetAdapters


# --- model process -> server process ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """What the server keeps of the model: its tokenizer (as JSON, to encode and count prompt
    tokens before admission) and the facts /readyz and the metrics report; no weights."""

    tokenizer: str
    device: str
    quantization: str
    decoder_start_id: int
    eos_id: int
    pad_id: int
    max_input_tokens: int
    load_seconds: float
    encoder_layers: int = 0  # the server bounds newcomers' groups by it (prefill_group_limit)
    heap_frozen: int = 0  # objects the model process set aside from its collector (settle_heap)
    model_bytes: int = 0  # ServedModel.model_bytes: what the model holds
    cache_token_bytes: int = 0  # ServedModel.cache_token_bytes: a token held in the caches


@dataclass(frozen=True, slots=True)
class Ready:
    """The model is loaded and warmed up; batches may come."""

    facts: ModelFacts


@dataclass(frozen=True, slots=True)
class LoadFailed:
    """The model could not be loaded (the process then ends); `detail` says why."""

    detail: str


@dataclass(frozen=True, slots=True)
class Events:
    """The events of one decoder step, each with the id of its job (BatchRow.job_id), the
    seconds of the steps since the last Events (for the server's step histogram), and the jobs
    sent by Join whose encoder pass began since (the server then sends the next newcomers)."""

    items: tuple[tuple[int, Event], ...]
    step_seconds: tuple[float, ...] = ()
    started: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class BatchDone:
    """The batch ended (every row has had its last event); the GPU's bytes in use, or None."""

    cuda_bytes: int | None


FromModel = Ready | LoadFailed | Events | BatchDone
