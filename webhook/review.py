"""AdmissionReview v1 as pydantic models: the wire format between the API server and the webhook.

Only the fields admission reads or writes are typed; the pod itself stays a JSON object, because
admission must pass through every field it does not own untouched.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

API_VERSION = "admission.k8s.io/v1"


class _Wire(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")


class GroupVersionKind(_Wire):
    group: str = ""
    version: str = ""
    kind: str = ""


class GroupVersionResource(_Wire):
    group: str = ""
    version: str = ""
    resource: str = ""


class UserInfo(_Wire):
    username: str = ""
    uid: str = ""
    groups: list[str] = Field(default_factory=list)


class AdmissionRequest(_Wire):
    uid: str = Field(min_length=1)
    kind: GroupVersionKind = Field(default_factory=GroupVersionKind)
    resource: GroupVersionResource = Field(default_factory=GroupVersionResource)
    sub_resource: str = Field("", alias="subResource")
    name: str = ""
    namespace: str = ""
    operation: str = ""
    user_info: UserInfo = Field(default_factory=UserInfo, alias="userInfo")
    object: dict[str, Any] | None = None
    old_object: dict[str, Any] | None = Field(None, alias="oldObject")
    dry_run: bool = Field(False, alias="dryRun")

    @property
    def is_pod(self) -> bool:
        return self.kind.group == "" and self.kind.kind == "Pod" and self.sub_resource == ""


class Status(_Wire):
    code: int | None = None
    message: str = ""
    reason: str = ""


class AdmissionResponse(_Wire):
    uid: str
    allowed: bool
    status: Status | None = None
    patch: str | None = None
    patch_type: Literal["JSONPatch"] | None = Field(None, alias="patchType")
    warnings: list[str] | None = None

    def patch_ops(self) -> list[dict[str, Any]]:
        """The decoded JSON patch (empty when there is none)."""
        if not self.patch:
            return []
        ops: list[dict[str, Any]] = json.loads(base64.b64decode(self.patch))
        return ops


class AdmissionReview(_Wire):
    api_version: Literal["admission.k8s.io/v1"] = Field(alias="apiVersion")
    kind: Literal["AdmissionReview"]
    request: AdmissionRequest | None = None
    response: AdmissionResponse | None = None

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()


def answer(
    request: AdmissionRequest,
    *,
    allowed: bool = True,
    patch: list[dict[str, Any]] | None = None,
    message: str = "",
    code: int = 403,
    reason: str = "Forbidden",
    warnings: list[str] | None = None,
) -> AdmissionReview:
    """Build the response review for a request (a patch only when there is something to change)."""
    response = AdmissionResponse(uid=request.uid, allowed=allowed, warnings=warnings or None)
    if patch:
        response.patch = base64.b64encode(json.dumps(patch, separators=(",", ":")).encode()).decode()
        response.patch_type = "JSONPatch"
    if not allowed:
        response.status = Status(code=code, message=message, reason=reason)
    return AdmissionReview(api_version=API_VERSION, kind="AdmissionReview", response=response)
