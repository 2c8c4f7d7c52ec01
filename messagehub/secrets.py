"""Encryption at rest of the passwords an inbox stores: IMAP and SMTP logins.

Each service that reads or writes such a password calls :func:`configure`
once in ``main()`` with ``Settings.encryption_keys``; from then on
:func:`encrypt` turns a password into a token for the database and
:func:`decrypt` turns the token back. Tokens are Fernet tokens
(AES-128-CBC with HMAC-SHA256, from the ``cryptography`` package), so a
token that was altered or made with another key fails to decrypt instead of
giving a wrong password.

Key rotation: ``encryption_keys`` is a comma-separated list of Fernet keys,
newest first. The first key encrypts; every key decrypts (MultiFernet).
Add a new key in front, run :func:`rotate` over the stored tokens, then drop
the old key.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

__all__ = [
    "SecretsError",
    "configure",
    "decrypt",
    "encrypt",
    "generate_key",
    "is_configured",
    "parse_keys",
    "rotate",
]


class SecretsError(ValueError):
    """A key is invalid or missing, or a token cannot be decrypted with the keys given.

    Not retriable: the same token and keys fail the same way.
    """

    retriable = False


_keyring: MultiFernet | None = None


def generate_key() -> str:
    """Return a new random Fernet key, for ``MESSAGEHUB_ENCRYPTION_KEYS``."""
    return Fernet.generate_key().decode("ascii")


def parse_keys(keys: str | Sequence[str]) -> MultiFernet:
    """Return a keyring of ``keys``, given as a list or as one comma-separated string."""
    if isinstance(keys, str):
        keys = [key.strip() for key in keys.split(",")]
    keys = [key for key in keys if key]
    if not keys:
        raise SecretsError(
            "missing encryption keys: set MESSAGEHUB_ENCRYPTION_KEYS to a key made with "
            "`python -c 'from messagehub import secrets; print(secrets.generate_key())'`")

    fernets = []
    for position, key in enumerate(keys, start=1):
        try:
            fernets.append(Fernet(key))
        except ValueError:
            # The key itself is a secret, so the message gives its position only.
            raise SecretsError(
                f"invalid encryption key number {position}: expected 32 bytes in url-safe base64, "
                "as made by generate_key()") from None
    return MultiFernet(fernets)


def configure(keys: str | Sequence[str]) -> None:
    """Set the process's keys; call once at start with ``Settings.encryption_keys``."""
    global _keyring
    _keyring = parse_keys(keys)


def is_configured() -> bool:
    """Tell whether :func:`configure` has been called."""
    return _keyring is not None


def _require_keyring() -> MultiFernet:
    if _keyring is None:
        raise SecretsError("encryption keys are not configured: call secrets.configure() in main()")
    return _keyring


def encrypt(text: str) -> str:
    """Return ``text`` encrypted with the newest key, as an ASCII token."""
    return _require_keyring().encrypt(text.encode("utf-8")).decode("ascii")


def decrypt(token: str) -> str:
    """Return the text of a token made by :func:`encrypt` with any configured key."""
    try:
        return _require_keyring().decrypt(token.encode("ascii")).decode("utf-8")
    except (InvalidToken, UnicodeError):
        raise SecretsError(
            "stored secret cannot be decrypted: it was encrypted with a key that is no longer "
            "in MESSAGEHUB_ENCRYPTION_KEYS, or it was altered; enter the password again") from None


def rotate(token: str) -> str:
    """Return ``token`` encrypted again with the newest key."""
    try:
        return _require_keyring().rotate(token.encode("ascii")).decode("ascii")
    except (InvalidToken, UnicodeError):
        raise SecretsError("stored secret cannot be rotated: no configured key decrypts it") from None
