"""Typed settings of every messagehub service, read once from the environment.

Each service calls :func:`load` in its ``main()`` and passes the returned
:class:`Settings` down; nothing reads the environment at import time. Every
key is declared once below with its type, default and environment variable
(``MESSAGEHUB_`` plus the field name in upper case), so the table here is the
reference for operators and for ``deploy/k8s/``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ENV_PREFIX = "MESSAGEHUB_"


class SettingsError(ValueError):
    """A setting is missing or its value cannot be used."""


def _setting(default: Any, doc: str) -> Any:
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class Settings:
    """The configuration of one service process."""

    kafka_bootstrap: str = _setting(
        "127.0.0.1:9092", "Kafka bootstrap servers, comma separated host:port pairs.")
    database_url: str = _setting(
        "postgresql://messagehub@127.0.0.1:5432/messagehub", "PostgreSQL connection URL.")
    topic_partitions: int = _setting(
        4, "Partitions of each messagehub topic when `messagehub up` creates them.")

    inbound_domain: str = _setting(
        "inbound.messagehub.localhost",
        "Domain of the generated forwarding addresses and of our reply addresses.")
    message_id_domain: str = _setting(
        "messagehub.localhost", "Domain part of the Message-IDs that messagehub generates.")

    ingest_smtp_host: str = _setting("127.0.0.1", "Address the forwarding SMTP receiver binds.")
    ingest_smtp_port: int = _setting(2525, "Port of the forwarding SMTP receiver.")
    ingest_max_message_bytes: int = _setting(
        50 * 1024 * 1024, "Largest mail the receiver accepts; advertised with SMTP SIZE.")
    ingest_http_host: str = _setting("127.0.0.1", "Address the raw-MIME HTTP upload binds.")
    ingest_http_port: int = _setting(8025, "Port of the raw-MIME HTTP upload.")
    ingest_http_token: str = _setting(
        "", "Bearer token the HTTP upload requires; when empty, uploads are refused.")
    imap_idle_reissue_seconds: float = _setting(
        600.0, "Longest time one IMAP IDLE command runs before DONE and a fresh check; at "
        "most 1740 (29 minutes). Shorter finds a silently dead connection sooner.")
    imap_poll_interval_seconds: float = _setting(
        60.0, "Interval between checks of a folder whose server has no IDLE.")
    imap_connect_timeout_seconds: float = _setting(15.0, "Timeout of an IMAP TCP/TLS connect.")
    imap_read_timeout_seconds: float = _setting(
        60.0, "Timeout of each IMAP socket read outside IDLE; a server silent for longer is "
        "treated as gone and the sync reconnects.")
    imap_fetch_batch: int = _setting(100, "Most mails fetched by one IMAP FETCH command.")
    imap_max_attempts: int = _setting(
        3, "Attempts at fetching one IMAP mail before it is quarantined.")
    imap_retry_base_seconds: float = _setting(
        60.0, "Wait before the second attempt at a failed IMAP mail; it doubles per attempt.")
    imap_reconnect_max_seconds: float = _setting(
        300.0, "Longest wait between IMAP reconnects after network or server errors.")
    imap_auth_retry_seconds: float = _setting(
        300.0, "First wait after an IMAP login or TLS failure; it doubles up to an hour.")
    imap_reconcile_seconds: float = _setting(
        60.0, "Interval at which ingest compares its running IMAP syncs with the database.")

    relay_smtp_host: str = _setting(
        "127.0.0.1", "SMTP relay for inboxes without SMTP settings of their own.")
    relay_smtp_port: int = _setting(25, "Port of the SMTP relay.")
    smtp_timeout_seconds: float = _setting(30.0, "Timeout of each SMTP connection and command.")
    relay_smtp_encryption: str = _setting(
        "auto", "TLS of the relay: auto (implicit TLS on port 465, STARTTLS otherwise), tls, "
        "starttls, or none (plaintext, for a relay on a loopback address).")
    relay_smtp_username: str = _setting("", "Login at the relay; empty means no AUTH.")
    relay_smtp_password: str = _setting("", "Password at the relay; keep it in a Secret.")
    smtp_greeting_timeout_seconds: float = _setting(
        10.0, "Time to wait for a server's SMTP greeting after connecting; a server that accepts "
        "the connection but stays silent usually expects implicit TLS.")
    smtp_max_attempts: int = _setting(
        8, "Attempts of one send on temporary SMTP failures, with exponential backoff.")
    smtp_first_backoff_seconds: float = _setting(
        1.0, "Wait before the second attempt of a send; it doubles per attempt, up to 60 s.")
    tls_ca_file: str = _setting(
        "", "PEM file of extra CA certificates trusted for SMTP and IMAP, besides the system's.")
    outbound_max_sends_per_minute: int = _setting(
        120, "Mails one inbox may send per minute when its SMTP settings do not say otherwise.")
    auto_mail_max_per_conversation: int = _setting(
        5, "Automatic mails (greeting, out-of-hours note, survey) one recipient gets per "
        "conversation, at most.")
    auto_mail_max_per_recipient_hour: int = _setting(
        3, "Automatic mails one recipient gets from one inbox per hour, at most.")
    auto_mail_new_conversation_pause_minutes: int = _setting(
        10, "Minutes after a greeting or out-of-hours note during which the same recipient "
        "gets none in another conversation of the inbox; stops autoresponders that answer "
        "with a fresh subject.")
    public_base_url: str = _setting(
        "", "Base URL at which customers reach the API, for survey links; empty means "
        "http://API_HOST:API_PORT.")
    csat_survey_valid_days: int = _setting(
        30, "Days a satisfaction survey link can be answered after the mail was sent.")

    metrics_host: str = _setting("127.0.0.1", "Address the /metrics endpoint binds.")
    metrics_port: int = _setting(9100, "Port of this service's /metrics endpoint.")
    api_host: str = _setting("127.0.0.1", "Address the HTTP API binds.")
    api_port: int = _setting(8080, "Port of the HTTP API.")
    api_token: str = _setting(
        "", "Bootstrap admin token of the HTTP API, with which an operator creates scoped "
        "tokens; when empty, only tokens stored in the database are accepted.")
    connection_test_timeout_seconds: float = _setting(
        20.0, "Longest time an IMAP or SMTP connection test of the API takes; each network "
        "step gets half of it, at most 10 s.")

    secret_key: str = _setting(
        "", "Server secret (at least 32 characters) for reply tokens; keep it in a Secret.")
    encryption_keys: str = _setting(
        "", "Fernet keys, comma separated, newest first, that encrypt stored IMAP and SMTP "
        "passwords; keep them in a Secret.")

    stage_lanes: int = _setting(
        3, "Transactions the router and assign workers run at once, each for different "
        "inboxes; one inbox's records always go through one lane in order. 1 applies every "
        "record of a batch one after the other.")

    log_level: str = _setting("INFO", "Level of the root logger: DEBUG, INFO, WARNING or ERROR.")
    faust_data_dir: str = _setting(
        "/var/tmp/messagehub/faust", "Folder where the faust workers keep their local state.")

    def __post_init__(self) -> None:
        for name in ("topic_partitions", "ingest_smtp_port", "relay_smtp_port",
                     "metrics_port", "api_port", "ingest_max_message_bytes",
                     "ingest_http_port", "imap_fetch_batch", "imap_max_attempts",
                     "imap_poll_interval_seconds", "imap_read_timeout_seconds",
                     "smtp_max_attempts", "outbound_max_sends_per_minute",
                     "auto_mail_max_per_conversation", "auto_mail_max_per_recipient_hour",
                     "auto_mail_new_conversation_pause_minutes",
                     "csat_survey_valid_days", "smtp_greeting_timeout_seconds",
                     "connection_test_timeout_seconds", "stage_lanes"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{ENV_PREFIX}{name.upper()} must be > 0")
        if self.secret_key and len(self.secret_key) < 32:
            raise SettingsError(f"{ENV_PREFIX}SECRET_KEY must be at least 32 characters")
        if self.relay_smtp_encryption not in ("auto", "tls", "starttls", "none"):
            raise SettingsError(f"{ENV_PREFIX}RELAY_SMTP_ENCRYPTION is invalid: "
                                f"{self.relay_smtp_encryption!r}: use auto, tls, starttls or none")
        if not 0 < self.imap_idle_reissue_seconds <= 1740:
            raise SettingsError(f"{ENV_PREFIX}IMAP_IDLE_REISSUE_SECONDS must be > 0 and at most "
                                f"1740 (29 minutes): {self.imap_idle_reissue_seconds!r}")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise SettingsError(f"{ENV_PREFIX}LOG_LEVEL is invalid: {self.log_level!r}")


def require_secret_key(settings: Settings) -> str:
    """Return the secret key, or raise when the deployment did not set one."""
    if not settings.secret_key:
        raise SettingsError(f"{ENV_PREFIX}SECRET_KEY is not set: generate one with "
                            "`python -c 'import secrets; print(secrets.token_urlsafe(48))'`")
    return settings.secret_key


def env_name(field_name: str) -> str:
    """Return the environment variable that sets ``field_name``."""
    return ENV_PREFIX + field_name.upper()


def load(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build the settings from the environment, then from ``overrides``."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}

    for settings_field in dataclasses.fields(Settings):
        raw = environ.get(env_name(settings_field.name))
        if raw is None:
            continue
        values[settings_field.name] = _convert(settings_field, raw)

    values.update(overrides)
    return Settings(**values)


def _convert(settings_field: dataclasses.Field[Any], raw: str) -> Any:
    target = type(settings_field.default)
    try:
        return target(raw)
    except ValueError:
        raise SettingsError(
            f"{env_name(settings_field.name)} must be {target.__name__}: {raw!r}") from None


def as_environment(settings: Settings) -> dict[str, str]:
    """Return the variables that reproduce ``settings`` in a child process."""
    return {env_name(f.name): str(getattr(settings, f.name)) for f in dataclasses.fields(settings)}
