"""Domain errors that reach API clients, and the one OpenAI-shaped body they render to.

Plain Python (no Django imports) so every layer can raise them; console/api.py and the
WebSocket consumer turn them into responses and frames in exactly one place each.
"""

from typing import Any

TENANT_SUSPENDED_MESSAGE = (
    "This API key's tenant is suspended: every request is refused until the node's operator "
    "resumes it."
)


class ApiError(Exception):
    """An error the client may see: HTTP status, OpenAI error type and code, extra headers."""

    status: int = 400
    type: str = "invalid_request_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


class InvalidRequest(ApiError):
    status = 400
    code = "invalid_request"


class ContextLengthExceeded(InvalidRequest):
    """A prompt longer than the model takes (OpenAI's 400 context_length_exceeded, which the
    SDKs and LangChain recognise); refused, never truncated. The message gives the numbers:
    the tokens counted, a lower bound when the prompt was refused without tokenizing, or its
    characters when it was over a character cap."""

    code = "context_length_exceeded"

    def __init__(
        self,
        limit: int | None,
        *,
        tokens: int | None = None,
        at_least: int = 0,
        chars: int = 0,
        char_limit: int = 0,
        param: str = "prompt",
    ) -> None:
        self.limit, self.tokens, self.at_least = limit, tokens, at_least
        self.chars, self.char_limit = chars, char_limit
        super().__init__(self._message(param), param=param)

    def about(self, param: str) -> "ContextLengthExceeded":
        """The same error, worded for the request field that carried the prompt."""
        return ContextLengthExceeded(
            self.limit,
            tokens=self.tokens,
            at_least=self.at_least,
            chars=self.chars,
            char_limit=self.char_limit,
            param=param,
        )

    def _message(self, param: str) -> str:
        if self.limit is None:
            head = f"This node's maximum prompt length is {self.char_limit} characters."
        else:
            # An encoder-decoder: the context is the prompt alone; max_tokens has its own limit.
            head = (
                f"This model's maximum context length is {self.limit} tokens for the prompt "
                "(its end-of-sequence token included; max_tokens is limited separately)."
            )
        if self.tokens is not None:
            counted = f"resulted in {self.tokens} tokens"
        elif self.at_least:
            counted = f"resulted in at least {self.at_least} tokens (counted without tokenizing)"
        elif self.chars:
            counted = f"has {self.chars} characters (refused before tokenizing)"
        else:
            counted = f"has more than {self.char_limit} characters (refused before tokenizing)"
        # "prompt is too long": how LangChain (langchain-openai 1.8) tells a context overflow
        # when the openai SDK's exception text holds the message alone (openai 3.x).
        return (
            f"{head} However, your {param} {counted}, so the prompt is too long. "
            f"Please reduce the length of the {param}."
        )


class AuthenticationFailed(ApiError):
    status = 401
    code = "invalid_api_key"

    def __init__(self, message: str = "Invalid or missing API key.", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)


class PermissionDenied(ApiError):
    status = 403
    type = "permission_error"
    code = "insufficient_scope"


class TenantSuspended(PermissionDenied):
    """A valid key whose tenant an operator suspended: refused until the tenant is resumed
    (a wrong secret still gets the plain 401, so this tells nothing to a guesser)."""

    code = "tenant_suspended"

    def __init__(self, message: str = TENANT_SUSPENDED_MESSAGE, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)


class NotFound(ApiError):
    status = 404
    code = "not_found"


class PayloadTooLarge(ApiError):
    status = 413
    code = "request_too_large"


class RateLimited(ApiError):
    status = 429
    type = "requests"
    code = "rate_limit_exceeded"


class QuotaExhausted(ApiError):
    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"


class Overloaded(ApiError):
    status = 503
    type = "server_error"
    code = "overloaded"


class DependencyUnavailable(ApiError):
    """A shared dependency (Postgres) cannot answer and nothing cached can stand in."""

    status = 503
    type = "server_error"
    code = "service_unavailable"


class ModelUnavailable(ApiError):
    status = 503
    type = "server_error"
    code = "model_unavailable"


class AdapterUnavailable(ApiError):
    """The adapter a request names is registered but could not be loaded on this node."""

    status = 503
    type = "server_error"
    code = "service_unavailable"


class GenerationError(ApiError):
    """The model failed on this request alone: the same request would likely fail again."""

    status = 500
    type = "server_error"
    code = "generation_failed"


class InternalError(ApiError):
    """A fault of the node's own: the client gets this sentence, the log gets the traceback."""

    status = 500
    type = "server_error"
    code = "internal_error"

    def __init__(self) -> None:
        super().__init__("The server had an error processing your request.")


class ConnectionExpired(ApiError):
    """A WebSocket reached WS_MAX_LIFETIME_SECONDS: the client opens a new one."""

    status = 400
    code = "connection_expired"


def error_body(
    message: str,
    *,
    type: str = "invalid_request_error",  # noqa: A002 - OpenAI's field name
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """The OpenAI error object: {"error": {"message", "type", "param", "code"}}."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}
