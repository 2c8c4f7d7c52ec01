"""Entry point of the router service: ``python -m services.router``.

Consumes ``mail.received``, ``mail.sent`` and ``mail.failed`` and produces
``conversation.events``; records it cannot handle go to
``router.dead-letter``.
"""

from __future__ import annotations

from messagehub import settings as settings_module
from messagehub import topics
from messagehub.service import run_stage_service
from services.router.stage import RouterStage


def main() -> None:
    settings = settings_module.load()
    stage = RouterStage(secret_key=settings_module.require_secret_key(settings),
                        inbound_domain=settings.inbound_domain,
                        message_id_domain=settings.message_id_domain)
    run_stage_service("messagehub-router", settings, stage,
                      source_topics=[topics.MAIL_RECEIVED, topics.MAIL_SENT, topics.MAIL_FAILED],
                      dead_letter_topic=topics.ROUTER_DEAD_LETTER, lanes=settings.stage_lanes)


if __name__ == "__main__":
    main()
