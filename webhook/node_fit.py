"""Where a pod may run: the Kubernetes scheduler's node selector, required node affinity and
taint/toleration rules, over plain values (pure, no JSON shapes trusted).

The grant decision uses them twice: a node's slices count as capacity only when the pool's pods
can run there (``webhook.grants``), and a pending pod that is not ours counts as in use only when
it could land on one of those nodes. The configuration validates the profiles' placement with
the ``check_*`` functions, so a bad affinity or toleration fails at start, naming the field.

The semantics are the scheduler's (``NodeAffinity`` and ``TaintToleration`` filters): the terms of
``nodeSelectorTerms`` are ORed, the requirements within a term ANDed, an empty term matches no
node; a ``NotIn`` or ``DoesNotExist`` requirement matches a node without the label; only
``NoSchedule`` and ``NoExecute`` taints keep a pod off a node.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

OPERATORS = frozenset({"In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"})
FIELD_OPERATORS = frozenset({"In", "NotIn"})
EFFECTS = frozenset({"NoSchedule", "PreferNoSchedule", "NoExecute"})
BLOCKING_EFFECTS = frozenset({"NoSchedule", "NoExecute"})
# Taints of a node that cannot run anything new: never counted, whatever a pod tolerates (every pod
# gets not-ready and unreachable NoExecute tolerations for 300 s, which only delay an eviction).
NEVER_USABLE = frozenset(
    {"node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable", "node.kubernetes.io/unschedulable"}
)


@dataclass(frozen=True)
class Taint:
    key: str
    value: str = ""
    effect: str = "NoSchedule"


@dataclass(frozen=True)
class Toleration:
    key: str = ""
    operator: str = "Equal"
    value: str = ""
    effect: str = ""

    def tolerates(self, taint: Taint) -> bool:
        """``v1.Toleration.ToleratesTaint``: an empty key with Exists tolerates every taint."""
        if self.effect and self.effect != taint.effect:
            return False
        if self.key and self.key != taint.key:
            return False
        if self.operator == "Exists":
            return True
        return self.operator in ("", "Equal") and self.value == taint.value


@dataclass(frozen=True)
class Requirement:
    """One ``NodeSelectorRequirement`` (a label expression, or a field one on ``metadata.name``)."""

    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key, "")
        if self.operator == "In":
            return present and value in self.values
        if self.operator == "NotIn":
            return not present or value not in self.values
        if self.operator == "Exists":
            return present
        if self.operator == "DoesNotExist":
            return not present
        if self.operator in ("Gt", "Lt") and present and len(self.values) == 1:
            try:
                have, bound = int(value), int(self.values[0])
            except ValueError:
                return False
            return have > bound if self.operator == "Gt" else have < bound
        return False


@dataclass(frozen=True)
class Term:
    """One ``NodeSelectorTerm``: every requirement holds. An empty term matches no node."""

    expressions: tuple[Requirement, ...] = ()
    fields: tuple[Requirement, ...] = ()

    def matches(self, name: str, labels: Mapping[str, str]) -> bool:
        if not self.expressions and not self.fields:
            return False
        fields = {"metadata.name": name}
        return all(r.matches(labels) for r in self.expressions) and all(r.matches(fields) for r in self.fields)


@dataclass(frozen=True)
class NodeConstraints:
    """What a pod (or every pod of a profile) demands of a node, as the scheduler filters it."""

    node_selector: Mapping[str, str] = field(default_factory=dict)
    terms: tuple[Term, ...] = ()  # required node affinity; () = no requirement
    tolerations: tuple[Toleration, ...] = ()

    def allows(self, name: str, labels: Mapping[str, str], taints: Iterable[Taint]) -> bool:
        """The node passes the selector, the affinity and the taints (not-ready ones always block)."""
        if any(labels.get(k) != v for k, v in self.node_selector.items()):
            return False
        if self.terms and not any(t.matches(name, labels) for t in self.terms):
            return False
        for taint in taints:
            if taint.effect not in BLOCKING_EFFECTS:
                continue
            if taint.key in NEVER_USABLE or not any(t.tolerates(taint) for t in self.tolerations):
                return False
        return True


# ------------------------------------------------------------------------- reading JSON (lenient)


def _strings(values: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in values) if isinstance(values, list) else ()


def _requirements(items: Any) -> tuple[Requirement, ...]:
    if not isinstance(items, list):
        return ()
    return tuple(
        Requirement(str(r.get("key", "")), str(r.get("operator", "")), _strings(r.get("values")))
        for r in items
        if isinstance(r, Mapping)
    )


def terms_of(affinity: Any) -> tuple[Term, ...]:
    """The required node-affinity terms of a pod's ``spec.affinity`` (any shape; bad parts skipped)."""
    node = affinity.get("nodeAffinity") if isinstance(affinity, Mapping) else None
    required = node.get("requiredDuringSchedulingIgnoredDuringExecution") if isinstance(node, Mapping) else None
    terms = required.get("nodeSelectorTerms") if isinstance(required, Mapping) else None
    if not isinstance(terms, list):
        return ()
    out = [Term(_requirements(t.get("matchExpressions")), _requirements(t.get("matchFields"))) for t in terms]
    # A pod whose every term is malformed matches nothing; one with no readable term at all too.
    return tuple(out) if out else (Term(),)


def tolerations_of(items: Any) -> tuple[Toleration, ...]:
    if not isinstance(items, list):
        return ()
    return tuple(
        Toleration(
            key=str(t.get("key") or ""),
            operator=str(t.get("operator") or "Equal"),
            value=str(t.get("value") or ""),
            effect=str(t.get("effect") or ""),
        )
        for t in items
        if isinstance(t, Mapping)
    )


def taints_of(items: Any) -> tuple[Taint, ...]:
    if not isinstance(items, list):
        return ()
    return tuple(
        Taint(str(t.get("key") or ""), str(t.get("value") or ""), str(t.get("effect") or ""))
        for t in items
        if isinstance(t, Mapping)
    )


def selector_of(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, Mapping) else {}


def constraints_of(spec: Mapping[str, Any]) -> NodeConstraints:
    """A pod spec's node constraints (``nodeSelector``, required node affinity, tolerations)."""
    return NodeConstraints(
        node_selector=selector_of(spec.get("nodeSelector")),
        terms=terms_of(spec.get("affinity")),
        tolerations=tolerations_of(spec.get("tolerations")),
    )


# -------------------------------------------------------------------- checking config (strict)


def _check_requirement(r: Any, where: str, operators: frozenset[str]) -> None:
    if not isinstance(r, Mapping) or set(r) - {"key", "operator", "values"}:
        raise ValueError(f"{where}: expected {{key, operator, values}}")
    if not isinstance(r.get("key"), str) or not r["key"]:
        raise ValueError(f"{where}.key: a non-empty string is required")
    op = r.get("operator")
    if op not in operators:
        raise ValueError(f"{where}.operator: {op!r} is not one of {', '.join(sorted(operators))}")
    values = r.get("values", [])
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ValueError(f"{where}.values: a list of strings is required (quote numbers)")
    if op in ("Exists", "DoesNotExist") and values:
        raise ValueError(f"{where}.values: must be empty for {op}")
    if op in ("In", "NotIn") and not values:
        raise ValueError(f"{where}.values: at least one value is required for {op}")
    if op in ("Gt", "Lt") and (len(values) != 1 or not values[0].lstrip("-").isdigit()):
        raise ValueError(f"{where}.values: exactly one integer is required for {op}")


def check_terms(terms: Any, where: str) -> None:
    """``nodeSelectorTerms`` as a profile may give them: a non-empty list of non-empty terms."""
    if not isinstance(terms, list) or not terms:
        raise ValueError(f"{where}: a non-empty list of terms is required")
    for i, term in enumerate(terms):
        at = f"{where}.{i}"
        if not isinstance(term, Mapping) or set(term) - {"matchExpressions", "matchFields"}:
            raise ValueError(f"{at}: expected {{matchExpressions, matchFields}}")
        expressions, fields = term.get("matchExpressions") or [], term.get("matchFields") or []
        if not isinstance(expressions, list) or not isinstance(fields, list) or not (expressions or fields):
            raise ValueError(f"{at}: a term needs matchExpressions or matchFields (an empty term matches no node)")
        for j, r in enumerate(expressions):
            _check_requirement(r, f"{at}.matchExpressions.{j}", OPERATORS)
        for j, r in enumerate(fields):
            _check_requirement(r, f"{at}.matchFields.{j}", FIELD_OPERATORS)
            if r["key"] != "metadata.name":
                raise ValueError(f"{at}.matchFields.{j}.key: only metadata.name is supported")


AFFINITY_KEYS = {"nodeAffinity", "podAffinity", "podAntiAffinity"}
_PARTS = {"requiredDuringSchedulingIgnoredDuringExecution", "preferredDuringSchedulingIgnoredDuringExecution"}


def check_affinity(affinity: Mapping[str, Any]) -> None:
    """A profile's affinity: a Kubernetes ``Affinity``; the node terms are checked in full (the
    grant decision evaluates them), the rest only for shape (the API server checks it in full)."""
    unknown = set(affinity) - AFFINITY_KEYS
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(sorted(unknown))}; expected {', '.join(sorted(AFFINITY_KEYS))}")
    for kind, value in affinity.items():
        if not isinstance(value, Mapping) or set(value) - _PARTS:
            raise ValueError(f"{kind}: expected a mapping of {' and '.join(sorted(_PARTS))}")
        for part, items in value.items():
            if kind == "nodeAffinity" and part.startswith("required"):
                if not isinstance(items, Mapping) or set(items) != {"nodeSelectorTerms"}:
                    raise ValueError(f"{kind}.{part}: expected {{nodeSelectorTerms: [...]}}")
                check_terms(items["nodeSelectorTerms"], f"{kind}.{part}.nodeSelectorTerms")
            elif not isinstance(items, list) or not all(isinstance(i, Mapping) for i in items):
                raise ValueError(f"{kind}.{part}: a list of mappings is required")


def check_tolerations(items: Sequence[Any]) -> None:
    for i, t in enumerate(items):
        if not isinstance(t, Mapping) or set(t) - {"key", "operator", "value", "effect", "tolerationSeconds"}:
            raise ValueError(f"{i}: expected {{key, operator, value, effect, tolerationSeconds}}")
        op = t.get("operator", "Equal")
        if op not in ("Equal", "Exists"):
            raise ValueError(f"{i}.operator: {op!r} is not Equal or Exists")
        if not isinstance(t.get("key", ""), str) or not isinstance(t.get("value", ""), str):
            raise ValueError(f"{i}: key and value must be strings (quote numbers)")
        if not t.get("key") and op != "Exists":
            raise ValueError(f"{i}.key: an empty key needs operator Exists (it tolerates every taint)")
        if op == "Exists" and t.get("value"):
            raise ValueError(f"{i}.value: must be empty for operator Exists")
        if t.get("effect", "") not in EFFECTS | {""}:
            raise ValueError(f"{i}.effect: {t.get('effect')!r} is not one of {', '.join(sorted(EFFECTS))}")
        seconds = t.get("tolerationSeconds")
        if seconds is not None and (not isinstance(seconds, int) or t.get("effect") != "NoExecute"):
            raise ValueError(f"{i}.tolerationSeconds: an integer, and only with effect NoExecute")
