"""The host's language model (grant it with `model = true` under
`[capabilities]` in tessera.toml).

Every call raises a `TesseraError` when the host refuses it: `Denied`
without the grant, `LimitExceeded` past `limits.model-calls` or
`limits.generated-tokens` (`max_tokens` is clamped to what is left),
`InvalidInput` for a bad sampling field, naming it.
"""

from typing import List, Optional, Sequence

from ._call import call_host
from ._types import Completion, Message, Sampling


def _sampling(sampling: Optional[Sampling]):
    return (sampling or Sampling())._to_wit()


def chat(messages: Sequence[Message], sampling: Optional[Sampling] = None, adapter: Optional[str] = None) -> Completion:
    """Generate the assistant's next turn of a conversation (the model's
    chat template applied by the host)."""
    from wit_world.imports import model

    wit = call_host(model.chat, [m._to_wit() for m in messages], _sampling(sampling), adapter)
    return Completion._from_wit(wit)


def ask(question: str, sampling: Optional[Sampling] = None) -> Completion:
    """`chat` with one user message."""
    return chat([Message.user(question)], sampling)


def stream_answer(
    messages: Sequence[Message], sampling: Optional[Sampling] = None, adapter: Optional[str] = None
) -> Completion:
    """Like `chat`, but a streaming client sees the tokens as they are
    generated. Return a response that begins with this text
    (`Response.from_completion`)."""
    from wit_world.imports import model

    wit = call_host(model.stream_answer, [m._to_wit() for m in messages], _sampling(sampling), adapter)
    return Completion._from_wit(wit)


def complete(prompt: str, sampling: Optional[Sampling] = None, adapter: Optional[str] = None) -> Completion:
    """Continue a raw prompt (no chat template; markup in it is parsed)."""
    from wit_world.imports import model

    return Completion._from_wit(call_host(model.complete, prompt, _sampling(sampling), adapter))


def tokenize(text: str) -> List[int]:
    """The model's token ids for `text`."""
    from wit_world.imports import model

    return list(call_host(model.tokenize, text))


def score(prompt: str, continuation: str, adapter: Optional[str] = None) -> float:
    """Total log-probability of `continuation` after `prompt`."""
    from wit_world.imports import model

    return call_host(model.score, prompt, continuation, adapter)


def score_choices(prompt: str, continuations: Sequence[str], adapter: Optional[str] = None) -> List[float]:
    """`score` for many continuations of one prompt, in order; the prompt is
    read (and metered) once. At most 256 continuations, none empty."""
    from wit_world.imports import model

    return list(call_host(model.score_choices, prompt, list(continuations), adapter))


def embed(texts: Sequence[str]) -> List[List[float]]:
    """Sentence embeddings, one unit-length vector per text (at most 256)."""
    from wit_world.imports import model

    return [list(v) for v in call_host(model.embed, list(texts))]
