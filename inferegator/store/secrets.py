"""API key and password material: generation, hashing, verification.

API keys are ``sk-inf-`` plus 32 random bytes (base64url); only their SHA-256 is
stored, with a short display prefix. Passwords are hashed with scrypt, a slow KDF.
"""

import base64
import functools
import hashlib
import hmac
import secrets
import sys

KEY_PREFIX = "sk-inf-"
_SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1}


def new_api_key() -> str:
    return KEY_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def display_prefix(key: str) -> str:
    """What lists show of a key: enough to recognise it, far too little to use it."""
    return key[:len(KEY_PREFIX) + 4] + "…"


def looks_like_key(token: str) -> bool:
    return token.startswith(KEY_PREFIX) and 20 <= len(token) <= 128


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    """scrypt, run in gevent's thread pool inside a gevent worker (hashlib releases the GIL
    while it works), so that a sign-in does not stall the API requests of its worker."""
    work = functools.partial(hashlib.scrypt, password.encode(), salt=salt, dklen=32, n=n,
                             r=r, p=p)
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("threading"):
        return sys.modules["gevent"].get_hub().threadpool.apply(work)
    return work()


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, **_SCRYPT)
    return "scrypt${n}${r}${p}$".format(**_SCRYPT) + \
        f"{salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        _, n, r, p, salt, digest = stored.split("$")
        computed = _scrypt(password, bytes.fromhex(salt), int(n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(computed.hex(), digest)


# Spent on unknown emails too, so that timing does not tell which accounts exist.
DUMMY_PASSWORD_HASH = hash_password(secrets.token_hex(8))
