"""The code enum, the wire JSON Schema and the protocol document list the same reply codes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bridge import errors, protocol
from bridge.codes import REPLY_CODES, RETRY_AFTER_CODES, Code, audit_code
from bridge.records import ActivationOutcome, AuditEntry, ClaimOutcome, LifecycleOutcome

ROOT = Path(__file__).resolve().parents[2]


def _schema_codes() -> list[str]:
    schema = json.loads((ROOT / "schemas/wire/reply.schema.json").read_text())
    found: list[list[str]] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            code = node.get("properties", {}).get("code") if "properties" in node else None
            if isinstance(code, dict) and "enum" in code and "title" in code:
                found.append(code["enum"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    assert len(found) == 1, found  # the error reply's code, and nothing else
    return found[0]


def _document_codes() -> list[str]:
    text = (ROOT / "docs/protocol.md").read_text()
    section = text.split("## 6. Codes", 1)[1].split("\n## 7.", 1)[0]
    return re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.MULTILINE)


def test_reply_codes_are_the_wire_schema_enum_in_order() -> None:
    assert _schema_codes() == list(REPLY_CODES)


def test_reply_codes_are_the_protocol_documents_table_in_order() -> None:
    assert _document_codes() == list(REPLY_CODES)


def test_protocol_module_lists_the_enums_reply_codes() -> None:
    assert protocol.REPLY_CODES == REPLY_CODES
    assert protocol.RETRY_AFTER_CODES == RETRY_AFTER_CODES
    assert set(RETRY_AFTER_CODES) <= set(REPLY_CODES)


def test_codes_compare_equal_to_their_strings() -> None:
    # Rows read from PostgreSQL and JSON replies hold plain strings.
    from_database: str = "not_approved"
    assert from_database == Code.NOT_APPROVED
    assert {"ok": 1}[Code.OK] == 1
    assert json.dumps({"code": Code.RATE_LIMITED}) == '{"code": "rate_limited"}'
    assert f"{Code.REVOKED}" == "revoked"


def test_every_error_class_carries_a_code_of_the_enum() -> None:
    classes = [
        cls
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.BridgeError)
    ]
    assert len(classes) > 10
    for cls in classes:
        assert isinstance(cls.code, Code), cls


def test_error_tree_docstring_names_every_class_and_its_code() -> None:
    doc = errors.__doc__ or ""
    for cls in vars(errors).values():
        if isinstance(cls, type) and issubclass(cls, errors.BridgeError):
            if cls in (errors.BridgeError, errors.RequestError):
                continue  # abstract: no code of their own
            assert re.search(rf"── {cls.__name__} +\"{cls.code}\"", doc), cls


def test_records_turn_strings_into_codes() -> None:
    outcome = ActivationOutcome("window_expired", None, None)  # type: ignore[arg-type]
    assert outcome.code is Code.WINDOW_EXPIRED
    assert AuditEntry("claim", "ok").code is Code.OK
    assert ClaimOutcome("already_yours").status is Code.ALREADY_YOURS
    assert LifecycleOutcome("revoked_by_vendor").status is Code.REVOKED_BY_VENDOR


@pytest.mark.parametrize("typo", ["not_aproved", "OK", "", "rate-limited"])
def test_a_misspelt_code_fails_where_the_record_is_made(typo: str) -> None:
    with pytest.raises(ValueError, match="is not a valid Code"):
        AuditEntry("activate", typo)


def test_already_so_statuses_are_audited_as_conflicts() -> None:
    assert audit_code("already_theirs") is Code.CONFLICT
    assert audit_code("already_revoked") is Code.CONFLICT
    assert audit_code("not_owner") is Code.NOT_OWNER
    assert audit_code("ok") is Code.OK
