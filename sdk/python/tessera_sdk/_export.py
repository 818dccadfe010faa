"""Base classes for experts, routers and adapters, and the functions that
turn one into the component's `WitWorld` (what componentize-py exports)."""

import traceback
from typing import List

from ._errors import Internal, TesseraError, to_wit
from ._types import AdapterInfo, ExpertInfo, Request, Response, RouteChoice


class Expert:
    """An expert: answers requests. A fresh instance of the component
    handles every request, so keep no state between calls."""

    def handle(self, req: Request) -> Response:
        """Answer one request."""
        raise NotImplementedError("an Expert must define handle(self, req) -> Response")

    def describe(self, manifest: ExpertInfo) -> ExpertInfo:
        """What the component answers to `describe()`, given its
        tessera.toml. Keep the default: the host takes the name,
        description, tags and examples from the manifest anyway."""
        return manifest


class Router:
    """A router: ranks candidate experts for a request, best first."""

    def route(self, req: Request, candidates: List[ExpertInfo]) -> List[RouteChoice]:
        """Rank `candidates`; an empty list lets the base model answer."""
        raise NotImplementedError("a Router must define route(self, req, candidates)")


class Adapter:
    """A fine-tune adapter's hooks around the generation."""

    def describe(self) -> AdapterInfo:
        """Base model, rank, alpha and target modules of the LoRA weights."""
        raise NotImplementedError("an Adapter must define describe(self) -> AdapterInfo")

    def pre_request(self, req: Request) -> Request:
        """Rewrite a request before the model sees it."""
        return req

    def post_response(self, resp: Response) -> Response:
        """Rewrite a response before the caller sees it."""
        return resp


def _manifest() -> ExpertInfo:
    try:
        from tessera_manifest import MANIFEST  # written by `tessera build`
    except ImportError:
        raise Internal(
            "tessera_manifest is missing: build the expert with `tessera build`, which hands it the manifest"
        ) from None
    return ExpertInfo(
        MANIFEST["name"], MANIFEST["version"], MANIFEST["description"], list(MANIFEST["tags"]), list(MANIFEST["examples"])
    )


def _guard(what: str, call):
    """Run `call`; turn an exception into the WIT error the caller sees."""
    from componentize_py_types import Err

    try:
        return call()
    except TesseraError as e:
        raise Err(to_wit(e)) from None
    except Exception as e:
        from . import log

        log.error(f"{what} raised {type(e).__name__}", traceback="".join(traceback.format_exc(limit=20)))
        raise Err(to_wit(e)) from None


def _expect(value, kind, what: str):
    if not isinstance(value, kind):
        raise Internal(f"{what} returned {type(value).__name__}; return a tessera_sdk.{kind.__name__}")
    return value


def _world_base():
    """The generated `WitWorld` protocol when building, else `object` (so
    that app.py imports natively, for unit tests)."""
    try:
        import wit_world

        return wit_world.WitWorld
    except ImportError:
        return object


def export_expert(cls):
    """The `WitWorld` class for expert `cls`: `WitWorld = export_expert(MyExpert)`."""
    name = cls.__name__

    class WitWorld(_world_base()):
        def describe(self):
            info = _guard(f"{name}.describe", lambda: cls().describe(_manifest()))
            return _expect(info, ExpertInfo, f"{name}.describe")._to_wit()

        def handle(self, req):
            def run():
                resp = cls().handle(Request._from_wit(req))
                return _expect(resp, Response, f"{name}.handle")._to_wit()

            return _guard(f"{name}.handle", run)

    return WitWorld


def export_router(cls):
    """The `WitWorld` class for router `cls`: `WitWorld = export_router(MyRouter)`."""
    name = cls.__name__

    class WitWorld(_world_base()):
        def route(self, req, candidates):
            def run():
                choices = cls().route(Request._from_wit(req), [ExpertInfo._from_wit(c) for c in candidates])
                return [_expect(c, RouteChoice, f"{name}.route")._to_wit() for c in choices]

            return _guard(f"{name}.route", run)

    return WitWorld


def export_adapter(cls):
    """The `WitWorld` class for adapter `cls`: `WitWorld = export_adapter(MyAdapter)`."""
    name = cls.__name__

    class WitWorld(_world_base()):
        def describe(self):
            info = _guard(f"{name}.describe", lambda: cls().describe())
            return _expect(info, AdapterInfo, f"{name}.describe")._to_wit()

        def pre_request(self, req):
            def run():
                out = cls().pre_request(Request._from_wit(req))
                return _expect(out, Request, f"{name}.pre_request")._to_wit()

            return _guard(f"{name}.pre_request", run)

        def post_response(self, resp):
            def run():
                out = cls().post_response(Response._from_wit(resp))
                return _expect(out, Response, f"{name}.post_response")._to_wit()

            return _guard(f"{name}.post_response", run)

    return WitWorld
