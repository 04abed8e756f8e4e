"""`GET /metrics` (Prometheus text): for a bearer token with the admin role or the scrape token.

The scrape token is a static secret read from `http.metrics_token_file`, so a Prometheus server
without access to the identity provider can still scrape; it is compared in constant time.
Failures leave through the HTTP app's error boundary as 401/403 with RFC 6750 challenges.
"""

from __future__ import annotations

import asyncio
import hmac

from aiohttp import web

from gateway.auth.tokens import bearer_token
from gateway.domain.errors import Forbidden
from gateway.listeners.http import VALIDATOR
from gateway.metrics import CONTENT_TYPE, Metrics

METRICS = web.AppKey("metrics", Metrics)
SCRAPE_TOKEN = web.AppKey("metrics_scrape_token", str)
ADMIN_ROLE = "admin"


async def metrics(request: web.Request) -> web.Response:
    """The registry rendered in the Prometheus text exposition format."""
    token = bearer_token(request.headers.get("Authorization"))
    scrape = request.app[SCRAPE_TOKEN]
    if not (scrape and hmac.compare_digest(token.encode(), scrape.encode())):
        principal = request.app[VALIDATOR].validate(token)
        if ADMIN_ROLE not in principal.roles:
            raise Forbidden("metrics need the admin role or the scrape token")
    text = await asyncio.to_thread(request.app[METRICS].render)
    response = web.Response(text=text)
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


def add_metrics_route(app: web.Application, registry: Metrics, scrape_token: str = "") -> None:
    """Serve `registry` at /metrics on `app` (before the app is started)."""
    app[METRICS] = registry
    app[SCRAPE_TOKEN] = scrape_token
    app.router.add_get("/metrics", metrics)
