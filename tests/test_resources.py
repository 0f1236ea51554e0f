"""
Tests for L{lmproxy.core.resources}: the ledger's accounting of static and measured
resources, and eviction planning as a pure function.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from lmproxy.config import ResourceConfig
from lmproxy.core.resources import Ledger, plan_eviction
from lmproxy.interfaces import ResourceStatus

Candidates = list[tuple[str, Mapping[str, int]]]


def static_and_measured() -> Ledger:
    """A ledger with static RAM (100) and VRAM measured by a CheckCommand."""
    return Ledger.from_config(
        [
            ResourceConfig("RAM", 100),
            ResourceConfig("VRAM", None, check_command="nvidia-free", check_interval=2.0),
        ]
    )


class StaticLedgerTests(SynchronousTestCase):
    """A static resource: lmproxy does all of the accounting itself."""

    def setUp(self) -> None:
        self.ledger = Ledger.from_config([ResourceConfig("RAM", 100), ResourceConfig("CPU", 8)])

    def test_nothing_held(self) -> None:
        """A fresh ledger has everything free and nothing reserved or in use."""
        self.assertFalse(self.ledger.is_measured("RAM"))
        self.assertEqual(self.ledger.free("RAM"), 100)
        self.assertEqual(self.ledger.reserved_by_starting("RAM"), 0)
        self.assertEqual(self.ledger.in_use("RAM"), 0)
        self.assertEqual(self.ledger.usage_by_service("RAM"), {})
        self.assertEqual(self.ledger.holding("A"), {})

    def test_hold_reserves_while_starting(self) -> None:
        """A starting service's amounts are reserved, in use (as upstream counts) and not free."""
        self.ledger.hold("A", {"RAM": 30, "CPU": 2})
        self.assertEqual(self.ledger.reserved_by_starting("RAM"), 30)
        self.assertEqual(self.ledger.in_use("RAM"), 30)
        self.assertEqual(self.ledger.free("RAM"), 70)
        self.assertEqual(self.ledger.available("RAM"), 70)
        self.assertEqual(self.ledger.free("CPU"), 6)
        self.assertEqual(self.ledger.holding("A"), {"RAM": 30, "CPU": 2})

    def test_hold_copies_the_amounts(self) -> None:
        """Changing the mapping given to L{Ledger.hold} afterwards changes nothing."""
        amounts = {"RAM": 30}
        self.ledger.hold("A", amounts)
        amounts["RAM"] = 99
        self.assertEqual(self.ledger.free("RAM"), 70)

    def test_mark_running_turns_reservation_into_use(self) -> None:
        """Once running, the amounts count as in use; free stays the same."""
        self.ledger.hold("A", {"RAM": 30})
        self.ledger.mark_running("A")
        self.assertEqual(self.ledger.reserved_by_starting("RAM"), 0)
        self.assertEqual(self.ledger.in_use("RAM"), 30)
        self.assertEqual(self.ledger.free("RAM"), 70)

    def test_mark_running_unknown_service(self) -> None:
        """Marking a service that holds nothing running is harmless."""
        self.ledger.mark_running("nobody")
        self.assertEqual(self.ledger.free("RAM"), 100)

    def test_release(self) -> None:
        """Releasing frees everything the service held; releasing twice is harmless."""
        self.ledger.hold("A", {"RAM": 30, "CPU": 2})
        self.ledger.mark_running("A")
        self.ledger.hold("B", {"RAM": 20})
        self.ledger.release("A")
        self.ledger.release("A")
        self.assertEqual(self.ledger.free("RAM"), 80)
        self.assertEqual(self.ledger.free("CPU"), 8)
        self.assertEqual(self.ledger.holding("A"), {})
        self.assertEqual(self.ledger.usage_by_service("RAM"), {"B": 20})

    def test_several_services(self) -> None:
        """Reservations and use of several services add up per resource."""
        self.ledger.hold("A", {"RAM": 30, "CPU": 2})
        self.ledger.hold("B", {"RAM": 20})
        self.ledger.hold("C", {"CPU": 1})
        self.ledger.mark_running("A")
        self.assertEqual(self.ledger.reserved_by_starting("RAM"), 20)
        self.assertEqual(self.ledger.in_use("RAM"), 50)
        self.assertEqual(self.ledger.free("RAM"), 50)
        self.assertEqual(self.ledger.reserved_by_starting("CPU"), 1)
        self.assertEqual(self.ledger.in_use("CPU"), 3)
        self.assertEqual(self.ledger.free("CPU"), 5)
        self.assertEqual(self.ledger.usage_by_service("RAM"), {"A": 30, "B": 20})
        self.assertEqual(self.ledger.usage_by_service("CPU"), {"A": 2, "C": 1})

    def test_shortfall(self) -> None:
        """Only the resources asked about and actually short are reported, with the gap."""
        self.ledger.hold("A", {"RAM": 80, "CPU": 7})
        self.assertEqual(self.ledger.shortfall({"RAM": 20, "CPU": 1}, ["RAM", "CPU"]), {})
        self.assertEqual(
            self.ledger.shortfall({"RAM": 50, "CPU": 3}, ["RAM", "CPU"]), {"RAM": 30, "CPU": 2}
        )
        self.assertEqual(self.ledger.shortfall({"RAM": 50, "CPU": 3}, ["CPU"]), {"CPU": 2})
        self.assertEqual(self.ledger.shortfall({"RAM": 50}, ["RAM", "CPU"]), {"RAM": 30})
        self.assertEqual(self.ledger.shortfall({"RAM": 0, "CPU": 0}, ["RAM", "CPU"]), {})
        self.assertEqual(self.ledger.shortfall({}, ["RAM", "CPU"]), {})


class MeasuredLedgerTests(SynchronousTestCase):
    """
    A measured resource: free is the measurement (as upstream), available is
    the measurement less what starting services reserved.
    """

    def setUp(self) -> None:
        self.ledger = static_and_measured()

    def test_is_measured(self) -> None:
        """Only the resource with a CheckCommand is measured."""
        self.assertTrue(self.ledger.is_measured("VRAM"))
        self.assertFalse(self.ledger.is_measured("RAM"))

    def test_no_value_yet(self) -> None:
        """Before its first check a measured resource has no free amount."""
        self.assertIsNone(self.ledger.free("VRAM"))
        self.assertIsNone(self.ledger.available("VRAM"))
        self.assertEqual(self.ledger.shortfall({"VRAM": 10}, ["VRAM"]), {"VRAM": 10})

    def test_failed_check(self) -> None:
        """A check that gave no value (None) makes the whole requirement missing."""
        self.ledger.measured["VRAM"] = None
        self.assertIsNone(self.ledger.free("VRAM"))
        self.assertEqual(self.ledger.shortfall({"VRAM": 10}, ["VRAM"]), {"VRAM": 10})

    def test_available_is_measured_minus_reserved(self) -> None:
        """Starting services' reservations are subtracted from the measurement."""
        self.ledger.measured["VRAM"] = 1000
        self.ledger.hold("A", {"VRAM": 300, "RAM": 10})
        self.assertEqual(self.ledger.free("VRAM"), 1000)
        self.assertEqual(self.ledger.available("VRAM"), 700)
        self.assertEqual(self.ledger.reserved_by_starting("VRAM"), 300)
        self.assertEqual(self.ledger.in_use("VRAM"), 300)
        self.assertEqual(self.ledger.shortfall({"VRAM": 800}, ["VRAM"]), {"VRAM": 100})
        self.assertEqual(self.ledger.shortfall({"VRAM": 700}, ["VRAM"]), {})

    def test_running_services_are_in_the_measurement(self) -> None:
        """A running service's use is in the measured value already: not subtracted."""
        self.ledger.measured["VRAM"] = 1000
        self.ledger.hold("A", {"VRAM": 300, "RAM": 10})
        self.ledger.mark_running("A")
        self.assertEqual(self.ledger.free("VRAM"), 1000)
        self.assertEqual(self.ledger.available("VRAM"), 1000)
        self.assertEqual(self.ledger.in_use("VRAM"), 300)
        self.assertEqual(self.ledger.usage_by_service("VRAM"), {"A": 300})
        # The static resource is still accounted for by lmproxy.
        self.assertEqual(self.ledger.free("RAM"), 90)

    def test_negative_available(self) -> None:
        """A measurement below what starting services reserved leaves a negative amount."""
        self.ledger.measured["VRAM"] = 100
        self.ledger.hold("A", {"VRAM": 300})
        self.assertEqual(self.ledger.free("VRAM"), 100)
        self.assertEqual(self.ledger.available("VRAM"), -200)
        self.assertEqual(self.ledger.shortfall({"VRAM": 50}, ["VRAM"]), {"VRAM": 250})

    def test_status_has_upstreams_meanings(self) -> None:
        """
        C{/status} of a measured resource: total is its Amount, in use counts
        starting services, free is the raw measurement; available is lmproxy's.
        """
        ledger = Ledger.from_config(
            [ResourceConfig("VRAM", 24, check_command="nvidia-free", check_interval=1.0)]
        )
        ledger.measured["VRAM"] = 11
        ledger.hold("A", {"VRAM": 10})
        ledger.hold("B", {"VRAM": 3})
        ledger.mark_running("B")
        self.assertEqual(
            ledger.status("VRAM", [("C", {"VRAM": 5})]),
            ResourceStatus(
                name="VRAM",
                total=24,
                measured=11,
                reserved_by_starting_services=10,
                in_use=13,
                free=11,
                usage_by_service={"A": 10, "B": 3, "C": 5},
                available=1,
            ),
        )

    def test_shortfall_of_chosen_resources_only(self) -> None:
        """Static resources can be checked without looking at measured ones."""
        self.ledger.hold("A", {"RAM": 95})
        requirements = {"RAM": 10, "VRAM": 10}
        self.assertEqual(self.ledger.shortfall(requirements, ["RAM"]), {"RAM": 5})
        self.assertEqual(self.ledger.shortfall(requirements, ["VRAM"]), {"VRAM": 10})


class PlanEvictionTests(SynchronousTestCase):
    """L{plan_eviction}: which idle services to stop, least recently used first."""

    def test_nothing_missing(self) -> None:
        """Nothing missing: nobody is stopped, not even when candidates exist."""
        self.assertEqual(plan_eviction({}, [("A", {"VRAM": 5})]), [])
        self.assertEqual(plan_eviction({"VRAM": 0}, [("A", {"VRAM": 5})]), [])
        self.assertEqual(plan_eviction({"VRAM": -3}, []), [])

    def test_no_candidates(self) -> None:
        """Something missing and nobody to stop: None."""
        self.assertIsNone(plan_eviction({"VRAM": 1}, []))

    def test_least_recently_used_first(self) -> None:
        """Of equal candidates the least recently used (first) one is stopped."""
        candidates: Candidates = [("old", {"VRAM": 5}), ("mid", {"VRAM": 5}), ("new", {"VRAM": 5})]
        self.assertEqual(plan_eviction({"VRAM": 5}, candidates), ["old"])
        self.assertEqual(plan_eviction({"VRAM": 6}, candidates), ["old", "mid"])
        self.assertEqual(plan_eviction({"VRAM": 15}, candidates), ["old", "mid", "new"])

    def test_skips_services_holding_nothing_missing(self) -> None:
        """A service that frees nothing missing is never stopped."""
        candidates: Candidates = [("ram", {"RAM": 50}), ("empty", {}), ("vram", {"VRAM": 5})]
        self.assertEqual(plan_eviction({"VRAM": 5}, candidates), ["vram"])

    def test_not_enough_stops_nothing(self) -> None:
        """When all candidates together cannot free enough, nothing is stopped."""
        candidates: Candidates = [("A", {"VRAM": 5}), ("B", {"VRAM": 4})]
        self.assertIsNone(plan_eviction({"VRAM": 10}, candidates))

    def test_every_resource_must_be_covered(self) -> None:
        """Freeing enough of one resource but not of another stops nothing."""
        candidates: Candidates = [("A", {"VRAM": 50, "RAM": 1}), ("B", {"VRAM": 50})]
        self.assertIsNone(plan_eviction({"VRAM": 10, "RAM": 2}, candidates))

    def test_multiple_resources(self) -> None:
        """Victims together free enough of every missing resource."""
        candidates: Candidates = [
            ("vram", {"VRAM": 8}),
            ("ram", {"RAM": 8}),
            ("both", {"VRAM": 1, "RAM": 1}),
        ]
        self.assertEqual(plan_eviction({"VRAM": 8, "RAM": 8}, candidates), ["vram", "ram"])
        self.assertEqual(plan_eviction({"VRAM": 9, "RAM": 8}, candidates), ["vram", "ram", "both"])

    def test_prunes_victims_made_unneeded(self) -> None:
        """
        A service taken early that a later, bigger one makes unneeded is put
        back: only the big one is stopped.
        """
        candidates: Candidates = [
            ("small", {"VRAM": 2}),
            ("big", {"VRAM": 8, "RAM": 8}),
            ("ram", {"RAM": 8}),
        ]
        self.assertEqual(plan_eviction({"VRAM": 8, "RAM": 4}, candidates), ["big"])

    def test_prunes_most_recently_used_first(self) -> None:
        """
        When either of two taken services could be put back, the more recently
        used one is kept running and the older one is stopped.
        """
        candidates: Candidates = [
            ("old", {"VRAM": 5}),
            ("newer", {"VRAM": 5}),
            ("newest", {"VRAM": 5, "RAM": 1}),
        ]
        # Taken: old, newer (VRAM covered), newest (for RAM); then newer or old
        # is unneeded, not both: newer stays.
        self.assertEqual(plan_eviction({"VRAM": 10, "RAM": 1}, candidates), ["old", "newest"])
        # Taken: old, newer; both needed.
        self.assertEqual(plan_eviction({"VRAM": 10}, candidates), ["old", "newer"])

    def test_victims_in_lru_order(self) -> None:
        """The victims come back least recently used first."""
        candidates: Candidates = [("c", {"A": 1}), ("a", {"B": 1}), ("b", {"C": 1})]
        self.assertEqual(plan_eviction({"A": 1, "B": 1, "C": 1}, candidates), ["c", "a", "b"])

    def test_does_not_mutate_inputs(self) -> None:
        """The missing amounts and the candidates are left as they were."""
        missing = {"VRAM": 8}
        amounts = {"VRAM": 5}
        candidates: Candidates = [("A", amounts), ("B", {"VRAM": 5})]
        self.assertEqual(plan_eviction(missing, candidates), ["A", "B"])
        self.assertEqual(missing, {"VRAM": 8})
        self.assertEqual(amounts, {"VRAM": 5})


RESOURCES = ["R0", "R1", "R2"]

missing_strategy = st.dictionaries(st.sampled_from(RESOURCES), st.integers(0, 20), max_size=3)
candidates_strategy = st.lists(
    st.dictionaries(st.sampled_from(RESOURCES), st.integers(0, 10), max_size=3),
    max_size=7,
).map(lambda amounts: [(f"s{i}", a) for i, a in enumerate(amounts)])


def freed(victims: Sequence[str], candidates: Candidates, resource: str) -> int:
    holdings = dict(candidates)
    return sum(holdings[v].get(resource, 0) for v in victims)


def covers(victims: Sequence[str], candidates: Candidates, missing: Mapping[str, int]) -> bool:
    return all(freed(victims, candidates, r) >= m for r, m in missing.items())


class PlanEvictionPropertyTests(SynchronousTestCase):
    """Properties of L{plan_eviction} over random inputs."""

    @settings(max_examples=300, deadline=None)
    @given(missing_strategy, candidates_strategy)
    def test_plan_covers_or_none_possible(
        self, missing: dict[str, int], candidates: Candidates
    ) -> None:
        """A plan covers every missing amount; None only when no set could."""
        victims = plan_eviction(missing, candidates)
        all_names = [name for name, _ in candidates]
        if victims is None:
            self.assertFalse(covers(all_names, candidates, missing))
        else:
            self.assertTrue(covers(victims, candidates, missing))

    @settings(max_examples=300, deadline=None)
    @given(missing_strategy, candidates_strategy)
    def test_plan_is_minimal(self, missing: dict[str, int], candidates: Candidates) -> None:
        """No victim can be left running while the rest still free enough."""
        victims = plan_eviction(missing, candidates)
        if victims is None:
            return
        for victim in victims:
            rest = [v for v in victims if v != victim]
            self.assertFalse(
                covers(rest, candidates, missing), f"{victim} is not needed in {victims}"
            )

    @settings(max_examples=300, deadline=None)
    @given(missing_strategy, candidates_strategy)
    def test_plan_from_shortest_lru_prefix(
        self, missing: dict[str, int], candidates: Candidates
    ) -> None:
        """
        Victims are distinct candidates, in LRU order, all from the shortest
        least-recently-used prefix of candidates that frees enough.
        """
        victims = plan_eviction(missing, candidates)
        if victims is None:
            return
        names = [name for name, _ in candidates]
        self.assertEqual(len(set(victims)), len(victims))
        self.assertEqual(victims, [n for n in names if n in victims])
        prefix = next(k for k in range(len(names) + 1) if covers(names[:k], candidates, missing))
        self.assertLessEqual(set(victims), set(names[:prefix]))
