"""kubernetes_asyncio's configuration and transport without its generated models.

The service sends and reads plain JSON (``webhook.kube``), so of kubernetes_asyncio it needs the
kubeconfig/in-cluster loaders, ``Configuration`` (TLS, tokens and their refresh) and
``ApiClient.call_api``. Importing ``kubernetes_asyncio.client`` the usual way also imports about a
thousand generated model and API classes: 56 MiB of the service's memory for nothing. Here the
``kubernetes_asyncio``, ``.client`` and ``.models`` packages are registered empty before anything imports
them, so only the modules named below load; the first access to any other name (a library in the
same process that uses the models, e.g. KubeSpawner in a hub) loads the real package in place, so
nobody else sees a difference.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any


def _lazy_package(name: str) -> types.ModuleType:
    """An empty package ``name``: an unknown attribute that names a submodule imports just that
    one (``from package import submodule`` asks for the attribute first); any other runs the
    package's ``__init__`` in place."""
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin is not None and spec.submodule_search_locations is not None
    origin = spec.origin
    module = types.ModuleType(name)
    module.__file__ = origin
    module.__path__ = list(spec.submodule_search_locations)
    module.__package__ = name
    module.__spec__ = spec
    state = {"loaded": False}

    def load_all(attr: str) -> Any:
        if attr.startswith("__") and attr not in ("__all__", "__version__", "__project__"):  # probes
            raise AttributeError(f"module {name!r} has no attribute {attr!r}")
        if importlib.util.find_spec(f"{name}.{attr}") is not None:  # a submodule: only that one
            return importlib.import_module(f"{name}.{attr}")
        if state["loaded"]:
            raise AttributeError(f"module {name!r} has no attribute {attr!r}")
        state["loaded"] = True
        code = compile(Path(origin).read_text(), origin, "exec")
        exec(code, module.__dict__)  # noqa: S102 - the package's own __init__, run in place
        return getattr(module, attr)

    module.__getattr__ = load_all  # type: ignore[method-assign]
    return module


def _install() -> None:
    if "kubernetes_asyncio.client" in sys.modules:
        return  # already imported (fully, or lean by an earlier call)
    top = sys.modules.get("kubernetes_asyncio")
    if top is None:  # its __init__ imports every subpackage (the dynamic client pulls in jsonschema)
        top = sys.modules["kubernetes_asyncio"] = _lazy_package("kubernetes_asyncio")
    client = sys.modules["kubernetes_asyncio.client"] = _lazy_package("kubernetes_asyncio.client")
    models = sys.modules["kubernetes_asyncio.client.models"] = _lazy_package("kubernetes_asyncio.client.models")
    top.client = client  # type: ignore[attr-defined]
    client.models = models  # type: ignore[attr-defined]
    from kubernetes_asyncio.client import api_client, configuration, exceptions, rest

    client.ApiClient = api_client.ApiClient  # type: ignore[attr-defined]
    client.Configuration = configuration.Configuration  # type: ignore[attr-defined]
    client.ApiException = exceptions.ApiException  # type: ignore[attr-defined]
    client.rest = rest  # type: ignore[attr-defined]


_install()

from kubernetes_asyncio import config as k8s_config  # noqa: E402 - after the lean client is in place
from kubernetes_asyncio.client.api_client import ApiClient  # noqa: E402
from kubernetes_asyncio.client.configuration import Configuration  # noqa: E402

__all__ = ["ApiClient", "Configuration", "k8s_config"]
