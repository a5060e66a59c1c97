"""Keys, keyed hashes, sealing and replay encryption (no I/O)."""

from __future__ import annotations

import base64
import hashlib
import hmac
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
    """Decrypt with the steps of docs/protocol.md section 8 written out here, not keys.unseal."""
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


# -- device proof -------------------------------------------------------------------

#: A known-answer vector for firmware and the C library (also in the README):
#: enrollment key 00 01 .. 1f, MAC 00:1A:2B:3C:4D:5E, client id device-0001, request id r-1.
VECTOR_ENROLLMENT_KEY = bytes(range(32))
VECTOR_SECRET = "374f9c7652326cf1bf0989048c57cc79e6c1d6031eb2a8960662f2104068824e"
VECTOR_PROOF = "cdfd618c809054e72ad24d3b1e26c472f1f4b8a3084404a4c8dee4499f6edfd7"


def test_device_secret_and_proof_match_the_known_answer_vector() -> None:
    secret = keys.device_secret(VECTOR_ENROLLMENT_KEY, "001A2B3C4D5E")
    assert secret.hex() == VECTOR_SECRET
    assert keys.device_proof(secret, "device-0001", "r-1") == VECTOR_PROOF


def test_device_proof_matches_an_independent_implementation_of_the_contract() -> None:
    """The derivation written out with hmac/hashlib, as a C library would do it."""
    enrollment_key = keys.generate_enrollment_key()
    assert len(enrollment_key) == 32
    secret = hmac.new(enrollment_key, "SN-ÄÖ-1".encode(), hashlib.sha256).digest()
    message = b"provisioning-bridge/v1 proof" + b"\x00" + b"dev:7" + b"\x00" + b"req.9"
    expected = hmac.new(secret, message, hashlib.sha256).hexdigest()
    assert keys.device_secret(enrollment_key, "SN-ÄÖ-1") == secret
    assert keys.device_proof(secret, "dev:7", "req.9") == expected
    assert re.fullmatch(r"[0-9a-f]{64}", expected)


def test_a_proof_holds_only_for_its_identifier_client_id_request_id_and_key() -> None:
    current, previous, other = (keys.generate_enrollment_key() for _ in range(3))
    proof = keys.device_proof(keys.device_secret(previous, "ABC"), "dev-1", "r-1")
    accepted = [current, previous]
    assert keys.proof_is_valid(accepted, "ABC", "dev-1", "r-1", proof)
    assert not keys.proof_is_valid(accepted, "ABD", "dev-1", "r-1", proof)
    assert not keys.proof_is_valid(accepted, "ABC", "dev-2", "r-1", proof)
    assert not keys.proof_is_valid(accepted, "ABC", "dev-1", "r-2", proof)
    assert not keys.proof_is_valid([current, other], "ABC", "dev-1", "r-1", proof)  # retired
    assert not keys.proof_is_valid(accepted, "ABC", "dev-1", "r-1", None)
    assert not keys.proof_is_valid(accepted, "ABC", "dev-1", "r-1", "0" * 64)
    assert not keys.proof_is_valid([], "ABC", "dev-1", "r-1", proof)
    # The ids are separated: "dev-1" + "r-1x" is not "dev-1r" + "-1x".
    shifted = keys.device_proof(keys.device_secret(current, "ABC"), "dev-1r", "-1x")
    assert not keys.proof_is_valid(accepted, "ABC", "dev-1", "r-1x", shifted)


def test_enrollment_keys_are_bound_to_their_model_and_generation() -> None:
    cipher = keys.EnrollmentCipher(b"s" * 32)
    enrollment_key = keys.generate_enrollment_key()
    blob = cipher.encrypt(enrollment_key, model_id=4, generation=2)
    assert enrollment_key not in blob
    assert cipher.decrypt(blob, 4, 2) == enrollment_key
    assert cipher.decrypt(blob, 5, 2) is None  # copied onto another model
    assert cipher.decrypt(blob, 4, 1) is None  # or onto another generation
    assert keys.EnrollmentCipher(b"t" * 32).decrypt(blob, 4, 2) is None
    # After a rotation of the server secret, keys made under the old one still open.
    rotated = keys.EnrollmentCipher(b"t" * 32, previous=[b"s" * 32])
    assert rotated.decrypt(blob, 4, 2) == enrollment_key
    assert "s" * 32 not in repr(cipher)
