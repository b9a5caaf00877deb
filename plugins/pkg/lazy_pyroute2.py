"""Import pyroute2's IPRoute without running the package's eager __init__.

`import pyroute2` imports every subsystem it has (NDB, IPDB, the CLI, nl80211,
asyncio, unittest.mock, ...): about 130 ms, paid by every plugin exec. The netlink
classes themselves live in submodules that need ~50 ms. `install()` puts a light
package object in sys.modules in place of `pyroute2`, with the real search path, so
`import pyroute2.iproute.linux` loads only what it needs. `from pyroute2 import X`
still works: the common names resolve from their submodule, any other name loads
the real __init__ into the same module object first. Call it before anything
imports pyroute2; afterwards (or when the package cannot be found) it does nothing.
"""
from __future__ import annotations

import sys

_SUBMODULE_OF = {
    "IPRoute": "pyroute2.iproute.linux",
    "RawIPRoute": "pyroute2.iproute.linux",
    "IPBatch": "pyroute2.iproute.linux",
    "NetlinkError": "pyroute2.netlink.exceptions",
    "NetlinkDumpInterrupted": "pyroute2.netlink.exceptions",
    "NetlinkDecodeError": "pyroute2.netlink.exceptions",
}


def install() -> bool:
    """Make `pyroute2` a light package. True when this call installed it."""
    if "pyroute2" in sys.modules:
        return False
    import importlib.util
    import types
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.loader is None or not spec.submodule_search_locations:
        return False
    mod = types.ModuleType("pyroute2")
    mod.__spec__ = spec
    mod.__path__ = list(spec.submodule_search_locations)
    mod.__file__ = spec.origin
    mod.__loader__ = spec.loader
    mod.__package__ = "pyroute2"

    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        import importlib
        sub = _SUBMODULE_OF.get(name)
        if sub is not None:
            value = getattr(importlib.import_module(sub), name)
        elif importlib.util.find_spec(f"pyroute2.{name}") is not None:   # `from pyroute2 import config`
            value = importlib.import_module(f"pyroute2.{name}")
        else:
            del mod.__dict__["__getattr__"]       # run the real __init__ once, in place
            spec.loader.exec_module(mod)
            value = mod.__dict__.get(name)
            if value is None:
                raise AttributeError(f"module 'pyroute2' has no attribute {name!r}")
        setattr(mod, name, value)
        return value

    mod.__getattr__ = __getattr__
    sys.modules["pyroute2"] = mod
    return True
