"""Node placement of a profile's pods: its (and its pool's) nodeSelector, affinity and tolerations,
merged by admission into what the hub already set.

Computed once per profile (``Config.placements``), applied per pod by ``placement_patch``: pure,
no I/O, a few dict operations per request. The merge only ever narrows where a pod may run, and it
is idempotent (a second pass over its own output is no patch):

- **nodeSelector**: the profile's keys are added; a key the pod set to another value is
  overridden, with a warning.
- **required node affinity**: ANDed with the pod's. Kubernetes ORs the ``nodeSelectorTerms`` and
  ANDs the requirements within a term, so ``(t1 or t2) and p`` is ``(t1 and p) or (t2 and p)``: the
  profile's requirements are added to every term of the pod (one term per profile term when the
  profile has several). A term that already holds them is left alone, and so is an empty term (it
  matches no node; adding requirements would widen it). A pod without terms gets the profile's.
- **preferred node affinity, pod (anti-)affinity**: the profile's entries are appended to the
  pod's lists when not there yet (required pod affinity terms are ANDed by Kubernetes already).
- **tolerations**: appended when not present yet (``operator`` Equal and empty are the same).

A pod whose placement fields have the wrong shape (which the API server never sends: it decodes the
pod first) gets a ``PlacementError``, a denial, never a patch that would not apply.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Patch = list[dict[str, Any]]
REQUIRED = "requiredDuringSchedulingIgnoredDuringExecution"
PREFERRED = "preferredDuringSchedulingIgnoredDuringExecution"


class PlacementError(ValueError):
    """The pod's nodeSelector, affinity or tolerations are not the Kubernetes shapes."""


@dataclass(frozen=True)
class Placement:
    """What admission adds to a profile's pods (JSON values, ready to go into a patch)."""

    node_selector: Mapping[str, str] = field(default_factory=dict)
    terms: tuple[dict[str, Any], ...] = ()  # required nodeSelectorTerms, ANDed with the pod's
    lists: tuple[tuple[str, str, tuple[dict[str, Any], ...]], ...] = ()  # (kind, part, entries) appended
    tolerations: tuple[dict[str, Any], ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.node_selector or self.terms or self.lists or self.tolerations)


def placement_of(
    node_selector: Mapping[str, str], affinity: Mapping[str, Any], tolerations: Sequence[Any]
) -> Placement:
    """A profile's placement from its validated config (``webhook.node_fit.check_affinity``)."""
    terms: tuple[dict[str, Any], ...] = ()
    lists: list[tuple[str, str, tuple[dict[str, Any], ...]]] = []
    for kind, parts in affinity.items():
        for part, value in parts.items():
            if kind == "nodeAffinity" and part == REQUIRED:
                terms = tuple(copy.deepcopy(t) for t in value["nodeSelectorTerms"])
            elif value:
                lists.append((kind, part, tuple(copy.deepcopy(v) for v in value)))
    return Placement(
        node_selector=dict(node_selector),
        terms=terms,
        lists=tuple(lists),
        tolerations=tuple(copy.deepcopy(t) for t in tolerations),
    )


def placement_patch(spec: Mapping[str, Any], placement: Placement, profile: str, warnings: list[str]) -> Patch:
    """The JSON patch that merges ``placement`` into the pod's ``spec``; [] when it holds already."""
    if placement.empty:
        return []
    patch: Patch = []
    if placement.node_selector:
        current = _mapping(spec.get("nodeSelector"), "spec.nodeSelector")
        merged = dict(current)
        for key, value in placement.node_selector.items():
            if key in current and current[key] != value:
                warnings.append(
                    f"gpu-queue: profile {profile!r} sets nodeSelector {key}={value} (the pod asked for {current[key]})"
                )
            merged[key] = value
        if merged != current:
            patch.append({"op": "add", "path": "/spec/nodeSelector", "value": merged})
    if placement.terms or placement.lists:
        current = _mapping(spec.get("affinity"), "spec.affinity")
        merged = _merge_affinity(current, placement)
        if merged != current:
            patch.append({"op": "add", "path": "/spec/affinity", "value": merged})
    if placement.tolerations:
        patch += _tolerations_patch(spec.get("tolerations"), placement.tolerations)
    return patch


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PlacementError(f"{where} is not an object")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise PlacementError(f"{where} is not a list")
    return value


def _merge_affinity(current: dict[str, Any], placement: Placement) -> dict[str, Any]:
    out = dict(current)
    if placement.terms:
        node = _mapping(out.get("nodeAffinity"), "spec.affinity.nodeAffinity")
        required = _mapping(node.get(REQUIRED), f"spec.affinity.nodeAffinity.{REQUIRED}")
        where = f"spec.affinity.nodeAffinity.{REQUIRED}.nodeSelectorTerms"
        terms = _list(required.get("nodeSelectorTerms"), where)
        merged = and_terms(terms, placement.terms, where)
        if merged != terms:
            out["nodeAffinity"] = {**node, REQUIRED: {**required, "nodeSelectorTerms": merged}}
    for kind, part, entries in placement.lists:
        holder = _mapping(out.get(kind), f"spec.affinity.{kind}")
        items = _list(holder.get(part), f"spec.affinity.{kind}.{part}")
        missing = [copy.deepcopy(e) for e in entries if e not in items]
        if missing:
            out[kind] = {**holder, part: [*items, *missing]}
    return out


def and_terms(terms: list[Any], required: Sequence[dict[str, Any]], where: str) -> list[Any]:
    """``terms`` (ORed) AND ``required`` (ORed), as nodeSelectorTerms."""
    if not terms:
        return [copy.deepcopy(t) for t in required]
    out: list[Any] = []
    for i, term in enumerate(terms):
        if not isinstance(term, dict):
            raise PlacementError(f"{where}[{i}] is not an object")
        own = {part: _list(term.get(part), f"{where}[{i}].{part}") for part in ("matchExpressions", "matchFields")}
        if not any(own.values()) or any(_holds(own, r) for r in required):
            out.append(term)  # empty: matches no node (keep it so); or it implies the requirement
            continue
        for r in required:
            combined = dict(term)
            for part, have in own.items():
                seen = {_norm(e) for e in have}
                extra = [copy.deepcopy(e) for e in r.get(part) or [] if _norm(e) not in seen]
                if have or extra:
                    combined[part] = [*have, *extra]
            out.append(combined)
    return out


def _holds(own: Mapping[str, list[Any]], required: Mapping[str, Any]) -> bool:
    """Every requirement of the ``required`` term is among the term's own."""
    return all(
        {_norm(e) for e in required.get(part) or []} <= {_norm(e) for e in own[part]}
        for part in ("matchExpressions", "matchFields")
    )


def _norm(expression: Any) -> tuple[str, ...]:
    if not isinstance(expression, dict):
        return ("?", repr(expression))
    values = expression.get("values") or []
    listed = sorted(str(v) for v in values) if isinstance(values, list) else [repr(values)]
    return (str(expression.get("key")), str(expression.get("operator")), *listed)


def _toleration_key(t: Any) -> tuple[str, ...]:
    if not isinstance(t, dict):
        return ("?", repr(t))
    operator = t.get("operator") or "Equal"
    return (
        str(t.get("key") or ""),
        str(operator),
        str(t.get("value") or ""),
        str(t.get("effect") or ""),
        str(t.get("tolerationSeconds")),
    )


def _tolerations_patch(current: Any, wanted: Sequence[dict[str, Any]]) -> Patch:
    have = _list(current, "spec.tolerations")
    present = {_toleration_key(t) for t in have}
    missing = [copy.deepcopy(t) for t in wanted if _toleration_key(t) not in present]
    if not missing:
        return []
    if current is None:
        return [{"op": "add", "path": "/spec/tolerations", "value": missing}]
    return [{"op": "add", "path": "/spec/tolerations/-", "value": t} for t in missing]
