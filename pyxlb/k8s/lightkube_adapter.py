"""Where pyxlb goes past lightkube's public API: the one module that may.

Written against lightkube 1.0.1 (pyproject.toml pins lightkube>=1.0,<2). Two things the
informers need that ``Client.watch`` does not offer in that version:

- **bookmarks**: ``Client.watch`` builds its request from a fixed set of parameters, none of
  them ``allowWatchBookmarks``. Without bookmarks a quiet watch never moves its
  resourceVersion forward, and a resumed watch may ask for history the server has
  compacted (410 Gone, then a full list). So the request is built with the generic client's
  ``prepare_request``, which takes any parameters, exactly as ``Client.watch`` builds its
  own.
- **a read timeout on the stream**: the generic client reads watch streams with no read
  timeout at all (``GenericClient._watch_timeout.read = None``), so a half-open TCP
  connection would stall an informer for ever. It is set here to a little past the
  server-side ``timeoutSeconds``, after which a healthy server always ends the stream.

If a later lightkube offers either through ``Client.watch``, this module is what changes.
"""

from __future__ import annotations

from typing import Iterator, List, Optional, Tuple

from lightkube.core.resource import NamespacedResource, NamespacedSubResource
from lightkube.types import on_error_raise

# how long past the server's timeoutSeconds a silent stream is given before it counts as dead
STALL_MARGIN = 15


def is_namespaced(resource) -> bool:
    """Whether a lightkube resource class lives in namespaces."""
    return issubclass(resource, (NamespacedResource, NamespacedSubResource))


def list_objects(client, resource, namespace: Optional[str]) -> Tuple[List, Optional[str]]:
    """Every object of `resource` in `namespace` ("*": all; None: cluster-scoped), and the
    list's resourceVersion (None if the server gave none)."""
    items = client.list(resource, namespace=namespace)
    objects = list(items)
    try:
        rv = items.resourceVersion      # set by lightkube once the list has been read
    except Exception:
        rv = None
    return objects, rv


def watch(client, resource, namespace: Optional[str], *, server_timeout: int,
          resource_version: Optional[str]) -> Iterator[Tuple[str, object]]:
    """(event type, object) from a watch with bookmarks, resumed by lightkube from the last
    resourceVersion whenever the server ends the stream; errors are raised."""
    generic = client._client
    request = generic.prepare_request(
        "list", res=resource, namespace=namespace, watch=True,
        params={"timeoutSeconds": server_timeout, "resourceVersion": resource_version,
                "allowWatchBookmarks": "true"})
    generic._watch_timeout.read = server_timeout + STALL_MARGIN
    return generic.watch(request, on_error=on_error_raise)
