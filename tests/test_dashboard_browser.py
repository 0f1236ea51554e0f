"""
The dashboard in a real headless Chromium (Debian's ``chromium`` and
``chromium-driver``, driven by selenium): against the real management app on
a real socket with L{FakeBackends} standing in for the supervisor (every
state, on cue), and against a real ``twistd -n lmproxy`` with demo model
servers (the real thing, end to end; its screenshot is the README's).

Selenium blocks, so every browser step runs in a thread (``deferToThread``)
and waits for its condition with a deadline, while the reactor thread serves
the page and changes the state between steps.  The dashboard behind a
management key is tested in L{tests.test_dashboard_browser_key}.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Protocol
from twisted.internet.threads import deferToThread
from twisted.protocols.policies import WrappingFactory
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.server import Site

from lmproxy.config import Config, ResourceConfig, ServiceConfig
from lmproxy.interfaces import ServiceState, Shortage, StartFailure, WaitingFor
from lmproxy.listen.guard import management_resource
from lmproxy.manage.api import ManagementApi
from lmproxy.testing import ScriptedBackends
from tests.harness import Lmproxy, demo_service, free_ports, http, raw_connect, wait_for

try:
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.chrome.webdriver import WebDriver as Chrome
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.remote.webelement import WebElement
    from selenium.webdriver.support.ui import WebDriverWait

    HAVE_SELENIUM = True
except ImportError:  # pragma: no cover - depends on the machine
    HAVE_SELENIUM = False

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")
WAIT_SECONDS = 15

ALPHA = "alpha"
ZETA = "zeta-sd-webui"
MARKUP = "<b>x</b>"
QWEN = "Qwen/Qwen2.5-7B-Instruct"

T = TypeVar("T")


def browser_config(log_dir: str) -> Config:
    """Four services in an order that sorting by name changes."""
    return Config(
        services=(
            ServiceConfig(
                name=ZETA,
                command="webui.sh",
                proxy_target_port=17860,
                listen_port=7860,
                service_url="http://localhost:7860/",
                log_file_path=os.path.join(log_dir, "zeta.log"),
                resource_requirements={"VRAM": 2000, "RAM": 24000},
            ),
            ServiceConfig(
                name=MARKUP,
                command="x",
                proxy_target_port=18188,
                listen_port=8188,
                service_url="javascript:alert(1)",
                log_file_path=os.path.join(log_dir, "x.log"),
                resource_requirements={"VRAM": 20000},
            ),
            ServiceConfig(
                name=ALPHA,
                command="llama-server",
                proxy_target_port=18081,
                listen_port=8081,
                service_url="http://localhost:8081/",
                openai_api=True,
                openai_api_models=(ALPHA, "gemma"),
                log_file_path=os.path.join(log_dir, "alpha.log"),
                resource_requirements={"VRAM": 12000, "RAM": 3000},
            ),
            ServiceConfig(
                name=QWEN,
                command="vllm",
                proxy_target_port=18082,
                openai_api=True,
                openai_api_models=(QWEN,),
                log_file_path=os.path.join(log_dir, "qwen.log"),
                resource_requirements={"VRAM": 9000},
            ),
        ),
        resources=(ResourceConfig("VRAM", 24000), ResourceConfig("RAM", 32000)),
    )


class ConnectionTracker(WrappingFactory):
    """Knows the open connections, so the test can cut them and wait until they are gone."""

    def __init__(self, factory: Site) -> None:
        super().__init__(factory)
        self._idle: list[Deferred[None]] = []

    def unregisterProtocol(self, p: Protocol) -> None:
        super().unregisterProtocol(p)
        if not self.protocols:
            waiters, self._idle = self._idle, []
            for d in waiters:
                d.callback(None)

    def close_all(self) -> Deferred[None]:
        if not self.protocols:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle.append(d)
        for p in list(self.protocols):
            p.transport.abortConnection()
        return d


def require_browser() -> None:
    """Skip unless selenium, Chromium and its driver are installed."""
    if not HAVE_SELENIUM:
        raise SkipTest("selenium is not installed (pip install selenium)")
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.path.exists(path):
            raise SkipTest(f"{path} is missing (apt-get install chromium chromium-driver)")


class BrowserTestCase(TestCase):
    """
    The steps a person takes in the dashboard, for the tests below: each
    blocks, so it runs in a thread (L{in_browser}) and waits for its condition
    with a deadline.  A subclass sets C{self.tmp} (artifacts, the browser's
    profile) in C{setUp} and C{self.driver} once the browser runs.
    """

    tmp: str
    driver: Chrome | None = None

    async def quit_browser(self) -> None:
        if self.driver is not None:
            driver, self.driver = self.driver, None
            await deferToThread(driver.quit)

    def start_browser(self) -> Chrome:
        options = Options()
        options.binary_location = CHROMIUM
        for flag in (
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1400,1000",
            "--force-device-scale-factor=1",
            f"--user-data-dir={tempfile.mkdtemp(dir=self.tmp)}",
        ):
            options.add_argument(flag)
        service = Service(
            executable_path=CHROMEDRIVER, log_output=os.path.join(self.tmp, "chromedriver.log")
        )
        return Chrome(service=service, options=options)

    def wait(self, condition: Callable[[WebDriver], T], message: str) -> T:
        assert self.driver is not None
        return WebDriverWait(self.driver, WAIT_SECONDS, poll_frequency=0.05).until(
            condition, message
        )

    def rows(self, driver: WebDriver) -> list[WebElement]:
        return driver.find_elements(By.CSS_SELECTOR, "tbody.service")

    def label(self, row: WebElement) -> str:
        text: str = row.find_element(By.CSS_SELECTOR, ".service-name .label").text
        return text

    def row(self, driver: WebDriver, name: str) -> WebElement:
        for row in self.rows(driver):
            if self.label(row) == name:
                return row
        raise LookupError(name)

    def names(self, driver: WebDriver) -> list[str]:
        return [self.label(row) for row in self.rows(driver)]

    def state_of(self, name: str) -> Callable[[WebDriver], str | None]:
        def state(driver: WebDriver) -> str | None:
            try:
                return self.row(driver, name).get_attribute("data-state")
            except LookupError:
                return None

        return state

    def wait_state(self, name: str, wanted: str) -> None:
        self.wait(lambda d: self.state_of(name)(d) == wanted, f"{name} never became {wanted}")

    def mode(self, driver: WebDriver) -> str | None:
        return driver.find_element(By.ID, "link-state").get_attribute("data-mode")

    async def in_browser(self, step: Callable[[], T]) -> T:
        result: T = await deferToThread(step)
        return result

    def wait_connections(self, name: str, proxied: int, waiting: int) -> None:
        def counts(driver: WebDriver) -> list[str]:
            cell = self.row(driver, name).find_element(By.CSS_SELECTOR, "td.connections")
            # The queued count shows only while clients wait for a turn.
            return [
                b.text for b in cell.find_elements(By.CSS_SELECTOR, ".count b") if b.is_displayed()
            ]

        self.wait(
            lambda d: counts(d) == [str(proxied), str(waiting)],
            f"{name} never showed {proxied} proxied and {waiting} waiting",
        )

    def click(self, name: str, selector: str) -> None:
        assert self.driver is not None
        self.row(self.driver, name).find_element(By.CSS_SELECTOR, selector).click()

    def script_errors(self) -> list[dict[str, Any]]:
        assert self.driver is not None
        return [e for e in self.driver.get_log("browser") if e.get("source") == "javascript"]

    def confirm_force(self) -> None:
        self.wait(lambda d: d.find_element(By.ID, "confirm").is_displayed(), "no question asked")
        assert self.driver is not None
        dialog = self.driver.find_element(By.ID, "confirm")
        self.assertIn("1 proxied connection", dialog.text)
        dialog.find_element(By.ID, "confirm-force").click()

    def screenshot(self, for_docs: bool = False, name: str = "dashboard.png") -> None:
        """
        The whole page as C{name} in C{self.tmp}, the test's artifact;
        C{for_docs}: also as C{docs/dashboard.png}, the README's picture, when
        C{LMPROXY_UPDATE_SCREENSHOT=1} (a test run leaves the source tree alone).
        """
        assert self.driver is not None
        # The whole page, not only what fits the window.
        width, height = self.driver.execute_script(
            "const e = document.documentElement; return [e.scrollWidth, e.scrollHeight];"
        )
        shot = self.driver.execute_cdp_cmd(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
            },
        )
        path = os.path.join(self.tmp, name)
        with open(path, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        if for_docs and os.environ.get("LMPROXY_UPDATE_SCREENSHOT") == "1":
            shutil.copyfile(path, os.path.join(DOCS, "dashboard.png"))


class ScriptedBrowserTestCase(BrowserTestCase):
    """
    The browser against the real management app (behind its gate) on a real
    socket, with L{ScriptedBackends} standing in for the supervisor.
    """

    def serve(self, config: Config) -> None:
        """Serve the management API of C{config} on 127.0.0.1, at C{self.url}."""
        from twisted.internet import reactor

        self.reactor: Any = reactor
        self.config = config
        self.backends = ScriptedBackends(self.config, started_at=time.time() - 26 * 3600)
        self.api = ManagementApi(self.backends, self.config, reactor, log_poll_interval=0.1)
        self.site = ConnectionTracker(Site(management_resource(self.api.app.resource(), config)))
        self.port = self.listen(0)
        self.url = f"http://127.0.0.1:{self.port_number()}/"

    def port_number(self) -> int:
        address = self.port.getHost()
        assert isinstance(address, IPv4Address)
        return address.port

    async def stop_listening(self) -> None:
        stopped = self.port.stopListening()
        if stopped is not None:
            await stopped

    def listen(self, number: int) -> IListeningPort:
        port: IListeningPort = self.reactor.listenTCP(number, self.site, interface="127.0.0.1")
        return port

    async def outage(self) -> None:
        """Stop answering: close the listener and every open connection."""
        await self.stop_listening()
        await self.site.close_all()

    async def tearDownAsync(self) -> None:
        await self.quit_browser()
        await self.stop_listening()
        await self.site.close_all()

    def tearDown(self) -> Deferred[None]:  # type: ignore[override]
        return Deferred.fromCoroutine(self.tearDownAsync())


class DashboardBrowserTests(ScriptedBrowserTestCase):
    """The dashboard as a person sees it."""

    timeout = 180

    def setUp(self) -> None:
        require_browser()
        self.tmp = os.path.abspath(self.mktemp())
        os.makedirs(self.tmp)
        self.serve(browser_config(self.tmp))
        now = time.time()
        self.backends.service_changes[ZETA] = {"last_used": now - 3 * 3600}
        self.backends.service_changes[ALPHA] = {"last_used": now - 42, "pid": 41234}
        # A failed start whose back-off lasts the whole test; a long unbroken
        # reason must wrap, not widen the page.
        self.backends.service_changes[MARKUP] = {
            "failed_starts": 1,
            "last_failure": StartFailure(
                now - 12,
                "<b>exited</b> " + "x" * 400,
                ("<i>CUDA error</i>: out of memory", "bye"),
                True,
                now + 3600,
            ),
        }

    # The scenario

    def test_dashboard(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self.scenario())

    async def scenario(self) -> None:
        self.driver = await self.in_browser(self.start_browser)
        driver = self.driver
        with open(os.path.join(self.tmp, "alpha.log"), "w") as f:
            f.writelines(f"llama_model_loader: tensor {i} <i>loaded</i>\n" for i in range(300))

        await self.in_browser(self.load_page)
        await self.in_browser(self.markup_is_text)

        # A client arrives: the service goes from stopped to running, live.
        self.backends.acquire(ALPHA)
        await self.in_browser(lambda: self.wait_connections(ALPHA, 0, 1))
        self.backends.finish_start(ALPHA)
        await self.in_browser(lambda: self.wait_state(ALPHA, ServiceState.RUNNING))
        await self.in_browser(lambda: self.wait_connections(ALPHA, 1, 0))
        self.assertEqual(await self.in_browser(lambda: self.mode(driver)), "live")
        await self.in_browser(self.timeline_shows_the_run)

        await self.in_browser(self.sort_by_name_and_reload)
        await self.in_browser(self.follow_log)
        with open(os.path.join(self.tmp, "alpha.log"), "a") as f:
            f.write("srv  update_slots: all slots are idle\n")
        await self.in_browser(
            lambda: self.wait(
                lambda d: d.find_element(By.CSS_SELECTOR, "pre.log").text.endswith(
                    "all slots are idle"
                ),
                "the new log line never showed",
            )
        )

        # A varied, realistic picture for the README.
        self.backends.finish_start(ZETA)
        self.backends.set_state(QWEN, ServiceState.STARTING)
        self.backends.acquire(MARKUP)
        self.backends.service_changes[ZETA]["pinned"] = True
        self.backends.service_changes[ALPHA]["queued_connections"] = 2
        self.backends.changed([ALPHA])
        self.backends.service_changes[QWEN] = {
            "starting_since": time.time() - 4,
            "start_estimate": 12.0,
        }
        self.backends.changed([QWEN])
        self.backends.service_changes[MARKUP]["waiting_for"] = WaitingFor(
            time.time() - 3, (Shortage("VRAM", 20000, 10000, (ZETA, ALPHA), (ZETA,), (ALPHA,)),)
        )
        self.backends.set_state(MARKUP, ServiceState.WAITING_FOR_RESOURCES)
        await self.in_browser(lambda: self.wait_state(MARKUP, ServiceState.WAITING_FOR_RESOURCES))
        await self.in_browser(self.rows_explain)
        await self.in_browser(self.screenshot)
        await self.in_browser(self.columns_fit)

        # Stop an idle service: no question asked.
        self.backends.set_state(QWEN, ServiceState.STOPPED)
        await self.in_browser(lambda: self.click(ZETA, "button.stop"))
        await self.in_browser(lambda: self.wait_state(ZETA, ServiceState.STOPPED))
        self.assertEqual(self.backends.stop_calls, [(ZETA, False)])

        # Stop a busy one: 409, the page asks, then stops with force.
        await self.in_browser(lambda: self.click(ALPHA, "button.stop"))
        await self.in_browser(self.confirm_force)
        await self.in_browser(lambda: self.wait_state(ALPHA, ServiceState.STOPPED))
        self.assertEqual(self.backends.stop_calls, [(ZETA, False), (ALPHA, False), (ALPHA, True)])

        # Start from the page: the button waits for the start, then it runs.
        await self.in_browser(lambda: self.click(ZETA, "button.start"))
        await self.in_browser(self.wait_starting(ZETA))
        self.backends.finish_start(ZETA)
        await self.in_browser(lambda: self.wait_state(ZETA, ServiceState.RUNNING))
        await self.in_browser(lambda: self.wait_connections(ZETA, 0, 0))

        self.assertEqual(await self.in_browser(self.script_errors), [])

        # lmproxy unreachable: the banner; back: live again.
        port_number = self.port_number()
        await self.outage()
        await self.in_browser(
            lambda: self.wait(
                lambda d: d.find_element(By.ID, "banner").is_displayed(), "no error banner"
            )
        )
        self.port = self.listen(port_number)
        await self.in_browser(
            lambda: self.wait(
                lambda d: (
                    not d.find_element(By.ID, "banner").is_displayed()
                    and self.mode(d) in ("polling", "live")
                ),
                "the banner stayed",
            )
        )
        await self.in_browser(
            lambda: self.wait(lambda d: self.mode(d) == "live", "the stream never came back")
        )

    def load_page(self) -> None:
        assert self.driver is not None
        self.driver.get(self.url)
        self.wait(lambda d: len(self.rows(d)) == 4, "the services never showed")
        self.wait(lambda d: self.mode(d) == "live", "the event stream never opened")
        self.assertEqual(self.driver.title, "lmproxy")
        self.assertEqual(self.names(self.driver), [ZETA, MARKUP, ALPHA, QWEN])
        self.assertFalse(self.driver.find_element(By.ID, "key-panel").is_displayed())

    def rows_explain(self) -> None:
        """A waiting row says what it waits for and who holds it; a pinned one says so."""
        assert self.driver is not None

        def details(name: str) -> Callable[[WebDriver], str]:
            return lambda d: self.row(d, name).find_element(By.CSS_SELECTOR, ".details").text

        self.wait(
            lambda d: (
                "waits for VRAM: needs 20,000, 10,000 free; held by zeta-sd-webui (pinned),"
                " alpha (in use)" in details(MARKUP)(d)
            ),
            "the waiting row never said why",
        )
        self.assertIn("pinned", details(ZETA)(self.driver))
        self.wait(
            lambda d: (
                "2 queued"
                in self.row(d, ALPHA).find_element(By.CSS_SELECTOR, "td.connections").text
            ),
            "the clients waiting for a turn never showed",
        )
        # A start in progress, against its learned estimate.
        self.wait(
            lambda d: (
                "of about 12 s (learned)"
                in self.row(d, QWEN).find_element(By.CSS_SELECTOR, ".progress-text").text
            ),
            "the start's progress never showed",
        )

    def timeline_shows_the_run(self) -> None:
        """The last hour: alpha's lane shows its run, with its tooltip; a lane per service."""
        assert self.driver is not None

        def spans(driver: WebDriver) -> list[str]:
            titles = driver.find_elements(By.CSS_SELECTOR, "#timeline rect.span title")
            return [t.get_attribute("textContent") or "" for t in titles]

        self.wait(
            lambda d: any(t.startswith(f"{ALPHA}: running,") for t in spans(d)),
            "the timeline never showed alpha running",
        )
        names = self.driver.execute_script(
            "return [...document.querySelectorAll('#timeline text.lane-label')]"
            ".map((label) => label.firstChild.nodeValue);"
        )
        self.assertEqual(names, [ZETA, MARKUP, ALPHA, QWEN])

    def columns_fit(self) -> None:
        """
        From 900 px wide up, every column of the table shows whole: nothing
        scrolls sideways, no cell ends past the table, every name is shown
        (wrapped, or cut with its whole text as a tooltip).
        """
        assert self.driver is not None
        driver = self.driver
        for width in (900, 1280, 1600):
            driver.set_window_size(width, 1000)
            self.wait(
                lambda d, w=width: d.execute_script("return window.innerWidth") <= w,
                f"the window never became {width} px wide",
            )
            wrap = driver.find_element(By.CSS_SELECTOR, ".table-wrap")
            scroll, client = driver.execute_script(
                "return [arguments[0].scrollWidth, arguments[0].clientWidth];", wrap
            )
            self.assertLessEqual(scroll, client, f"the table scrolls sideways at {width} px")
            # One layout, read at once: the page updates itself every second.
            right, cells = driver.execute_script(
                "const cells = arguments[0].querySelectorAll("
                "'table.services th, tr.main-row td');"
                "return [arguments[0].getBoundingClientRect().right,"
                " [...cells].map((c) => [c.getBoundingClientRect().right, c.innerText])];",
                wrap,
            )
            for end, text in cells:
                self.assertLessEqual(end, right + 1, f"a cell is cut at {width} px: {text!r}")
            for label in driver.find_elements(By.CSS_SELECTOR, ".service-name .label"):
                cut = driver.execute_script(
                    "return arguments[0].scrollWidth > arguments[0].clientWidth;", label
                )
                if cut:
                    self.assertEqual(label.get_attribute("title"), label.text)
            self.screenshot(name=f"dashboard-{width}.png")
        driver.set_window_size(1400, 1000)

    def markup_is_text(self) -> None:
        assert self.driver is not None
        row = self.row(self.driver, MARKUP)
        label = row.find_element(By.CSS_SELECTOR, ".service-name .label")
        self.assertEqual(label.text, MARKUP)
        # Nothing of it is markup: its only elements are the line breaks it may take.
        children = label.find_elements(By.CSS_SELECTOR, "*")
        self.assertEqual([child.tag_name for child in children], ["wbr"])
        self.assertEqual(label.get_attribute("title"), MARKUP)
        # Not a link: its ServiceUrl is javascript:, which the page refuses.
        self.assertEqual(row.find_element(By.CSS_SELECTOR, ".service-name").tag_name, "span")
        # A proper one is a link that opens in a new tab.
        link = self.row(self.driver, ALPHA).find_element(By.CSS_SELECTOR, "a.service-name")
        self.assertEqual(link.get_attribute("href"), "http://localhost:8081/")
        self.assertEqual(link.get_attribute("target"), "_blank")
        self.failure_is_shown()

    def failure_is_shown(self) -> None:
        """The last failed start under its row: when, why, the countdown, the output."""
        assert self.driver is not None
        failure = self.row(self.driver, MARKUP).find_element(By.CSS_SELECTOR, ".failure-row")
        text = failure.find_element(By.CSS_SELECTOR, ".failure-text").text
        self.assertTrue(text.startswith("failed ") and ": <b>exited</b> xxx" in text, text)
        retry = failure.find_element(By.CSS_SELECTOR, ".failure-retry").text
        self.assertRegex(retry, r"next try in \d+ s")
        self.assertEqual(failure.find_elements(By.CSS_SELECTOR, "b, i"), [])
        failure.find_element(By.CSS_SELECTOR, ".failure-tail summary").click()
        output = failure.find_element(By.CSS_SELECTOR, "pre.failure-output")
        self.wait(lambda d: output.is_displayed(), "the output never opened")
        self.assertEqual(output.text, "<i>CUDA error</i>: out of memory\nbye")
        self.assertEqual(
            self.row(self.driver, ALPHA).find_elements(
                By.CSS_SELECTOR, ".failure-row:not([hidden])"
            ),
            [],
        )
        width, client = self.driver.execute_script(
            "const e = document.querySelector('.table-wrap');return [e.scrollWidth, e.clientWidth];"
        )
        self.assertLessEqual(width, client, "the table overflows sideways")

    def sort_by_name_and_reload(self) -> None:
        assert self.driver is not None
        by_name = sorted([ZETA, MARKUP, ALPHA, QWEN], key=str.casefold)
        self.driver.find_element(By.CSS_SELECTOR, 'th[data-sort="name"] button').click()
        self.wait(lambda d: self.names(d) == by_name, "never sorted by name")
        self.driver.find_element(By.CSS_SELECTOR, 'th[data-sort="name"] button').click()
        self.wait(lambda d: self.names(d) == by_name[::-1], "never sorted backwards")
        self.driver.find_element(By.CSS_SELECTOR, 'th[data-sort="name"] button').click()
        self.driver.refresh()
        self.wait(lambda d: self.mode(d) == "live", "the event stream never reopened")
        self.wait(lambda d: len(self.rows(d)) == 4, "the services never showed")
        self.assertEqual(self.names(self.driver), by_name, "the order was forgotten")
        self.assertEqual(self.driver.find_element(By.ID, "sort-key").get_attribute("value"), "name")

    def follow_log(self) -> None:
        assert self.driver is not None
        self.row(self.driver, ALPHA).find_element(By.CSS_SELECTOR, "button.logs").click()
        log = self.wait(lambda d: d.find_element(By.CSS_SELECTOR, "pre.log"), "no log panel")
        self.wait(lambda d: "tensor 299 <i>loaded</i>" in log.text, "the tail never showed")
        self.assertEqual(len(log.text.splitlines()), 200)
        self.assertEqual(log.find_elements(By.CSS_SELECTOR, "i"), [])
        self.wait(
            lambda d: d.find_element(By.CSS_SELECTOR, ".log-state").text == "following",
            "not following",
        )

    def wait_starting(self, name: str) -> Callable[[], None]:
        def step() -> None:
            def starting(driver: WebDriver) -> bool:
                button = self.row(driver, name).find_element(By.CSS_SELECTOR, "button.start")
                return button.text == "Starting…" and not button.is_enabled()

            self.wait(starting, f"the start button of {name} never showed the start")

        return step


class RealLmproxyBrowserTests(BrowserTestCase):
    """The dashboard of a real lmproxy, with demo model servers, as a person sees it."""

    timeout = 120

    # Config order differs from name order; the three do not all fit at once.
    SDXL = "sdxl-webui"
    QWEN = "qwen2.5-7b-instruct"
    LLAMA = "llama3.3-70b-q4"

    def setUp(self) -> None:
        require_browser()
        self.tmp = os.path.abspath(self.mktemp())
        os.makedirs(self.tmp)
        self.addCleanup(self.quit_browser)

    def lmproxy(self) -> tuple[Lmproxy, dict[str, int]]:
        sdxl, sdxl_target, qwen, qwen_target, llama, llama_target, api = free_ports(7)
        config = {
            "ResourcesAvailable": {"VRAM": 24000, "RAM": 32000},
            "ManagementApi": {"ListenPort": str(api)},
            "DefaultServiceUrl": "http://localhost:{{.PORT}}/",
            "Services": [
                demo_service(
                    self.SDXL, sdxl, sdxl_target, ResourceRequirements={"VRAM": 12000, "RAM": 16000}
                ),
                demo_service(
                    self.QWEN, qwen, qwen_target, ResourceRequirements={"VRAM": 9000, "RAM": 4000}
                ),
                demo_service(
                    self.LLAMA,
                    llama,
                    llama_target,
                    ResourceRequirements={"VRAM": 20000, "RAM": 30000},
                ),
            ],
        }
        ports = {self.SDXL: sdxl, self.QWEN: qwen, self.LLAMA: llama, "api": api}
        return Lmproxy(self, config), ports

    async def test_dashboard_of_a_real_lmproxy(self) -> None:
        """
        Stopped to running when a client connects, a waiting client, sorting
        by name, the log of a real model server, and stopping from the page
        (an idle service at once, a busy one after the force question).
        """
        lmproxy, ports = self.lmproxy()
        browser = deferToThread(self.start_browser)  # both take a second: in parallel
        await lmproxy.start()
        self.driver = await browser
        url = f"http://127.0.0.1:{ports['api']}/"
        all_three = [self.SDXL, self.QWEN, self.LLAMA]

        def load_page() -> None:
            assert self.driver is not None
            self.driver.get(url)
            self.wait(lambda d: self.names(d) == all_three, "the services never showed")
            self.wait(lambda d: self.mode(d) == "live", "the event stream never opened")
            for name in all_three:
                self.assertEqual(self.state_of(name)(self.driver), ServiceState.STOPPED)

        await self.in_browser(load_page)

        # A client connects to qwen and stays: the page shows it start and proxy.
        held = await raw_connect(ports[self.QWEN])
        held.send(b"GET /health HTTP/1.1\r\nHost: qwen\r\n\r\n")
        await self.in_browser(lambda: self.wait_state(self.QWEN, ServiceState.RUNNING))
        await self.in_browser(lambda: self.wait_connections(self.QWEN, 1, 0))
        await wait_for(lambda: b" 200 OK" in held.received, WAIT_SECONDS, "qwen to answer")
        # One request to sdxl: it starts and stays, idle.
        code, _, _ = await http("GET", f"http://127.0.0.1:{ports[self.SDXL]}/health")
        self.assertEqual(code, 200)
        await self.in_browser(lambda: self.wait_state(self.SDXL, ServiceState.RUNNING))
        # llama does not fit beside busy qwen: its client waits.
        waiting = await raw_connect(ports[self.LLAMA])
        await self.in_browser(
            lambda: self.wait_state(self.LLAMA, ServiceState.WAITING_FOR_RESOURCES)
        )
        await self.in_browser(lambda: self.wait_connections(self.LLAMA, 0, 1))
        # Its row says why, from the real /status: who holds what it needs.
        await self.in_browser(
            lambda: self.wait(
                lambda d: (
                    f"held by {self.QWEN} (in use)"
                    in self.row(d, self.LLAMA).find_element(By.CSS_SELECTOR, ".details").text
                ),
                "llama's row never said why it waits",
            )
        )

        await self.in_browser(self.sort_by_name)
        await self.in_browser(self.show_log_of_qwen)
        await self.in_browser(lambda: self.screenshot(for_docs=True))

        # The waiting client leaves: llama is stopped again, nothing was evicted.
        waiting.close()
        await self.in_browser(lambda: self.wait_state(self.LLAMA, ServiceState.STOPPED))
        await self.in_browser(lambda: self.wait_state(self.SDXL, ServiceState.RUNNING))

        # Stop the idle one: no question asked.
        await self.in_browser(lambda: self.click(self.SDXL, "button.stop"))
        await self.in_browser(lambda: self.wait_state(self.SDXL, ServiceState.STOPPED))
        # Stop the busy one: the page asks, then stops it and its client is cut off.
        await self.in_browser(lambda: self.click(self.QWEN, "button.stop"))
        await self.in_browser(self.confirm_force)
        await self.in_browser(lambda: self.wait_state(self.QWEN, ServiceState.STOPPED))
        await wait_for(lambda: held.closed.called, WAIT_SECONDS, "the held client to be cut off")

        _, _, body = await http("GET", f"http://127.0.0.1:{ports['api']}/status")
        states = {s["name"]: s["status"] for s in json.loads(body)["services"]}
        self.assertEqual(states, dict.fromkeys(all_three, ServiceState.STOPPED))
        self.assertEqual(await self.in_browser(self.script_errors), [])
        await self.quit_browser()
        self.assertEqual(await lmproxy.stop(), 0)

    def sort_by_name(self) -> None:
        assert self.driver is not None
        self.driver.find_element(By.CSS_SELECTOR, 'th[data-sort="name"] button').click()
        by_name = [self.LLAMA, self.QWEN, self.SDXL]
        self.wait(lambda d: self.names(d) == by_name, "never sorted by name")

    def show_log_of_qwen(self) -> None:
        """The log panel shows what the real demo server wrote to its log file."""
        self.click(self.QWEN, "button.logs")
        self.wait(
            lambda d: (
                f'demo model server "{self.QWEN}" listening'
                in d.find_element(By.CSS_SELECTOR, "pre.log").text
            ),
            "the log never showed",
        )
        self.wait(
            lambda d: (
                '"GET /health HTTP/1.1" 200' in d.find_element(By.CSS_SELECTOR, "pre.log").text
            ),
            "the request never showed in the log",
        )
