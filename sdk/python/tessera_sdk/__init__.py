"""tessera_sdk: write Tessera experts in Python.

An *expert* answers chat requests inside a sandboxed WebAssembly component:
`tessera build` compiles your `app.py`, CPython and this package into one
component with componentize-py. The host lends it the model (`model`), lets
it call other experts (`experts`) and records what it did (`log`).

    from tessera_sdk import Expert, Message, Request, Response, export_expert, model

    class Shout(Expert):
        def handle(self, req: Request) -> Response:
            question = req.require_user_message()
            answer = model.chat(
                [Message.system("Answer in one sentence."), Message.user(question)],
                req.sampling.replace(max_tokens=64),
            )
            return Response(answer.text.upper()).with_usage(answer.usage)

    WitWorld = export_expert(Shout)

What the expert says about itself (name, version, description, tags,
examples) is its `tessera.toml`: `tessera build` hands the manifest to this
package, and `describe()` answers with it. Routers (`Router`,
`export_router`) and fine-tune adapters (`Adapter`, `export_adapter`) are
written the same way.

Errors: raise `InvalidInput("what was wrong and how to fix it")` (or
`Denied`, `LimitExceeded`, `ModelError`, `Internal`); the caller sees the
message. A model call that fails raises one of them too. Any other
exception becomes an `internal` error carrying its type and message (and
its traceback goes to the log).

`import tessera_sdk` works in plain CPython too (the component's bindings
are only called when a call reaches the host), so your logic can be
unit-tested natively.
"""

from . import _bindings  # noqa: F401  (first: see its docstring)
from ._types import (
    AdapterInfo,
    Completion,
    ExpertInfo,
    FinishReason,
    Message,
    Request,
    Response,
    Role,
    RouteChoice,
    Sampling,
    TokenLogprob,
    Usage,
)
from ._errors import Denied, Internal, InvalidInput, LimitExceeded, ModelError, TesseraError
from ._export import Adapter, Expert, Router, export_adapter, export_expert, export_router
from . import experts, log, model

__all__ = [
    "Adapter",
    "AdapterInfo",
    "Completion",
    "Denied",
    "Expert",
    "ExpertInfo",
    "FinishReason",
    "Internal",
    "InvalidInput",
    "LimitExceeded",
    "Message",
    "ModelError",
    "Request",
    "Response",
    "Role",
    "RouteChoice",
    "Router",
    "Sampling",
    "TesseraError",
    "TokenLogprob",
    "Usage",
    "experts",
    "export_adapter",
    "export_expert",
    "export_router",
    "log",
    "model",
]
