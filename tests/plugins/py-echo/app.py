"""Repeats the last user message: the trivial Python expert of the benches."""

from tessera_sdk import Expert, Request, Response, export_expert


class Echo(Expert):
    def handle(self, req: Request) -> Response:
        return Response(req.require_user_message())


WitWorld = export_expert(Echo)
