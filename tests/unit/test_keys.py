"""Keys, keyed hashes, sealing and replay encryption (no I/O)."""

from __future__ import annotations

import base64
import re

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bridge import keys


def test_generated_keys_have_the_contract_shape_and_differ() -> None:
    generated = {keys.generate_key() for _ in range(1000)}
    assert len(generated) == 1000
    assert all(re.fullmatch(r"[0-9a-f]{40}", k) for k in generated)


def test_keyed_hash_verifies_and_depends_on_the_secret() -> None:
    a, b = keys.KeyHasher(b"secret-a"), keys.KeyHasher(b"secret-b")
    key = keys.generate_key()
    assert a.verify(key, a.hash(key))
    assert not a.verify(keys.generate_key(), a.hash(key))
    assert a.hash(key) != b.hash(key)
    assert a.key_id != b.key_id
    assert "secret" not in repr(a)


def test_seal_matches_an_independent_implementation_of_the_contract() -> None:
    """Decrypt with the steps of protocol-v1.md written out here, not with keys.unseal."""
    device = X25519PrivateKey.generate()
    device_public = device.public_key().public_bytes_raw()
    key = keys.generate_key()
    sealed = keys.seal(key, device_public, "req-7")
    assert sealed["alg"] == "x25519-hkdf-sha256-chacha20poly1305"
    epk = base64.b64decode(sealed["epk"])
    nonce = base64.b64decode(sealed["nonce"])
    assert len(epk) == 32 and len(nonce) == 12
    shared = device.exchange(X25519PublicKey.from_public_bytes(epk))
    aead_key = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=epk + device_public,
        info=b"provisioning-bridge/v1 key",
    ).derive(shared)
    plain = ChaCha20Poly1305(aead_key).decrypt(
        nonce, base64.b64decode(sealed["ciphertext"]), b"req-7"
    )
    assert plain.decode("ascii") == key
    assert keys.unseal(device, sealed, "req-7") == key


def test_sealed_key_is_bound_to_the_request_id_and_the_device() -> None:
    device = X25519PrivateKey.generate()
    sealed = keys.seal("ab" * 20, device.public_key().public_bytes_raw(), "req-1")
    with pytest.raises(ValueError, match="does not open"):
        keys.unseal(device, sealed, "req-2")
    with pytest.raises(ValueError, match="does not open"):
        keys.unseal(X25519PrivateKey.generate(), sealed, "req-1")


def test_replay_cipher_round_trip_and_binding() -> None:
    cipher = keys.ReplayCipher(b"s")
    blob = cipher.encrypt(b"reply", b"dev\x00r1")
    assert b"reply" not in blob
    assert cipher.decrypt(blob, b"dev\x00r1") == b"reply"
    assert cipher.decrypt(blob, b"dev\x00r2") is None
    assert keys.ReplayCipher(b"other").decrypt(blob, b"dev\x00r1") is None


@pytest.mark.parametrize("text", ["", "!!!", base64.b64encode(b"short").decode()])
def test_bad_public_keys_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"32 bytes|base64|Incorrect|Non-base64|Invalid"):
        keys.decode_public_key(text)


def test_a_rotated_secret_still_verifies_keys_hashed_under_the_old_one() -> None:
    old = keys.KeyHasher(b"secret-2025")
    key = keys.generate_key()
    stored, stored_id = old.hash(key), old.key_id
    rotated = keys.KeyHasher(b"secret-2026", previous=[b"secret-2025"])
    assert rotated.key_id != stored_id
    assert rotated.known_ids == {rotated.key_id, stored_id}
    assert rotated.verify(key, stored, stored_id)
    assert not rotated.verify(keys.generate_key(), stored, stored_id)
    # New keys are hashed under the new secret only.
    assert rotated.hash(key) != stored
    assert rotated.verify(key, rotated.hash(key), rotated.key_id)
    # Once the old secret is dropped, its keys no longer verify.
    assert not keys.KeyHasher(b"secret-2026").verify(key, stored, stored_id)
    # A key id that names no known secret verifies nothing, even with the right hash.
    assert not rotated.verify(key, stored, "0123456789abcdef")
    assert not rotated.verify("not-hex-\u00e9", stored, stored_id)


def test_a_rotated_replay_cipher_decrypts_replies_stored_under_the_old_secret() -> None:
    blob = keys.ReplayCipher(b"old").encrypt(b"reply", b"aad")
    rotated = keys.ReplayCipher(b"new", previous=[b"old"])
    assert rotated.decrypt(blob, b"aad") == b"reply"
    assert keys.ReplayCipher(b"new").decrypt(blob, b"aad") is None
    assert keys.ReplayCipher(b"old").decrypt(rotated.encrypt(b"r", b"aad"), b"aad") is None
