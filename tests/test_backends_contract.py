"""
The L{IBackends} contract, run against the real L{Supervisor} (on a fake
process reactor) and against L{FakeBackends}, so that the listeners' and the
management API's tests, which use the fake, test against what the supervisor
really does.  Also: every fake in L{lmproxy.testing} provides the interface it
stands in for.
"""

from __future__ import annotations

import os
from typing import cast

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IConnector, IProcessTransport, IReactorProcess
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from lmproxy.config import Config, ResourceConfig, ServiceConfig
from lmproxy.core.readiness import ReadinessReactor
from lmproxy.core.supervisor import Supervisor
from lmproxy.interfaces import (
    IBackends,
    ILease,
    IStatusObserver,
    ServiceBusy,
    ServiceState,
    ServiceUnavailable,
    StatusChange,
    UnknownService,
)
from lmproxy.testing import FakeBackends, FakeLease, MemoryProcessReactor
from lmproxy.testing.processes import _FakeConnector

PORTS = {"plain": 9101, "restarts": 9102}


def contract_config(log_dir: str) -> Config:
    """Two services: one that restarts on a failed connection, one that does not."""
    return Config(
        services=tuple(
            ServiceConfig(
                name=name,
                command="true",
                args=name,
                proxy_target_host="127.0.0.1",
                proxy_target_port=port,
                log_file_path=os.path.join(log_dir, f"{name}.log"),
                restart_on_connection_failure=name == "restarts",
                resource_requirements={"VRAM": 1},
            )
            for name, port in PORTS.items()
        ),
        resources=(ResourceConfig("VRAM", 10),),
    )


@implementer(IStatusObserver)
class NameRecorder:
    """Records the names it is told changed."""

    def __init__(self) -> None:
        self.services: set[str] = set()

    def status_changed(self, change: StatusChange) -> None:
        self.services |= change.services

    def start_finished(self, service: str, seconds: float, succeeded: bool) -> None:
        pass

    def service_evicted(self, service: str) -> None:
        pass


class BackendsContract:
    """
    What every L{IBackends} does; a subclass supplies the implementation and
    the means to end its starts.
    """

    backends: IBackends

    def start_succeeds(self, service: str) -> None:
        """The pending start of C{service} gets ready."""
        raise NotImplementedError()

    def start_fails(self, service: str) -> None:
        """The pending start of C{service} fails."""
        raise NotImplementedError()

    def settle(self) -> None:
        """Let the reactor turn end (observers are told by then)."""

    # The tests; `self` is also a SynchronousTestCase.

    def case(self) -> SynchronousTestCase:
        return cast(SynchronousTestCase, self)

    def counts(self, service: str) -> tuple[int, int]:
        status = self.backends.service_status(service)
        return status.waiting_connections, status.proxied_connections

    def running_lease(self, service: str) -> ILease:
        d = self.backends.acquire(service)
        if not d.called:
            self.start_succeeds(service)
        return self.case().successResultOf(d)

    def test_provides_the_interface(self) -> None:
        self.case().assertTrue(verifyObject(IBackends, self.backends))

    def test_unknown_service(self) -> None:
        t = self.case()
        t.failureResultOf(self.backends.acquire("nope"), UnknownService)
        t.failureResultOf(self.backends.start("nope"), UnknownService)
        t.failureResultOf(self.backends.stop("nope", True), UnknownService)
        t.assertRaises(UnknownService, self.backends.service_status, "nope")
        t.assertRaises(KeyError, self.backends.resource_status, "nope")

    def test_waiters_share_a_start_and_get_their_own_leases(self) -> None:
        t = self.case()
        ds = [self.backends.acquire("plain") for _ in range(3)]
        for d in ds:
            t.assertNoResult(d)
        t.assertEqual(self.counts("plain"), (3, 0))
        self.start_succeeds("plain")
        leases = [t.successResultOf(d) for d in ds]
        for lease in leases:
            t.assertTrue(verifyObject(ILease, lease))
            t.assertEqual((lease.service, lease.port), ("plain", PORTS["plain"]))
            t.assertTrue(lease.may_reconnect)
        t.assertEqual(len({id(lease) for lease in leases}), 3)
        t.assertEqual(self.counts("plain"), (0, 3))
        t.assertEqual(self.backends.service_status("plain").status, ServiceState.RUNNING)

    def test_running_service_leases_at_once(self) -> None:
        t = self.case()
        self.running_lease("plain")
        t.successResultOf(self.backends.acquire("plain"))
        t.assertEqual(self.counts("plain"), (0, 2))

    def test_release_is_idempotent(self) -> None:
        t = self.case()
        lease = self.running_lease("plain")
        other = self.running_lease("plain")
        lease.release()
        lease.release()
        t.assertEqual(self.counts("plain"), (0, 1))
        other.release()
        t.assertEqual(self.counts("plain"), (0, 0))

    def test_a_client_that_leaves_stops_waiting(self) -> None:
        t = self.case()
        staying, leaving = self.backends.acquire("plain"), self.backends.acquire("plain")
        leaving.cancel()
        t.failureResultOf(leaving, CancelledError)
        t.assertEqual(self.counts("plain"), (1, 0))
        self.start_succeeds("plain")
        t.successResultOf(staying)

    def test_failed_start_fails_every_waiter(self) -> None:
        t = self.case()
        ds = [self.backends.acquire("plain") for _ in range(2)]
        self.start_fails("plain")
        for d in ds:
            t.failureResultOf(d, ServiceUnavailable)
        t.assertEqual(self.counts("plain"), (0, 0))

    def test_start_holds_no_lease(self) -> None:
        t = self.case()
        d = self.backends.start("plain")
        self.start_succeeds("plain")
        t.assertIsNone(t.successResultOf(d))
        t.assertEqual(self.counts("plain"), (0, 0))

    def test_stop_refuses_a_busy_service_unless_forced(self) -> None:
        t = self.case()
        self.running_lease("plain")
        t.failureResultOf(self.backends.stop("plain", False), ServiceBusy)
        t.assertEqual(self.backends.service_status("plain").status, ServiceState.RUNNING)
        t.assertIsNone(t.successResultOf(self.backends.stop("plain", True)))
        t.assertEqual(self.backends.service_status("plain").status, ServiceState.STOPPED)

    def test_stop_fails_the_waiters(self) -> None:
        """Stopping a service that clients wait for fails them; the stop completes."""
        t = self.case()
        d = self.backends.acquire("plain")
        stopped = self.backends.stop("plain", False)
        t.failureResultOf(d, ServiceUnavailable)
        t.assertIsNone(t.successResultOf(stopped))
        t.assertEqual(self.counts("plain"), (0, 0))
        t.assertEqual(self.backends.service_status("plain").status, ServiceState.STOPPED)

    def test_reconnect_without_restart_fails(self) -> None:
        t = self.case()
        lease = self.running_lease("plain")
        t.failureResultOf(lease.reconnect(), ServiceUnavailable)
        t.assertEqual(self.counts("plain"), (0, 0))

    def test_reconnect_restarts_once_per_client(self) -> None:
        """A restart gives a lease that may not reconnect again."""
        t = self.case()
        lease = self.running_lease("restarts")
        d = lease.reconnect()
        if not d.called:
            self.start_succeeds("restarts")
        again = t.successResultOf(d)
        t.assertFalse(again.may_reconnect)
        t.assertEqual(self.counts("restarts"), (0, 1))
        t.failureResultOf(again.reconnect(), ServiceUnavailable)
        t.assertEqual(self.counts("restarts"), (0, 0))

    def test_snapshot_agrees_with_the_statuses(self) -> None:
        t = self.case()
        self.running_lease("plain")
        snapshot = self.backends.snapshot()
        t.assertEqual(snapshot.services, tuple(self.backends.service_status(n) for n in PORTS))
        t.assertEqual(snapshot.resources, (self.backends.resource_status("VRAM"),))

    def test_queued_clients_are_counted_and_told(self) -> None:
        """Clients waiting for a turn show in the status, and observers hear of them."""
        t = self.case()
        recorder = NameRecorder()
        self.backends.subscribe(recorder)
        self.backends.queued("plain", 1)
        self.backends.queued("plain", 1)
        self.backends.queued("plain", -1)
        self.settle()
        t.assertEqual(self.backends.service_status("plain").queued_connections, 1)
        t.assertIn("plain", recorder.services)
        t.assertEqual(self.backends.service_status("restarts").queued_connections, 0)
        t.assertRaises(UnknownService, self.backends.queued, "nope", 1)

    def test_observers_hear_what_changed(self) -> None:
        t = self.case()
        recorder = NameRecorder()
        unsubscribe = self.backends.subscribe(recorder)
        self.backends.acquire("plain")
        self.settle()
        t.assertIn("plain", recorder.services)
        t.assertNotIn("restarts", recorder.services)
        unsubscribe()
        unsubscribe()
        recorder.services.clear()
        self.start_succeeds("plain")
        self.settle()
        t.assertEqual(recorder.services, set())


class SupervisorContractTests(BackendsContract, SynchronousTestCase):
    """The real thing, on a fake process reactor."""

    def setUp(self) -> None:
        self.reactor = MemoryProcessReactor()
        config = contract_config(os.path.abspath(self.mktemp()))
        self.supervisor = Supervisor(
            config, cast(ReadinessReactor, self.reactor), self.reactor.signal_group
        )
        self.supervisor.startService()
        self.backends = self.supervisor
        self.addCleanup(self.shut_down)

    def shut_down(self) -> None:
        d = self.supervisor.stopService()
        for process in self.reactor.live_processes():
            process.exit(0)
        self.successResultOf(d)

    def start_succeeds(self, service: str) -> None:
        self.reactor.accept_connection(PORTS[service])

    def start_fails(self, service: str) -> None:
        [process] = self.reactor.live_processes(service)
        process.exit(1)

    def settle(self) -> None:
        self.reactor.advance(0)


class FakeContractTests(BackendsContract, SynchronousTestCase):
    """The fake the listeners' and the management API's tests use."""

    def setUp(self) -> None:
        self.fake = FakeBackends(contract_config("/nonexistent"))
        self.backends = self.fake

    def start_succeeds(self, service: str) -> None:
        self.fake.finish_start(service)

    def start_fails(self, service: str) -> None:
        self.fake.fail_start(service)


class FakesProvideTheirInterfacesTests(SynchronousTestCase):
    """verifyObject on every fake of L{lmproxy.testing}."""

    def test_fake_lease(self) -> None:
        backends = FakeBackends(contract_config("/nonexistent"))
        backends.finish_start("plain")
        lease = self.successResultOf(backends.acquire("plain"))
        self.assertIsInstance(lease, FakeLease)
        self.assertTrue(verifyObject(ILease, lease))

    def test_process_reactor_and_its_processes(self) -> None:
        reactor = MemoryProcessReactor()
        self.assertTrue(verifyObject(IReactorProcess, reactor))
        from twisted.internet.protocol import ProcessProtocol

        transport = reactor.spawnProcess(ProcessProtocol(), "/bin/true", ["/bin/true"])
        self.assertTrue(verifyObject(IProcessTransport, transport))
        self.assertTrue(verifyObject(IConnector, _FakeConnector()))

    def test_deferreds_of_the_fake_are_real(self) -> None:
        """Waiters of the fake are cancellable Deferreds, as the supervisor's are."""
        backends = FakeBackends(contract_config("/nonexistent"))
        d = backends.acquire("plain")
        self.assertIsInstance(d, Deferred)
        d.cancel()
        self.failureResultOf(d, CancelledError)
