"""Device keys: generation, keyed hashing, sealed delivery, replay encryption. Pure, sync.

- A device key is 160 bits from the OS CSPRNG, as 40 lowercase hex characters.
- The database keeps only HMAC-SHA256(key) under a key derived from the server
  secret, with a short id of that secret so that a rotated secret can still
  verify keys hashed under the old one.
- Sealed delivery follows protocol v1: X25519 + HKDF-SHA256 + ChaCha20-Poly1305,
  with the request id as associated data.
- Replies kept for idempotent retry are encrypted under a second key derived
  from the server secret, so a database dump holds no usable key.
- Device proof (models that opt in): a model's enrollment key (32 random bytes, kept
  only encrypted under the server secret) derives each device's factory secret, and
  the request proves that secret with an HMAC over its client id and request id.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SEAL_ALG = "x25519-hkdf-sha256-chacha20poly1305"
SEAL_INFO = b"provisioning-bridge/v1 key"
KEY_BYTES = 20  # 160 bits: the classic 40-hex-character CIK shape.


def generate_key(nbytes: int = KEY_BYTES) -> str:
    """A fresh device key as lowercase hex."""
    return secrets.token_hex(nbytes)


def _derive(secret: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(secret)


class KeyHasher:
    """Keyed hash of device keys under the server secret, verifiable under older ones.

    New keys are hashed under the current secret and stored with its ``key_id``;
    a key hashed under a previous secret still verifies while that secret is
    listed in ``previous``, which is how the secret rotates without invalidating
    the keys already issued.
    """

    def __init__(self, secret: bytes, previous: Sequence[bytes] = ()) -> None:
        self.key_id = _key_id(secret)
        self._mac_key = _derive(secret, b"provisioning-bridge/v1 key-hash")
        self._mac_keys = {
            _key_id(old): _derive(old, b"provisioning-bridge/v1 key-hash") for old in previous
        }
        self._mac_keys[self.key_id] = self._mac_key

    def __repr__(self) -> str:
        return f"KeyHasher(key_id={self.key_id!r}, known={len(self._mac_keys)})"

    @property
    def known_ids(self) -> frozenset[str]:
        """Ids of every secret this hasher can verify under (current and previous)."""
        return frozenset(self._mac_keys)

    def hash(self, key_hex: str) -> bytes:
        """The keyed hash of a new key, under the current secret."""
        return _mac(self._mac_key, key_hex)

    def verify(self, key_hex: str, stored: bytes, key_id: str | None = None) -> bool:
        """Whether ``key_hex`` is the key whose hash is ``stored``, in constant time.

        ``key_id`` names the secret the stored hash was made under (the current
        one when omitted); a secret this hasher does not know verifies nothing.
        """
        mac_key = self._mac_keys.get(key_id or self.key_id)
        if mac_key is None:
            return False
        try:
            presented = _mac(mac_key, key_hex)
        except UnicodeEncodeError:  # not a hex key at all: cannot match
            return False
        return hmac.compare_digest(presented, stored)


def _key_id(secret: bytes) -> str:
    # The id names the secret without revealing it: a hash of a derived key.
    return hashlib.sha256(_derive(secret, b"provisioning-bridge/v1 key-id")).hexdigest()[:16]


def _mac(mac_key: bytes, key_hex: str) -> bytes:
    return hmac.new(mac_key, key_hex.encode("ascii"), hashlib.sha256).digest()


class ReplayCipher:
    """Encrypts replies kept for idempotent retry; the associated data binds a row.

    Encrypts under the current secret; decrypts under it or any previous one, so
    replies stored just before a rotation can still be resent.
    """

    def __init__(self, secret: bytes, previous: Sequence[bytes] = ()) -> None:
        self._aead = ChaCha20Poly1305(_derive(secret, b"provisioning-bridge/v1 replay"))
        self._older = [
            ChaCha20Poly1305(_derive(old, b"provisioning-bridge/v1 replay")) for old in previous
        ]

    def __repr__(self) -> str:
        return "ReplayCipher(<secret>)"

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def decrypt(self, blob: bytes, aad: bytes) -> bytes | None:
        """The plaintext, or None when no known secret made the blob or it was altered."""
        for aead in (self._aead, *self._older):
            try:
                return aead.decrypt(blob[:12], blob[12:], aad)
            except (InvalidTag, ValueError):
                continue
        return None


#: A fixed scalar to try a device's public key with. A low-order point gives the all-zero
#: shared secret with every (clamped) scalar, so one trial tells; the scalar protects nothing.
_PROBE = X25519PrivateKey.from_private_bytes(bytes(range(32)))


def decode_public_key(b64: str) -> bytes:
    """The 32 raw bytes of a usable standard-base64 X25519 public key, or ValueError.

    Usable means a key exchange with it works: a low-order point (32 zero bytes, 1, the
    points of order 4 and 8 and their non-canonical encodings) makes every shared secret
    all zeros, which OpenSSL refuses at exchange time. Refused here, before the database
    and before sealing, so it is the device's ``malformed`` and never the bridge's crash.
    """
    raw = base64.b64decode(b64.encode("ascii"), validate=True)
    if len(raw) != 32:
        raise ValueError(f"public_key must decode to 32 bytes, not {len(raw)}")
    try:
        _PROBE.exchange(X25519PublicKey.from_public_bytes(raw))
    except ValueError:
        raise ValueError(
            "it is a low-order point: every shared secret with it would be all zeros"
        ) from None
    return raw


def _aead_key(shared: bytes, epk: bytes, device_public: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=epk + device_public, info=SEAL_INFO
    ).derive(shared)


def seal(key_hex: str, device_public: bytes, request_id: str) -> dict[str, str]:
    """Encrypt a key so only the holder of the device's X25519 private key reads it."""
    return _seal(key_hex, device_public, request_id, X25519PrivateKey.generate(), os.urandom(12))


def seal_for_vectors(
    key_hex: str, device_public: bytes, request_id: str, ephemeral_private: bytes, nonce: bytes
) -> dict[str, str]:
    """:func:`seal` with a given ephemeral key and nonce: for test vectors only.

    The published vectors (``schemas/wire/vectors.json``) need every input fixed so
    that another implementation can compare bytes. The bridge itself never calls this:
    a fixed ephemeral key or nonce used twice would give the sealing away.
    """
    return _seal(
        key_hex,
        device_public,
        request_id,
        X25519PrivateKey.from_private_bytes(ephemeral_private),
        nonce,
    )


def _seal(
    key_hex: str,
    device_public: bytes,
    request_id: str,
    ephemeral: X25519PrivateKey,
    nonce: bytes,
) -> dict[str, str]:
    epk = ephemeral.public_key().public_bytes_raw()
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(device_public))
    ciphertext = ChaCha20Poly1305(_aead_key(shared, epk, device_public)).encrypt(
        nonce, key_hex.encode("ascii"), request_id.encode()
    )
    b64 = base64.b64encode
    return {
        "alg": SEAL_ALG,
        "epk": b64(epk).decode(),
        "nonce": b64(nonce).decode(),
        "ciphertext": b64(ciphertext).decode(),
    }


def unseal(private: X25519PrivateKey, sealed: dict[str, str], request_id: str) -> str:
    """The device side of :func:`seal`: recover the key hex, or raise ValueError."""
    if sealed.get("alg") != SEAL_ALG:
        raise ValueError(f"unknown sealing algorithm {sealed.get('alg')!r}")
    epk = base64.b64decode(sealed["epk"])
    nonce = base64.b64decode(sealed["nonce"])
    ciphertext = base64.b64decode(sealed["ciphertext"])
    device_public = private.public_key().public_bytes_raw()
    shared = private.exchange(X25519PublicKey.from_public_bytes(epk))
    try:
        plain = ChaCha20Poly1305(_aead_key(shared, epk, device_public)).decrypt(
            nonce, ciphertext, request_id.encode()
        )
    except InvalidTag as exc:
        raise ValueError("the sealed key does not open with this private key") from exc
    return plain.decode("ascii")


# -- device proof ---------------------------------------------------------------------
#
# The derivations below are the contract a device's firmware (and a C library) is
# written against: change nothing here without a new protocol version.

ENROLLMENT_KEY_BYTES = 32
PROOF_LABEL = b"provisioning-bridge/v1 proof"


def generate_enrollment_key() -> bytes:
    """A fresh enrollment key for a model: 32 bytes from the OS CSPRNG."""
    return secrets.token_bytes(ENROLLMENT_KEY_BYTES)


def device_secret(enrollment_key: bytes, identifier: str) -> bytes:
    """The factory secret of one device: HMAC-SHA256(enrollment key, canonical identifier).

    ``identifier`` must be the canonical form (see :mod:`bridge.identifiers`): every
    spelling of one sticker number then yields the same secret.
    """
    return hmac.new(enrollment_key, identifier.encode("utf-8"), hashlib.sha256).digest()


def device_proof(secret: bytes, client_id: str, request_id: str) -> str:
    """The request's ``proof``: lowercase hex HMAC-SHA256 of its client id and request id.

    The message is ``b"provisioning-bridge/v1 proof" 0x00 client_id 0x00 request_id``;
    binding both ids means a proof seen on the wire proves nothing for another
    client id or another request.
    """
    message = b"\x00".join((PROOF_LABEL, client_id.encode("utf-8"), request_id.encode("utf-8")))
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def proof_is_valid(
    enrollment_keys: Sequence[bytes],
    identifier: str,
    client_id: str,
    request_id: str,
    proof: str | None,
) -> bool:
    """Whether ``proof`` was made with the secret of ``identifier`` under one of the keys.

    Every key is tried and compared in constant time, so the answer takes as long for
    a near miss as for garbage, and as long whichever key (current or previous) matched.
    """
    if proof is None:
        return False
    presented = proof.encode("ascii", "replace")
    matched = False
    for enrollment_key in enrollment_keys:
        expected = device_proof(device_secret(enrollment_key, identifier), client_id, request_id)
        matched |= hmac.compare_digest(expected.encode("ascii"), presented)
    return matched


class EnrollmentCipher:
    """Encrypts a model's enrollment keys under the server secret.

    The associated data names the model and the key's generation, so a ciphertext
    copied onto another model (or another generation) does not decrypt. Decrypts under
    the current secret or any previous one, like :class:`ReplayCipher`, so rotating
    ``BRIDGE_SECRET`` keeps every device's secret valid.
    """

    _PURPOSE = b"provisioning-bridge/v1 enrollment-key"

    def __init__(self, secret: bytes, previous: Sequence[bytes] = ()) -> None:
        self._aead = ChaCha20Poly1305(_derive(secret, self._PURPOSE))
        self._older = [ChaCha20Poly1305(_derive(old, self._PURPOSE)) for old in previous]

    def __repr__(self) -> str:
        return "EnrollmentCipher(<secret>)"

    @staticmethod
    def _aad(model_id: int, generation: int) -> bytes:
        return f"enrollment-key\x00{model_id}\x00{generation}".encode()

    def encrypt(self, enrollment_key: bytes, model_id: int, generation: int) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, enrollment_key, self._aad(model_id, generation))

    def decrypt(self, blob: bytes, model_id: int, generation: int) -> bytes | None:
        """The enrollment key, or None when no known secret made the blob or it was altered."""
        aad = self._aad(model_id, generation)
        for aead in (self._aead, *self._older):
            try:
                return aead.decrypt(blob[:12], blob[12:], aad)
            except (InvalidTag, ValueError):
                continue
        return None
