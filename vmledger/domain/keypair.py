"""Key pairs: a user's public keys, event-sourced like servers.

A key pair belongs to a user and is named uniquely among that user's key pairs, so its
aggregate id is derived from (user, name): two requests importing the same name race
on the same aggregate and the loser gets the store's conflict (409). Deleting records
an event; importing the name again continues the same aggregate.

Only public keys are ever recorded. A key pair generated for a caller (microversions
before 2.92) returns its private key in that one response and nowhere else.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import uuid
from datetime import datetime

from eventsourcing.domain import Aggregate

from vmledger.domain.errors import BadRequest, Conflict
from vmledger.domain.server import Context, RequestEvent

SSH, X509 = "ssh", "x509"
KEY_TYPES = (SSH, X509)

#: key pairs one user may hold (Nova's default ``key_pairs`` quota)
MAX_KEYPAIRS_PER_USER = 100

_NAMESPACE = uuid.UUID("5b0e3c55-7f0e-4f45-9f55-2c1f7a4c9a10")
INVALID_KEY = "Keypair data is invalid: failed to generate fingerprint"


def keypair_id(user_id: str, name: str) -> uuid.UUID:
    """The aggregate id of ``user_id``'s key pair ``name``."""
    return uuid.uuid5(_NAMESPACE, f"{user_id}\n{name}")


def fingerprint(public_key: str, key_type: str = SSH) -> str:
    """Nova's fingerprint: MD5 of an SSH key's blob, SHA-1 of an x509 certificate's DER,
    as colon-separated hex. Raises :class:`BadRequest` for a key that does not parse."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    text = public_key.strip()
    try:
        if key_type == X509:
            certificate = x509.load_pem_x509_certificate(text.encode())
            digest = hashlib.sha1(certificate.public_bytes(  # Nova's format
                serialization.Encoding.DER), usedforsecurity=False).hexdigest()
        else:
            serialization.load_ssh_public_key(text.encode())
            blob = base64.b64decode(text.split()[1], validate=True)
            digest = hashlib.md5(blob, usedforsecurity=False).hexdigest()  # Nova's format
    except (ValueError, IndexError, TypeError, binascii.Error,
            NotImplementedError) as exc:  # the library's refusals of malformed keys
        raise BadRequest(INVALID_KEY) from exc
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def generate_ssh_key(comment: str) -> tuple[str, str]:
    """A new RSA key pair as (OpenSSH public key, PEM private key)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    private = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption()).decode()
    return f"{public} {comment}", private


def _hold(keypair: Keypair, public_key: str, key_fingerprint: str, key_type: str) -> None:
    keypair.public_key = public_key
    keypair.fingerprint = key_fingerprint
    keypair.key_type = key_type
    keypair.deleted = False


class Keypair(Aggregate):
    class Event(RequestEvent):
        pass

    class Imported(Aggregate.Created, Event):
        """The first key under this (user, name)."""

        name: str
        owner_user_id: str
        public_key: str
        fingerprint: str
        key_type: str

        def apply(self, keypair: Keypair) -> None:
            keypair.name = self.name
            keypair.owner_user_id = self.owner_user_id
            _hold(keypair, self.public_key, self.fingerprint, self.key_type)

    class Reimported(Event):
        """A key under a name that was deleted before."""

        public_key: str
        fingerprint: str
        key_type: str

        def apply(self, keypair: Keypair) -> None:
            _hold(keypair, self.public_key, self.fingerprint, self.key_type)

    class Deleted(Event):
        def apply(self, keypair: Keypair) -> None:
            keypair.deleted = True

    name: str
    owner_user_id: str
    public_key: str
    fingerprint: str
    key_type: str
    deleted: bool

    def __init__(self) -> None:
        """Fields are assigned by :meth:`Imported.apply`."""

    @classmethod
    def import_key(cls, *, ctx: Context, at: datetime, user_id: str, name: str,
                   public_key: str, key_type: str, key_fingerprint: str) -> Keypair:
        return cls._create(cls.Imported, id=keypair_id(user_id, name), timestamp=at,
                           **ctx.fields(), name=name, owner_user_id=user_id,
                           public_key=public_key, fingerprint=key_fingerprint,
                           key_type=key_type)

    def reimport(self, ctx: Context, at: datetime, *, public_key: str, key_type: str,
                 key_fingerprint: str) -> None:
        if not self.deleted:
            raise Conflict(f"Key pair '{self.name}' already exists.")
        self.trigger_event(self.Reimported, timestamp=at, **ctx.fields(),
                           public_key=public_key, fingerprint=key_fingerprint,
                           key_type=key_type)

    def delete(self, ctx: Context, at: datetime) -> None:
        if not self.deleted:
            self.trigger_event(self.Deleted, timestamp=at, **ctx.fields())
