"""A Python component that misbehaves on request (containment tests):
`spin` loops forever, `hog` allocates until memory runs out, anything
else is echoed."""

from tessera_sdk import Expert, Request, Response, export_expert


class Hostile(Expert):
    def handle(self, req: Request) -> Response:
        what = req.require_user_message()
        if what == "spin":
            n = 0
            while True:
                n += 1
        if what == "hog":
            hoard = []
            while True:
                hoard.append(bytearray(1 << 20))
        return Response(what)


WitWorld = export_expert(Hostile)
