"""What a caller hands the engine, what it gets back, and the engine's exceptions.

Plain Python (no Django, no torch) so the API layer can import it cheaply;
inference/engines.py maps the exceptions to core.errors.
"""

import math
from dataclasses import dataclass, field
from typing import Self

FINISH_STOP = "stop"  # end of sequence or a stop string
FINISH_LENGTH = "length"  # max_tokens reached
FINISH_CANCELLED = "cancelled"  # the consumer went away, cancel() or shutdown

# The seeds torch.Generator.manual_seed takes (measured with torch 2.13: a negative seed s is
# taken as 2**64 + s; one outside raises). The API schema and validate() refuse the rest.
SEED_MIN = -(2**63)
SEED_MAX = 2**64 - 1
SEED_MESSAGE = f"seed must be an integer between {SEED_MIN} and {SEED_MAX}."
# The most likely alternatives a row reports beside each chosen token (OpenAI's top_logprobs).
MAX_TOP_LOGPROBS = 20


class EngineError(Exception):
    """Base class of everything the engine raises to callers."""


class ModelLoadError(EngineError):
    """The model or adapter cannot be loaded; the message says what is missing."""


class QueueFull(EngineError):
    """The bounded queue is full; nothing was done for the request."""


class QueueTimeout(EngineError):
    """The request waited in the queue longer than max_queue_wait without starting; it was
    taken out and never ran (nothing was generated for it)."""


class ModelNotReady(EngineError):
    """The model is loading, failed to load, or the engine is shutting down."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PromptTooLong(EngineError):
    """The prompt has more tokens than the model accepts (it is refused, never truncated)."""

    def __init__(
        self, limit: int, *, tokens: int | None = None, char_limit: int = 0, at_least: int = 0
    ) -> None:
        if tokens is not None:
            counted = f"this prompt has {tokens}"
        elif at_least:
            counted = f"this prompt has at least {at_least}"
        else:
            counted = f"prompts over {char_limit} characters are refused without counting"
        super().__init__(
            f"The prompt is too long: the model accepts at most {limit} tokens "
            f"(end-of-sequence token included) and {counted}."
        )
        self.limit = limit
        self.tokens = tokens
        self.at_least = at_least
        self.char_limit = char_limit


class UnknownAdapter(EngineError):
    """The request names an adapter the engine does not hold in its registry."""

    def __init__(self, name: str) -> None:
        super().__init__(f"No adapter named {name!r} is registered.")
        self.name = name

    def __reduce__(self) -> tuple[type[Self], tuple[str]]:
        # It travels from the model process as an event (pickled): args holds the message.
        return type(self), (self.name,)


class AdapterLoadError(EngineError):
    """A registered adapter's folder could not be loaded; the message says why (no path)."""


class InvalidGeneration(EngineError):
    """A generation parameter is out of range; `param` names it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param

    def __reduce__(self) -> tuple[type[Self], tuple[str, str]]:
        # It travels from the model process as an event (pickled): args holds only the message.
        return type(self), (self.param, str(self))


class GenerationFailed(EngineError):
    """The model raised while running the request's batch (the engine keeps serving)."""


class RowFailed(GenerationFailed):
    """Work of this request alone failed (its sampling, detokenizing or stop strings): it
    ended, its batch-mates went on. Likely to fail again: not worth a retry as it is."""


@dataclass(frozen=True)
class GenerationRequest:
    """One completion: temperature 0 is greedy; a seed makes sampling reproducible."""

    prompt: str
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # Keep generating past the end-of-sequence token (benchmarks, like vLLM's ignore_eos).
    ignore_eos: bool = False
    # Whose request it is and that tenant's share when tenants wait for the model together
    # (engine/fairness.py); "" is one anonymous tenant (benchmarks, the warm-up).
    tenant: str = ""
    weight: float = 1.0
    # The prompt's ids when the caller has them already (Engine.encode_prompt): not encoded again.
    prompt_ids: tuple[int, ...] | None = field(default=None, repr=False, compare=False)
    # None: no log-probabilities (and no cost). 0 to MAX_TOP_LOGPROBS: each Delta carries the
    # chosen tokens' log-probabilities and that many most likely alternatives (messages.py).
    logprobs: int | None = None
    # A registered adapter's name (Engine.set_adapters); "" decodes with the default adapter
    # (INFERENCE_ADAPTER), or the bare base model without one.
    adapter: str = ""

    def __post_init__(self) -> None:
        # The caller's mistake, not a client's (weights come from a database constraint, > 0):
        # the fair queue divides by it.
        if not (math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(f"weight must be a positive number, not {self.weight!r}")

    def validate(self, max_output_tokens: int) -> None:
        """Raise InvalidGeneration for out-of-range parameters."""
        if not 1 <= self.max_tokens <= max_output_tokens:
            raise InvalidGeneration(
                "max_tokens", f"max_tokens must be between 1 and {max_output_tokens}."
            )
        if not 0.0 <= self.temperature <= 2.0:
            raise InvalidGeneration("temperature", "temperature must be between 0 and 2.")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidGeneration("top_p", "top_p must be greater than 0 and at most 1.")
        if len(self.stop) > 4 or any(not isinstance(s, str) or not s for s in self.stop):
            raise InvalidGeneration("stop", "stop takes up to 4 non-empty strings.")
        if self.seed is not None and not _is_seed(self.seed):
            raise InvalidGeneration("seed", SEED_MESSAGE)
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidGeneration(
                "logprobs", f"logprobs must be between 0 and {MAX_TOP_LOGPROBS}."
            )


def _is_seed(seed: object) -> bool:
    return isinstance(seed, int) and not isinstance(seed, bool) and SEED_MIN <= seed <= SEED_MAX


@dataclass
class GenerationResult:
    """The finished request: text, exact token counts and where the time went."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    queue_seconds: float
    first_token_seconds: float | None
    generation_seconds: float
    token_ids: list[int] = field(default_factory=list, repr=False)
