"""Other experts (grant each by name under `capabilities.experts`)."""

from ._call import call_host
from ._types import Request, Response


def call(name: str, req: Request) -> Response:
    """Ask expert `name`. It runs inside what is left of your deadline,
    tokens, model calls and fuel, and what it spends is charged to you."""
    from wit_world.imports import experts

    return Response._from_wit(call_host(experts.call, name, req._to_wit()))
