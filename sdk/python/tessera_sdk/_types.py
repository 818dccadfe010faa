"""Requests, responses and the rest, as plain Python dataclasses.

Each type converts to and from the component's generated bindings
(`wit_world.imports.types`) at the boundary, so handlers never see them.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Tuple


def _wit():
    from wit_world.imports import types

    return types


class Role(enum.Enum):
    """Who wrote a message."""

    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


class FinishReason(enum.Enum):
    """Why a generation ended."""

    STOP = "stop"
    LENGTH = "length"


@dataclass
class Message:
    """One turn of a conversation."""

    role: Role
    content: str

    @classmethod
    def system(cls, content: str) -> "Message":
        return cls(Role.SYSTEM, content)

    @classmethod
    def user(cls, content: str) -> "Message":
        return cls(Role.USER, content)

    @classmethod
    def assistant(cls, content: str) -> "Message":
        return cls(Role.ASSISTANT, content)

    def _to_wit(self):
        t = _wit()
        return t.Message(t.Role[self.role.name], self.content)

    @classmethod
    def _from_wit(cls, m) -> "Message":
        return cls(Role[m.role.name], m.content)


@dataclass(frozen=True)
class Sampling:
    """How text is sampled. `None` means the host's default: temperature
    0.7, top-p 1.0, no top-k, no repetition penalty, at most 256 tokens, a
    fresh seed (the same defaults as `tessera generate` and the API).

    Frozen: `replace` returns a changed copy, as in
    `req.sampling.replace(max_tokens=64)`."""

    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    repetition_penalty: Optional[float] = None
    max_tokens: Optional[int] = None
    seed: Optional[int] = None
    stop: Tuple[str, ...] = ()

    @classmethod
    def greedy(cls) -> "Sampling":
        """Always the most likely token (temperature 0)."""
        return cls(temperature=0.0)

    def replace(self, **changes) -> "Sampling":
        """A copy with `changes` (any field: `max_tokens=64`, `stop=("\\n",)`)."""
        if "stop" in changes:
            changes["stop"] = tuple(changes["stop"])
        return dataclasses.replace(self, **changes)

    def _to_wit(self):
        return _wit().Sampling(
            self.temperature,
            self.top_p,
            self.top_k,
            self.repetition_penalty,
            self.max_tokens,
            self.seed,
            list(self.stop),
        )

    @classmethod
    def _from_wit(cls, s) -> "Sampling":
        return cls(s.temperature, s.top_p, s.top_k, s.repetition_penalty, s.max_tokens, s.seed, tuple(s.stop))


@dataclass
class Usage:
    """Tokens a call read and wrote."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(self.prompt_tokens + other.prompt_tokens, self.completion_tokens + other.completion_tokens)

    def _to_wit(self):
        return _wit().Usage(self.prompt_tokens, self.completion_tokens)

    @classmethod
    def _from_wit(cls, u) -> "Usage":
        return cls(u.prompt_tokens, u.completion_tokens)


@dataclass
class TokenLogprob:
    """The log-probability the model gave one generated token."""

    token: str
    logprob: float


@dataclass
class Completion:
    """What a model call returned."""

    text: str
    finish_reason: FinishReason
    usage: Usage
    token_logprobs: List[TokenLogprob] = field(default_factory=list)

    @property
    def was_truncated(self) -> bool:
        """Whether it stopped at `max_tokens` rather than at its end."""
        return self.finish_reason is FinishReason.LENGTH

    @classmethod
    def _from_wit(cls, c) -> "Completion":
        return cls(
            c.text,
            FinishReason[c.finish_reason.name],
            Usage._from_wit(c.usage),
            [TokenLogprob(t.token, t.logprob) for t in c.token_logprobs],
        )


@dataclass
class Request:
    """A request: a conversation, how to sample, and metadata pairs."""

    messages: List[Message]
    sampling: Sampling = field(default_factory=Sampling)
    metadata: List[Tuple[str, str]] = field(default_factory=list)

    @classmethod
    def from_prompt(cls, prompt: str) -> "Request":
        """One user message, default sampling."""
        return cls([Message.user(prompt)])

    def last_user_message(self) -> Optional[str]:
        """The text of the last user message, if any."""
        for m in reversed(self.messages):
            if m.role is Role.USER:
                return m.content
        return None

    def require_user_message(self) -> str:
        """The last user message, or `InvalidInput` saying there is none."""
        from ._errors import InvalidInput

        text = self.last_user_message()
        if text is None:
            raise InvalidInput("the request has no user message: send at least one message with role `user`")
        return text

    def get_metadata(self, key: str) -> Optional[str]:
        """The first metadata value under `key`."""
        return next(self.metadata_all(key), None)

    def metadata_all(self, key: str) -> Iterator[str]:
        """Every metadata value under `key`, in order."""
        return (v for k, v in self.metadata if k == key)

    def _to_wit(self):
        return _wit().Request([m._to_wit() for m in self.messages], self.sampling._to_wit(), list(self.metadata))

    @classmethod
    def _from_wit(cls, r) -> "Request":
        return cls(
            [Message._from_wit(m) for m in r.messages],
            Sampling._from_wit(r.sampling),
            [(k, v) for k, v in r.metadata],
        )


@dataclass
class Response:
    """An expert's answer. The `with_*` methods change it and return it."""

    content: str
    usage: Usage = field(default_factory=Usage)
    confidence: Optional[float] = None
    metadata: List[Tuple[str, str]] = field(default_factory=list)

    @classmethod
    def from_completion(cls, completion: Completion) -> "Response":
        """The model's text as the answer, with its usage."""
        return cls(completion.text, completion.usage)

    def with_usage(self, usage: Usage) -> "Response":
        self.usage = usage
        return self

    def with_confidence(self, confidence: float) -> "Response":
        self.confidence = confidence
        return self

    def with_metadata(self, key: str, value: str) -> "Response":
        self.metadata.append((key, value))
        return self

    def _to_wit(self):
        return _wit().Response(self.content, self.usage._to_wit(), self.confidence, list(self.metadata))

    @classmethod
    def _from_wit(cls, r) -> "Response":
        return cls(r.content, Usage._from_wit(r.usage), r.confidence, [(k, v) for k, v in r.metadata])


@dataclass
class ExpertInfo:
    """What an expert says about itself; routers read it."""

    name: str
    version: str = ""
    description: str = ""
    tags: List[str] = field(default_factory=list)
    examples: List[str] = field(default_factory=list)

    def _to_wit(self):
        return _wit().ExpertInfo(self.name, self.version, self.description, list(self.tags), list(self.examples))

    @classmethod
    def _from_wit(cls, i) -> "ExpertInfo":
        return cls(i.name, i.version, i.description, list(i.tags), list(i.examples))


@dataclass
class RouteChoice:
    """A router's choice: an expert and how well it fits (higher is better)."""

    name: str
    score: float

    def _to_wit(self):
        return _wit().RouteChoice(self.name, float(self.score))


@dataclass
class AdapterInfo:
    """What a fine-tune adapter says about its LoRA weights."""

    name: str
    base_model: str
    rank: int
    alpha: float
    target_modules: List[str] = field(default_factory=list)

    def _to_wit(self):
        return _wit().AdapterInfo(self.name, self.base_model, self.rank, float(self.alpha), list(self.target_modules))

