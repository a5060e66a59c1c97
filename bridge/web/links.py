"""OpenAPI links: from an answer that names a model or a device to what can be done with
it next, so that a client (or a stateful test) can follow a device from its approval to
its claim, and from its claim to its show, release, revoke, re-enable and transfer."""

from __future__ import annotations

from typing import Any, Final

_DEVICE: Final = "/v1/devices/{vendor}/{model}/{identifier}"
#: What can be done with one device, by (method, path) and a short link name.
_DEVICE_NEXT: Final = (
    ("ShowDevice", "get", _DEVICE),
    ("ReleaseDevice", "post", f"{_DEVICE}/release"),
    ("RevokeDevice", "post", f"{_DEVICE}/revoke"),
    ("ReenableDevice", "post", f"{_DEVICE}/reenable"),
    ("TransferDevice", "post", f"{_DEVICE}/transfer"),
    ("ClaimDevice", "post", "/v1/claims"),  # its names go in the request body
)
_MODEL: Final = "/v1/models/{vendor}/{model}"
_MODEL_NEXT: Final = (
    ("ShowModel", "get", _MODEL),
    ("ApproveDevices", "post", f"{_MODEL}/approvals"),
    ("BulkApproveDevices", "post", f"{_MODEL}/approvals/bulk"),
    ("UnapproveDevices", "post", f"{_MODEL}/unapprove"),
    ("ListModelDevices", "get", f"{_MODEL}/devices"),
)

#: (method, path, status) of an answer -> where its device's or model's names are,
#: as runtime expressions for vendor, model and (for a device) identifier.
_DEVICE_SOURCES: Final = {
    ("post", "/v1/claims", "200"): "$response.body#/device",
    ("get", _DEVICE, "200"): "$response.body#",
    ("post", f"{_DEVICE}/release", "200"): "$response.body#/device",
    ("post", f"{_DEVICE}/revoke", "200"): "$response.body#/device",
    ("post", f"{_DEVICE}/reenable", "200"): "$response.body#/device",
    ("post", f"{_DEVICE}/transfer", "200"): "$response.body#/device",
    ("get", "/v1/devices", "200"): "$response.body#/devices/0",
    ("get", f"{_MODEL}/devices", "200"): "$response.body#/devices/0",
}
_MODEL_SOURCES: Final = {
    ("post", "/v1/models", "201"): "$response.body#",
    ("get", _MODEL, "200"): "$response.body#",
}


def _operation_id(document: dict[str, Any], method: str, path: str) -> str:
    operation_id: str = document["paths"][path][method]["operationId"]
    return operation_id


def _links(
    document: dict[str, Any], targets: tuple[tuple[str, str, str], ...], names: dict[str, str]
) -> dict[str, Any]:
    links: dict[str, Any] = {}
    for name, method, path in targets:
        link: dict[str, Any] = {"operationId": _operation_id(document, method, path)}
        if path == "/v1/claims":
            link["requestBody"] = names  # a claim names its device in the body
        else:
            link["parameters"] = {k: v for k, v in names.items() if "{" + k + "}" in path}
        links[name] = link
    return links


def add_links(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with the links added to its responses (changed in place, returned)."""
    for (method, path, status), at in _DEVICE_SOURCES.items():
        names = {key: f"{at}/{key}" for key in ("vendor", "model", "identifier")}
        _response(document, method, path, status)["links"] = _links(
            document, (*_DEVICE_NEXT, *_MODEL_NEXT), names
        )
    for (method, path, status), at in _MODEL_SOURCES.items():
        names = {key: f"{at}/{key}" for key in ("vendor", "model")}
        _response(document, method, path, status)["links"] = _links(document, _MODEL_NEXT, names)
    # An approval names its model in the path and its devices in the request.
    approved = {
        "vendor": "$request.path.vendor",
        "model": "$request.path.model",
        "identifier": "$request.body#/identifiers/0",
    }
    approvals = f"{_MODEL}/approvals"
    _response(document, "post", approvals, "200")["links"] = _links(
        document, (*_DEVICE_NEXT, *_MODEL_NEXT), approved
    )
    return document


def _response(document: dict[str, Any], method: str, path: str, status: str) -> dict[str, Any]:
    response: dict[str, Any] = document["paths"][path][method]["responses"][status]
    return response
