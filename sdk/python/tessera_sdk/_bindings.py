"""Import, while componentize-py pre-initializes the component, every
module the SDK calls later: the component carries only the modules
imported at build time, so a lazy import at run time would fail. In plain
CPython (unit tests) these modules do not exist and are skipped."""

import importlib

for _name in (
    "componentize_py_types",
    "wit_world",
    "wit_world.imports.types",
    "wit_world.imports.model",
    "wit_world.imports.experts",
    "wit_world.imports.log",
    "tessera_manifest",
):
    try:
        importlib.import_module(_name)
    except ImportError:
        pass
