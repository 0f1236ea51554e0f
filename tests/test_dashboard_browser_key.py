"""
The dashboard behind C{ManagementApi.ApiKeys}, in a real headless Chromium
(see L{tests.test_dashboard_browser}): the page asks for the key in its own
form, keeps it in the tab's C{sessionStorage} only, and sends it on every
request, the event streams (C{/events}, a log's C{?follow=1}) included.
Against the management app with scripted backends, then against a real
C{twistd -n lmproxy} whose key is in a file.
"""

from __future__ import annotations

import json
import os
from typing import Any

import treq
from attrs import evolve
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from lmproxy.config import Secret
from lmproxy.interfaces import ServiceState
from tests.harness import Lmproxy, demo_service, free_ports, http
from tests.test_dashboard_browser import (
    ALPHA,
    ZETA,
    BrowserTestCase,
    ScriptedBrowserTestCase,
    browser_config,
    require_browser,
)

try:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
except ImportError:  # pragma: no cover - require_browser skips
    pass

KEY = "k3y-for-the-dashboard-7f3a"
WRONG = "not-the-key"
KEY_ITEM = "lmproxy.managementKey"


class KeyPage(BrowserTestCase):
    """The steps of a person at a page that asks for the key."""

    url: str

    def browser(self) -> WebDriver:
        assert self.driver is not None
        return self.driver

    def key_form_shown(self, driver: WebDriver) -> bool:
        shown: bool = driver.find_element(By.ID, "key-panel").is_displayed()
        return shown

    def key_message(self, driver: WebDriver) -> str:
        text: str = driver.find_element(By.ID, "key-message").text
        return text

    def asked_for_the_key(self) -> None:
        driver = self.browser()
        driver.get(self.url)
        self.wait(self.key_form_shown, "the key form never showed")
        self.first_message = self.key_message(driver)
        self.assertIn("ManagementApi.ApiKeys", self.first_message)
        self.assertEqual(self.mode(driver), "locked")
        self.assertEqual(self.rows(driver), [])
        self.assertFalse(driver.find_element(By.ID, "services").is_displayed())
        self.assertFalse(driver.find_element(By.ID, "banner").is_displayed())
        key_input = driver.find_element(By.ID, "key-input")
        self.assertEqual(key_input.get_attribute("type"), "password")

    def give_key(self, key: str) -> None:
        driver = self.browser()
        driver.find_element(By.ID, "key-input").send_keys(key)
        driver.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()

    def unlocked(self, services: int) -> None:
        self.wait(lambda d: len(self.rows(d)) == services, "the services never showed")
        self.wait(lambda d: self.mode(d) == "live", "the event stream never opened")
        driver = self.browser()
        self.assertFalse(self.key_form_shown(driver))
        self.assertEqual(self.session_key(driver), KEY)

    def session_key(self, driver: WebDriver) -> str | None:
        key: str | None = driver.execute_script(
            "return window.sessionStorage.getItem(arguments[0]);", KEY_ITEM
        )
        return key


class KeyedDashboardBrowserTests(ScriptedBrowserTestCase, KeyPage):
    """The dashboard of an lmproxy whose management API wants a key."""

    timeout = 180

    def setUp(self) -> None:
        require_browser()
        self.tmp = os.path.abspath(self.mktemp())
        os.makedirs(self.tmp)
        config = browser_config(self.tmp)
        self.serve(evolve(config, management_api_keys=(Secret(KEY),)))
        with open(os.path.join(self.tmp, "alpha.log"), "w") as f:
            f.writelines(f"llama: line {i}\n" for i in range(10))

    def test_dashboard_asks_for_the_key(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self.scenario())

    async def scenario(self) -> None:
        # The API does want the key: the test is not passing by accident.
        code, _, _ = await http("GET", f"{self.url}status")
        self.assertEqual(code, 401)
        self.driver = await deferToThread(self.start_browser)
        await self.in_browser(self.asked_for_the_key)
        await self.in_browser(lambda: self.give_key(WRONG))
        await self.in_browser(self.asked_again)
        await self.in_browser(lambda: self.give_key(KEY))
        await self.in_browser(lambda: self.unlocked(4))

        # Live updates arrive through the stream, which carries the key.
        self.backends.acquire(ALPHA)
        await self.in_browser(lambda: self.wait_connections(ALPHA, 0, 1))
        self.backends.finish_start(ALPHA)
        await self.in_browser(lambda: self.wait_state(ALPHA, ServiceState.RUNNING))
        self.assertEqual(await self.in_browser(lambda: self.mode(self.browser())), "live")

        # Actions and the log's stream carry it too.
        self.backends.finish_start(ZETA)
        await self.in_browser(lambda: self.wait_state(ZETA, ServiceState.RUNNING))
        await self.in_browser(lambda: self.click(ZETA, "button.stop"))
        await self.in_browser(lambda: self.wait_state(ZETA, ServiceState.STOPPED))
        self.assertEqual(self.backends.stop_calls, [(ZETA, False)])
        await self.in_browser(self.follow_log)
        with open(os.path.join(self.tmp, "alpha.log"), "a") as f:
            f.write("llama: a new line\n")
        await self.in_browser(
            lambda: self.wait(
                lambda d: self.log_text(d).endswith("llama: a new line"),
                "the new log line never showed",
            )
        )

        await self.in_browser(self.key_kept_out_of_sight)
        await self.in_browser(self.reload_keeps_the_key)
        self.assertEqual(await self.in_browser(self.script_errors), [])

    def log_text(self, driver: WebDriver) -> str:
        text: str = driver.find_element(By.CSS_SELECTOR, "pre.log").text
        return text

    def asked_again(self) -> None:
        """The server's reason for the wrong key: not the one for no key."""
        driver = self.browser()
        self.wait(
            lambda d: self.key_form_shown(d) and self.key_message(d) != self.first_message,
            "a wrong key: the form never showed again with the reason",
        )
        self.assertIn("ManagementApi.ApiKeys", self.key_message(driver))
        message = driver.find_element(By.ID, "key-message")
        self.assertIn("wrong", (message.get_attribute("class") or "").split())
        self.assertEqual(driver.find_element(By.ID, "key-input").get_attribute("value"), "")
        self.assertIsNone(self.session_key(driver), "a wrong key is not kept")

    def follow_log(self) -> None:
        self.click(ALPHA, "button.logs")
        self.wait(lambda d: "llama: line 9" in self.log_text(d), "the tail never showed")
        self.wait(
            lambda d: d.find_element(By.CSS_SELECTOR, ".log-state").text == "following",
            "not following",
        )

    def key_kept_out_of_sight(self) -> None:
        """Not in the page, its URL, any URL it asked for, or localStorage."""
        driver = self.browser()
        seen: dict[str, Any] = driver.execute_script(
            "return {"
            " html: document.documentElement.outerHTML,"
            " text: document.body.innerText,"
            " inputs: [...document.querySelectorAll('input')].map((i) => i.value),"
            " urls: performance.getEntriesByType('resource').map((e) => e.name),"
            " local: JSON.stringify({...window.localStorage}),"
            " href: location.href,"
            "};"
        )
        self.assertIn("/events", " ".join(seen["urls"]))
        self.assertNotIn(KEY, json.dumps(seen))

    def reload_keeps_the_key(self) -> None:
        """The tab keeps the key: a reload shows the services, no form."""
        driver = self.browser()
        driver.refresh()
        self.wait(lambda d: len(self.rows(d)) == 4, "the services never showed again")
        self.wait(lambda d: self.mode(d) == "live", "the event stream never reopened")
        self.assertFalse(self.key_form_shown(driver))


class KeyedRealLmproxyBrowserTests(KeyPage):
    """The dashboard of a real lmproxy whose management key is in a file."""

    timeout = 120

    def setUp(self) -> None:
        require_browser()
        self.tmp = os.path.abspath(self.mktemp())
        os.makedirs(self.tmp)
        self.addCleanup(self.quit_browser)

    async def test_real_lmproxy_behind_a_key(self) -> None:
        """
        The key from the config's file opens the page; a client starts the
        service, the page shows it live; the page stops it; no log line of
        lmproxy, nor its status, holds the key.
        """
        port, target, api = free_ports(3)
        key_file = os.path.join(self.tmp, "management.key")
        with open(key_file, "w") as f:
            f.write(KEY + "\n")
        config = {
            "ManagementApi": {"ListenPort": str(api), "ApiKeys": [{"File": key_file}]},
            "Services": [demo_service("qwen", port, target)],
        }
        lmproxy = Lmproxy(self, config)
        browser = deferToThread(self.start_browser)  # both take a second: in parallel
        await lmproxy.start()
        self.driver = await browser
        self.url = f"http://127.0.0.1:{api}/"

        await self.in_browser(self.asked_for_the_key)
        await self.in_browser(lambda: self.give_key(KEY))
        await self.in_browser(lambda: self.unlocked(1))
        code, _, _ = await http("GET", f"http://127.0.0.1:{port}/health")
        self.assertEqual(code, 200)
        await self.in_browser(lambda: self.wait_state("qwen", ServiceState.RUNNING))
        await self.in_browser(lambda: self.click("qwen", "button.stop"))
        await self.in_browser(lambda: self.wait_state("qwen", ServiceState.STOPPED))
        self.assertEqual(await self.in_browser(self.script_errors), [])

        response = await treq.get(
            f"{self.url}status", headers={"Authorization": [f"Bearer {KEY}"]}, persistent=False
        )
        self.assertEqual(response.code, 200)
        self.assertNotIn(KEY, (await response.content()).decode("utf-8"))
        await self.quit_browser()
        self.assertEqual(await lmproxy.stop(), 0)
        self.assertNotIn(KEY, lmproxy.output)
