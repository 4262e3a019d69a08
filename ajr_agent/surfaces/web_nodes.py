"""The handlers of the cockpit's nodes API (web_routes.NODE_ROUTES): the node ledger (`GET /api/nodes`) and
an operator's forgiveness of a node (`POST /api/nodes/forgive?node=NODE`), part of web.Service."""

from __future__ import annotations

import logging
import time
from contextlib import closing
from typing import Callable

from ajr_agent.adapters.store import Store
from ajr_agent.surfaces import operator
from ajr_agent.surfaces.http_reply import Reply
from ajr_agent.views import queries
from ajr_agent.views.nodes import ForgiveQuery, node_list

log = logging.getLogger(__name__)

class NodeHandlers:
    """web.Service's handlers of NODE_ROUTES."""

    _store: Callable[[], Store]
    origin: str  # the journal's origin of the cockpit's operator actions

    def get_nodes(self, query: None, client: str) -> Reply:
        """GET /api/nodes."""
        with closing(self._store()) as store:
            return Reply.json(node_list(store, time.time()))

    def post_forgive(self, query: ForgiveQuery, client: str) -> Reply:
        """POST /api/nodes/forgive?node=NODE."""
        with closing(self._store()) as store:
            try:
                result = operator.forgive(store, query.node, self.origin, time.time())
            except operator.UnknownNode as exc:
                raise queries.NotFound(str(exc)) from exc
        log.warning("node %s: operator (cockpit, %s) forgave it", query.node, client)
        return Reply.json(result)
