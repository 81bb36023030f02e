"""Truth labelling on hand-written Pythia-style decay records with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from tauml.data.truth import (
    DM_LEPTONIC,
    DM_RARE,
    decay_mode_from_products,
    last_copy_taus,
    reduce_decay_mode,
    tau_decay_products,
)


def record(tree: dict[int, tuple[int, list[int]]]):
    """Event record from {index: (pdg, [daughter indices])}; daughters must be consecutive, as in Pythia."""
    n = max(tree) + 1
    pdg = np.zeros(n, np.int64)
    d1 = np.zeros(n, np.int64)
    d2 = np.zeros(n, np.int64)
    for i, (code, daughters) in tree.items():
        pdg[i] = code
        if daughters:
            assert daughters == list(range(daughters[0], daughters[-1] + 1))
            d1[i], d2[i] = daughters[0], daughters[-1]
    return pdg, d1, d2


def tau_decay(*products: int, intermediate: dict[int, list[int]] | None = None):
    """tau- at index 1 decaying to ``products`` (indices 2...); ``intermediate`` adds decays of products."""
    tree = {0: (23, [1]), 1: (15, list(range(2, 2 + len(products))))}
    for k, code in enumerate(products):
        tree[2 + k] = (code, [])
    nxt = 2 + len(products)
    for parent, children in (intermediate or {}).items():
        tree[parent] = (tree[parent][0], list(range(nxt, nxt + len(children))))
        for c in children:
            tree[nxt] = (c, [])
            nxt += 1
    return record(tree)


def code_of(pdg, d1, d2, rule="descendants"):
    (tau,) = last_copy_taus(pdg, d1, d2)
    return decay_mode_from_products(pdg[tau_decay_products(tau, pdg, d1, d2, rule=rule)])


@pytest.mark.parametrize(
    ("products", "expected"),
    [
        ((16, -211), 0),  # pi nu
        ((16, -321), 0),  # K nu: a charged hadron
        ((16, -211, 111), 1),  # pi pi0 nu
        ((16, -211, 111, 111), 2),
        ((16, -211, 111, 111, 111), 3),
        ((16, -211, 111, 111, 111, 111, 111), 4),  # >3 pi0 saturate at 4
        ((16, -211, 311), 1),  # K0 counts as a neutral hadron
        ((16, -211, -211, 211), 10),
        ((16, -211, -211, 211, 111), 11),
        ((16, -211, 211), 5),  # a two-prong code exists
        ((16, 11, -12), DM_LEPTONIC),
        ((16, 13, -14), DM_LEPTONIC),
        ((16, -211, 22), DM_RARE),  # a photon among the products
        ((16, -211, -211, -211, 211, 211), DM_RARE),  # five prongs
    ],
)
def test_decay_modes_of_direct_products(products, expected):
    assert code_of(*tau_decay(*products)) == expected


def test_intermediate_resonances_are_resolved_by_the_descendant_rule():
    # tau- -> rho- nu, rho- -> pi- pi0: h pi0 (1) by descendants; rare for the direct-daughter rule
    event = tau_decay(16, -213, intermediate={3: [-211, 111]})
    assert code_of(*event) == 1
    assert code_of(*event, rule="direct") == DM_RARE
    # tau- -> omega pi- nu, omega -> pi+ pi- pi0: three prongs and a pi0
    assert code_of(*tau_decay(16, -211, 223, intermediate={4: [211, -211, 111]})) == 11
    # omega -> pi0 gamma: a photon makes it rare
    assert code_of(*tau_decay(16, -211, 223, intermediate={4: [111, 22]})) == DM_RARE
    # the pi0 itself is never descended into (pi0 -> gamma gamma stays one pi0)
    assert code_of(*tau_decay(16, -211, 111, intermediate={4: [22, 22]})) == 1


def test_last_copy_of_a_radiating_tau():
    # tau (1) -> tau (2) + gamma (3); tau (2) -> nu pi
    pdg, d1, d2 = record({0: (23, [1]), 1: (15, [2, 3]), 2: (15, [4, 5]), 3: (22, []), 4: (16, []), 5: (-211, [])})
    assert last_copy_taus(pdg, d1, d2) == [2]
    assert tau_decay_products(2, pdg, d1, d2) == [4, 5]


def test_reduced_classes_follow_the_reference_table():
    expected = {0: 0, 1: 1, 2: 2, 3: 2, 4: 2, 5: 3, 6: 4, 7: 4, 8: 4, 9: 4, 10: 3, 11: 4, 12: 4, 13: 4, 14: 4,
                15: 5, -1: -1}
    for code, cls in expected.items():
        assert reduce_decay_mode(code) == cls
    np.testing.assert_array_equal(reduce_decay_mode(np.array([0, 10, -1])), [0, 3, -1])
    with pytest.raises(ValueError, match="leptonic"):
        reduce_decay_mode(16)
    with pytest.raises(ValueError, match=r"-1\.\.15"):
        reduce_decay_mode(np.array([3, 42]))


def test_unknown_rule_is_refused():
    pdg, d1, d2 = tau_decay(16, -211)
    with pytest.raises(ValueError, match="rule"):
        tau_decay_products(1, pdg, d1, d2, rule="everything")
