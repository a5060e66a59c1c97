"""API tokens: their shape, what is kept of them, and what may be shown."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime

from bridge.records import ApiToken
from bridge.tokens import IssuedToken, Principal, Role, digest, new_token


def test_new_tokens_are_unique_and_carry_their_id() -> None:
    made = [new_token() for _ in range(200)]
    assert len({token for _, token in made}) == 200
    for token_id, token in made:
        assert re.fullmatch(r"[0-9a-f]{12}", token_id)
        assert re.fullmatch(rf"bt_{token_id}_[A-Za-z0-9_-]{{43}}", token)


def test_only_the_sha256_is_kept_and_reprs_hide_the_token() -> None:
    token_id, token = new_token()
    assert digest(token) == hashlib.sha256(token.encode()).digest()
    assert digest(token) != digest(token + "x")
    record = ApiToken(token_id, "owner", "alice", datetime.now(UTC), None)
    issued = IssuedToken(token, record)
    assert token not in repr(issued) and token_id in repr(issued)


def test_principal_names_the_actor_by_token_id_only() -> None:
    assert str(Principal("0123456789ab", Role.OWNER, "alice")) == "api:owner:alice:0123456789ab"
    assert str(Principal("0123456789ab", Role.ADMIN, None)) == "api:admin:0123456789ab"
