"""API keys at rest: Fernet tokens under the configured keys (newest first), so a key rotation is
`LLMHUB_ENCRYPTION_KEYS=new,old` followed by `manage.py rotate_encryption_key`."""

import base64
import hashlib
from functools import cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings

from llmhub.errors import ConfigurationError


@cache
def _fernet() -> MultiFernet:
    keys = list(settings.ENCRYPTION_KEYS)
    if not keys:
        # Embedded mode only (settings refuse to start production without keys).
        derived = hashlib.sha256(b"llmhub-encryption:" + settings.SECRET_KEY.encode()).digest()
        keys = [base64.urlsafe_b64encode(derived).decode()]
    return MultiFernet([Fernet(key) for key in keys])


def secret_encrypt(plain: str) -> str:
    return _fernet().encrypt(plain.encode()).decode() if plain else ""


def _undecryptable() -> ConfigurationError:
    # Never the token itself: the message reaches logs and, as a 500, API clients.
    return ConfigurationError(
        "A stored API key cannot be decrypted with the configured encryption keys.",
        code="undecryptable_secret",
        status=500,
    )


def secret_decrypt(token: str) -> str:
    if not token:
        return ""
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise _undecryptable() from None


def secret_rotate(token: str) -> str:
    if not token:
        return ""
    try:
        return _fernet().rotate(token.encode()).decode()
    except InvalidToken:
        raise _undecryptable() from None


def secret_last4(plain: str) -> str:
    return plain[-4:] if len(plain) >= 12 else ""


def reset_cache() -> None:
    _fernet.cache_clear()
