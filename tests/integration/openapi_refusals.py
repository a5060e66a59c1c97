"""Schemathesis hooks for the OpenAPI contract test (loaded through SCHEMATHESIS_HOOKS).

The document states every rule a request is checked against that JSON Schema can say.
Two kinds of refusal of a schema-valid request it can only say in words, and this check
lets exactly those through where schemathesis' own ``positive_data_acceptance`` would
not (every other refusal of a schema-valid request still fails the run):

- 422 ``invalid_identifier``: which spellings of a device number are valid depends on
  the stored model's kind and pattern (a MAC address for one model, a serial number
  matching a pattern for another), which no static document knows;
- 422 ``malformed`` of a new model whose name holds an invisible character (Unicode's
  format, separator and unassigned characters: a set JSON Schema patterns cannot name
  portably) or whose pattern is not RE2 syntax within its size bound; likewise free
  text shown to people (a support reason or contact) holding an invisible character.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from schemathesis import APIOperation, Case, CheckContext, Response
from schemathesis.openapi.checks import RejectedPositiveData
from schemathesis.specs.openapi.checks import positive_data_acceptance

Operation = APIOperation[Any, Any, Any, Any]

#: Messages of the refusals of a new model that the document states in words only.
_MODEL_RULES = ("The vendor name contains the invisible", "The model name contains the invisible")


def _said_in_words(case: Case[Operation], response: Response) -> bool:
    if response.status_code != 422:
        return False
    try:
        body: Any = response.json()
    except ValueError:
        return False
    code, message = body.get("code"), str(body.get("message", ""))
    if code == "invalid_identifier":
        return True
    if code == "malformed" and "contains the invisible or control character" in message:
        return True  # free text shown to people: the document says so in words
    is_new_model = case.method.upper() == "POST" and case.operation.path == "/v1/models"
    return (
        is_new_model
        and code == "malformed"
        and (message.startswith(_MODEL_RULES) or message.startswith("The pattern "))
    )


@schemathesis.check
def positive_data_acceptance_but_stated_rules(
    ctx: CheckContext, response: Response, case: Case[Operation]
) -> bool | None:
    """``positive_data_acceptance``, except for the refusals the document states in words."""
    try:
        return positive_data_acceptance(ctx, response, case)
    except RejectedPositiveData:
        if _said_in_words(case, response):
            return None
        raise
