"""Entry point of the outbound service: ``python -m services.outbound``.

Consumes ``outbound.requests``; sends mail over SMTP and produces
``mail.sent`` and ``mail.failed``.
"""

from __future__ import annotations

from messagehub import settings as settings_module
from messagehub import topics
from messagehub.service import run_stage_service
from services.outbound.smtp import SmtpDelivery, SmtpServer
from services.outbound.stage import OutboundStage


def main() -> None:
    settings = settings_module.load()
    relay = SmtpServer(host=settings.relay_smtp_host, port=settings.relay_smtp_port)
    stage = OutboundStage(
        delivery=SmtpDelivery(relay, timeout_seconds=settings.smtp_timeout_seconds),
        message_id_domain=settings.message_id_domain, inbound_domain=settings.inbound_domain)
    run_stage_service("messagehub-outbound", settings, stage,
                      source_topics=[topics.OUTBOUND_REQUESTS],
                      dead_letter_topic=topics.OUTBOUND_DEAD_LETTER)


if __name__ == "__main__":
    main()
