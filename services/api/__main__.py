"""Entry point of the API service: ``python -m services.api``.

The HTTP control plane (see :mod:`services.api.app`): inboxes and their
settings, agents, conversation actions, connection tests, tokens and dead
letters, and the CSAT survey page. It applies the schema, configures the
encryption keys that protect stored IMAP and SMTP passwords, serves
``/metrics`` and then the API.
"""

from __future__ import annotations

import logging

import psycopg
from aiohttp import web

from messagehub import db, logs, metrics, secrets
from messagehub import settings as settings_module
from services.api.app import create_app

log = logging.getLogger("services.api")


def main() -> None:
    settings = settings_module.load()
    logs.setup(settings.log_level)
    if settings.encryption_keys:
        secrets.configure(settings.encryption_keys)
    else:
        log.warning("api: MESSAGEHUB_ENCRYPTION_KEYS is not set: IMAP and SMTP passwords "
                    "cannot be stored or tested")
    if not settings.api_token:
        log.warning("api: MESSAGEHUB_API_TOKEN is not set: only tokens already in the "
                    "database are accepted")
    try:
        db.apply_schema(settings.database_url)
    except psycopg.OperationalError as exc:
        log.error("api: database unavailable: %s", exc)
        raise SystemExit(1) from None
    metrics.serve(settings.metrics_host, settings.metrics_port)
    log.info("api: listening on %s:%d", settings.api_host, settings.api_port)
    web.run_app(create_app(settings), host=settings.api_host, port=settings.api_port,
                print=None, access_log=None)


if __name__ == "__main__":
    main()
