"""Entry point of the outbound service: ``python -m services.outbound``.

Consumes ``outbound.requests`` and ``conversation.events`` (for surveys on
resolution); sends mail over each inbox's SMTP server or the operator's
relay and produces ``mail.sent`` and ``mail.failed``.
"""

from __future__ import annotations

from datetime import timedelta

from messagehub import secrets, topics
from messagehub import settings as settings_module
from messagehub.service import run_stage_service
from messagehub.settings import Settings
from messagehub.smtp_client import SmtpDelivery, SmtpServer, tls_context
from services.outbound.limits import AutomaticMailCaps
from services.outbound.stage import OutboundStage


def build_stage(settings: Settings) -> OutboundStage:
    """Return the stage wired to the settings' relay, limits and survey links."""
    if settings.encryption_keys:
        secrets.configure(settings.encryption_keys)
    context = tls_context(settings.tls_ca_file)
    relay = SmtpServer(
        host=settings.relay_smtp_host, port=settings.relay_smtp_port,
        username=settings.relay_smtp_username, password=settings.relay_smtp_password,
        encryption=settings.relay_smtp_encryption)
    delivery = SmtpDelivery(
        command_timeout_seconds=settings.smtp_timeout_seconds,
        greeting_timeout_seconds=settings.smtp_greeting_timeout_seconds,
        max_attempts=settings.smtp_max_attempts,
        first_backoff_seconds=settings.smtp_first_backoff_seconds,
        default_helo=settings.message_id_domain, tls_context=context)
    return OutboundStage(
        delivery=delivery, relay=relay, message_id_domain=settings.message_id_domain,
        inbound_domain=settings.inbound_domain,
        secret_key=settings_module.require_secret_key(settings),
        survey_base_url=settings.public_base_url
        or f"http://{settings.api_host}:{settings.api_port}",
        survey_valid_days=settings.csat_survey_valid_days,
        caps=AutomaticMailCaps(max_per_conversation=settings.auto_mail_max_per_conversation,
                               max_per_hour=settings.auto_mail_max_per_recipient_hour,
                               new_conversation_pause=timedelta(
                                   minutes=settings.auto_mail_new_conversation_pause_minutes)),
        default_max_per_minute=settings.outbound_max_sends_per_minute,
        imap_tls_context=context)


def main() -> None:
    settings = settings_module.load()
    run_stage_service("messagehub-outbound", settings, build_stage(settings),
                      source_topics=[topics.OUTBOUND_REQUESTS, topics.CONVERSATION_EVENTS],
                      dead_letter_topic=topics.OUTBOUND_DEAD_LETTER)


if __name__ == "__main__":
    main()
