"""Endorsement policies: Fabric's signature-policy language and the implicit-meta shorthands.

Accepted forms: "AND('Org1MSP.peer','Org2MSP.peer')", "OR(...)", "OutOf(2, ...)",
nested freely, and "MAJORITY Endorsement" / "ANY Endorsement" / "ALL Endorsement"
(each org's Endorsement policy being "OR('<msp>.peer')", as in test-network).
As in Fabric, one signer satisfies at most one principal of a rule.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

ROLE_MATCHES = {
    "member": {"client", "peer", "admin", "orderer", "member"},
    "peer": {"peer"},
    "client": {"client"},
    "admin": {"admin"},
    "orderer": {"orderer"},
}


@dataclass(frozen=True)
class Principal:
    msp_id: str
    role: str

    def matches(self, msp_id: str, role: str) -> bool:
        return msp_id == self.msp_id and role in ROLE_MATCHES.get(self.role, set())


@dataclass(frozen=True)
class OutOf:
    n: int
    rules: tuple[Rule, ...]


Rule = Principal | OutOf

_TOKEN = re.compile(r"\s*(AND|OR|OutOf|\(|\)|,|'[^']*'|\"[^\"]*\"|\d+)", re.IGNORECASE)


def _tokens(text: str) -> list[str]:
    pos, out = 0, []
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise ValueError(f"cannot parse policy near {text[pos:]!r}")
        out.append(m.group(1))
        pos = m.end()
    return out


def _parse(tokens: list[str], i: int) -> tuple[Rule, int]:
    tok = tokens[i]
    if tok[0] in "'\"":
        msp, _, role = tok[1:-1].partition(".")
        if role.lower() not in ROLE_MATCHES:
            raise ValueError(f"unknown role in principal {tok}")
        return Principal(msp, role.lower()), i + 1
    op = tok.lower()
    if op not in ("and", "or", "outof") or tokens[i + 1] != "(":
        raise ValueError(f"unexpected token {tok!r} in policy")
    i += 2
    n = 0
    if op == "outof":
        n = int(tokens[i])
        i += 2  # the number and its comma
    rules: list[Rule] = []
    while True:
        rule, i = _parse(tokens, i)
        rules.append(rule)
        if tokens[i] == ",":
            i += 1
            continue
        if tokens[i] == ")":
            i += 1
            break
        raise ValueError(f"expected ',' or ')' in policy, got {tokens[i]!r}")
    if op == "and":
        n = len(rules)
    elif op == "or":
        n = 1
    return OutOf(n, tuple(rules)), i


def parse_policy(text: str, org_msp_ids: Sequence[str]) -> Rule:
    implicit = re.fullmatch(r"\s*(MAJORITY|ANY|ALL)\s+Endorsement\s*", text, re.IGNORECASE)
    if implicit:
        rules = tuple(Principal(m, "peer") for m in org_msp_ids)
        kind = implicit.group(1).upper()
        n = {"ANY": 1, "ALL": len(rules), "MAJORITY": len(rules) // 2 + 1}[kind]
        return OutOf(n, rules)
    tokens = _tokens(text)
    rule, end = _parse(tokens, 0)
    if end != len(tokens):
        raise ValueError(f"trailing text in policy {text!r}")
    return rule


def _satisfy(
    rule: Rule, signers: list[tuple[str, str]], used: frozenset[int]
) -> list[frozenset[int]]:
    """Every way (as a set of used signer indexes) in which rule can be met."""
    if isinstance(rule, Principal):
        return [
            used | {i}
            for i, (msp, role) in enumerate(signers)
            if i not in used and rule.matches(msp, role)
        ]
    ways: list[frozenset[int]] = []
    for combo in itertools.combinations(rule.rules, rule.n):
        partial = [used]
        for sub in combo:
            partial = [w for p in partial for w in _satisfy(sub, signers, p)]
            if not partial:
                break
        ways.extend(partial)
    return ways if rule.n > 0 else [used]


def is_satisfied(rule: Rule, signers: Iterable[tuple[str, str]]) -> bool:
    """signers: (msp_id, role) of each distinct, already verified endorser."""
    return bool(_satisfy(rule, list(signers), frozenset()))


def orgs_to_endorse(rule: Rule, all_orgs: Sequence[str], first: str) -> list[str] | None:
    """The smallest set of orgs whose peers satisfy the rule, preferring ones containing first."""
    others = [o for o in all_orgs if o != first]
    for size in range(1, len(all_orgs) + 1):
        candidates = [(first, *c) for c in itertools.combinations(others, size - 1)]
        candidates += [c for c in itertools.combinations(others, size)]
        for orgs in candidates:
            if is_satisfied(rule, [(o, "peer") for o in orgs]):
                return list(orgs)
    return None
