"""How chat messages become one flan-style instruction prompt.

flan-t5 was instruction-tuned on single prompts, not on chat transcripts, so:
- system (and developer) messages come first, as instructions, in their order;
- a conversation of one user message is that message alone;
- a longer conversation is written as "User: ..." / "Assistant: ..." lines ending with
  "Assistant:", so the model continues as the assistant.
"""

from collections.abc import Sequence
from typing import Protocol


class Message(Protocol):
    # Read-only, so a schema whose role is a Literal of some roles is a Message too.
    @property
    def role(self) -> str: ...

    @property
    def text(self) -> str: ...


SPEAKERS = {"user": "User", "assistant": "Assistant"}


def render_chat(messages: Sequence[Message]) -> str:
    instructions = [m.text.strip() for m in messages if m.role in ("system", "developer")]
    turns = [m for m in messages if m.role in SPEAKERS]
    if len(turns) == 1:
        conversation = turns[0].text.strip()
    else:
        lines = [f"{SPEAKERS[m.role]}: {m.text.strip()}" for m in turns]
        conversation = "\n".join([*lines, "Assistant:"])
    return "\n\n".join(part for part in [*instructions, conversation] if part)
