"""Drive Berth's UI in headless Chromium with Selenium (tests/ui_browser.rs).

Usage: ui_browser.py BASE_URL USER PASSWORD SCREENSHOT_DIR HOSTILE_TEXT

Against a running Berth holding the images tests/ui_browser.rs pushed, as a
person would: look around signed out, sign in with the form, search, open a
repository and an image, copy the pull command, check that a label holding
a <script> tag shows as text and ran nothing, move with the keyboard, look at
the pages on a phone-sized screen, and sign out. Takes screenshots, and
prints the page weights and timings it measured as one JSON object.

Chromium and chromedriver: $BERTH_CHROME / $BERTH_CHROMEDRIVER, else from
PATH (chromium, chromium-browser, google-chrome; chromedriver, or
$CHROMEWEBDRIVER/chromedriver on GitHub's runners). Selenium Manager never
runs (no download).
"""

import json
import os
import shutil
import signal
import sys
import time

os.environ["SE_OFFLINE"] = "true"

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

# The whole run is bounded.
signal.alarm(240)


def find(env, names, extra=()):
    if os.environ.get(env):
        return os.environ[env]
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    for path in extra:
        if path and os.path.exists(path):
            return path
    sys.exit(f"no {names[0]} found: set {env}")


def main():
    base, user, password, shots, hostile = sys.argv[1:6]
    os.makedirs(shots, exist_ok=True)
    chrome = find("BERTH_CHROME", ["chromium", "chromium-browser", "google-chrome"])
    driver_path = find(
        "BERTH_CHROMEDRIVER",
        ["chromedriver"],
        [os.path.join(os.environ.get("CHROMEWEBDRIVER", ""), "chromedriver")],
    )
    options = webdriver.ChromeOptions()
    options.binary_location = chrome
    for arg in [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-extensions",
        "--disable-sync",
        "--metrics-recording-only",
        # Loopback only: any other host fails at once.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ]:
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    results = {}
    try:
        run(driver, base, user, password, shots, hostile, results)
    finally:
        driver.quit()
    print(json.dumps(results, sort_keys=True))


def wait(driver, condition, what, timeout=20):
    try:
        return WebDriverWait(driver, timeout).until(condition)
    except Exception:
        driver.save_screenshot("/tmp/berth-ui-failure.png")
        raise AssertionError(f"waited for {what}; page: {driver.current_url}\n{driver.page_source[:3000]}")


def shot(driver, shots, name, full=False):
    if full:
        height = driver.execute_script("return document.documentElement.scrollHeight")
        width = driver.execute_script("return window.innerWidth")
        driver.set_window_size(max(width, 360), min(max(height + 140, 600), 4000))
    driver.save_screenshot(os.path.join(shots, name))


def severe_console_messages(driver):
    """Errors the page logged: a CSP violation, a failed script."""
    return [m["message"] for m in driver.get_log("browser") if m["level"] == "SEVERE"]


def timing(driver):
    """Navigation and paint timing of the current page, and what it loaded
    (after two animation frames, so the first paint is recorded)."""
    return driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        requestAnimationFrame(() => requestAnimationFrame(() => {
        const nav = performance.getEntriesByType('navigation')[0];
        const fcp = performance.getEntriesByName('first-contentful-paint')[0];
        const res = performance.getEntriesByType('resource');
        done({
          html_bytes: nav.encodedBodySize,
          assets_bytes: res.reduce((s, r) => s + r.encodedBodySize, 0),
          assets: res.length,
          response_end_ms: nav.responseEnd,
          dom_content_loaded_ms: nav.domContentLoadedEventEnd,
          first_contentful_paint_ms: fcp ? fcp.startTime : null,
          load_ms: nav.loadEventEnd,
        });
        }));
        """
    )


def run(driver, base, user, password, shots, hostile, results):
    # Signed out: only the public repository.
    driver.get(base + "/ui/")
    wait(driver, EC.presence_of_element_located((By.CSS_SELECTOR, "ul.repos")), "the repository list")
    names = [a.text for a in driver.find_elements(By.CSS_SELECTOR, "a.repo")]
    assert names == ["public/app"], names
    results["anonymous_repositories"] = names
    shot(driver, shots, "ui-signed-out.png")

    # Keyboard: the first Tab reaches the skip link, Enter follows it.
    body = driver.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)
    active = driver.switch_to.active_element
    assert active.text == "Skip to content", active.text
    active.send_keys(Keys.ENTER)
    assert driver.current_url.endswith("#main"), driver.current_url

    # Sign in with the form, by keyboard.
    driver.find_element(By.LINK_TEXT, "Sign in").click()
    wait(driver, EC.presence_of_element_located((By.ID, "username")), "the sign-in form")
    shot(driver, shots, "ui-sign-in.png")
    driver.find_element(By.ID, "username").send_keys(user)
    driver.find_element(By.ID, "password").send_keys(password + Keys.ENTER)
    wait(driver, EC.presence_of_element_located((By.CSS_SELECTOR, "span.who")), "the signed-in header")
    assert user in driver.find_element(By.CSS_SELECTOR, "span.who").text
    cookies = {c["name"]: c for c in driver.get_cookies()}
    session = cookies["__Host-berth_session"]
    assert session["httpOnly"] and session["secure"] and session["sameSite"] == "Strict", session
    # HttpOnly: the page's own script cannot read it.
    assert "berth_session" not in driver.execute_script("return document.cookie")

    # The home page, measured: weight and time to first render.
    driver.get(base + "/ui/")
    wait(driver, EC.presence_of_element_located((By.CSS_SELECTOR, "ul.repos")), "the repository list")
    results["home"] = timing(driver)
    names = [a.text for a in driver.find_elements(By.CSS_SELECTOR, "a.repo")]
    assert "team-a/app" in names and not any(n.startswith("team-b") for n in names), names
    results["reader_repositories"] = names
    shot(driver, shots, "ui-repositories.png")

    # Search.
    box = driver.find_element(By.ID, "q")
    box.clear()
    box.send_keys("app" + Keys.ENTER)
    wait(driver, EC.url_contains("q=app"), "the search results")
    found = [a.text for a in driver.find_elements(By.CSS_SELECTOR, "a.repo")]
    assert "team-a/app" in found and all("app" in n for n in found), found
    assert not any(n.startswith("team-b") for n in found), found
    shot(driver, shots, "ui-search.png")

    # A repository and its tags.
    driver.find_element(By.LINK_TEXT, "team-a/app").click()
    wait(driver, EC.presence_of_element_located((By.CSS_SELECTOR, "table tbody tr")), "the tag table")
    tags = [a.text for a in driver.find_elements(By.CSS_SELECTOR, "table tbody tr td:first-child a")]
    assert "v1" in tags, tags
    shot(driver, shots, "ui-repository.png")

    # An image.
    driver.find_element(By.LINK_TEXT, "v1").click()
    wait(driver, EC.presence_of_element_located((By.ID, "docker-tag")), "the image page")
    results["image"] = timing(driver)

    # The hostile label is text: shown verbatim, nothing ran.
    cells = [td.text for td in driver.find_elements(By.CSS_SELECTOR, "table.labels td")]
    assert hostile in cells, cells
    keys = [th.text for th in driver.find_elements(By.CSS_SELECTOR, "table.labels th")]
    assert hostile in keys, keys
    assert driver.title != "pwned", driver.title
    assert not driver.find_elements(By.CSS_SELECTOR, "table.labels img"), "the label became an element"
    try:
        driver.switch_to.alert
        raise AssertionError("an alert opened: the label's script ran")
    except NoAlertPresentException:
        pass

    # Copy the pull command: the button puts the field's text on the
    # clipboard.
    driver.execute_cdp_cmd(
        "Browser.grantPermissions",
        {"origin": base, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]},
    )
    command = driver.find_element(By.ID, "docker-tag").get_attribute("value")
    assert command.startswith("docker pull ") and command.endswith("/team-a/app:v1"), command
    button = driver.find_element(By.CSS_SELECTOR, "button[data-copy-target='docker-tag']")
    button.click()
    wait(driver, lambda d: button.text == "Copied", "the copy button to confirm")
    pasted = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "navigator.clipboard.readText().then(done, e => done('error: ' + e));"
    )
    assert pasted == command, (pasted, command)
    results["copied"] = pasted
    shot(driver, shots, "ui-image.png", full=True)
    driver.set_window_size(1280, 900)

    # Nothing the pages did broke the policy or failed to load.
    errors = severe_console_messages(driver)
    assert not errors, errors

    # A phone-sized screen: nothing wider than the screen.
    driver.set_window_size(390, 844)
    for path in ["/ui/", "/ui/repositories/team-a/app", "/ui/images/team-a/app/v1"]:
        driver.get(base + path)
        wait(driver, EC.presence_of_element_located((By.ID, "main")), path)
        overflow = driver.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 1, f"{path} is {overflow}px wider than a phone screen"
    shot(driver, shots, "ui-phone.png")
    driver.set_window_size(1280, 900)

    # Sign out.
    driver.get(base + "/ui/")
    driver.find_element(By.CSS_SELECTOR, "form.inline button").click()
    wait(driver, EC.presence_of_element_located((By.LINK_TEXT, "Sign in")), "the signed-out header")
    assert "__Host-berth_session" not in {c["name"] for c in driver.get_cookies()}
    results["signed_out"] = True
    results["console_errors"] = severe_console_messages(driver)
    assert not results["console_errors"], results["console_errors"]


if __name__ == "__main__":
    started = time.monotonic()
    main()
    print(f"browser run took {time.monotonic() - started:.1f} s", file=sys.stderr)
