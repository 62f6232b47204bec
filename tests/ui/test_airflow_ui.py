"""The Airflow UI in a real browser: trigger the retrain DAG from its parameter form.

`airflow standalone` (LocalExecutor, SQLite, scheduler + dag-processor + api-server) runs on
127.0.0.1 with a free port, a temporary AIRFLOW_HOME and tiny generated data. Debian's headless
Chromium, driven by Selenium, logs in, opens ``recsys_nightly_retrain``, presses **Trigger**,
changes ``top_n`` in the form and submits. The run must appear in the UI and reach ``success``
through the real scheduler, and the published table must have exactly ``top_n`` ranks per user:
the value typed in the browser reached the pipeline. A screenshot lands in ``test-artifacts/``.

Skipped (with the reason) when Chromium / chromedriver / selenium are absent:
``make browser`` or ``apt-get install chromium chromium-driver`` installs them.
In the same standalone (no second start), a run triggered over REST with
``require_approval: true`` must park ``approve_release`` in ``awaiting_input``; the browser
finds it on **Browse -> Required Actions**, opens the task's review page and presses
**Approve**, and the run must then publish (CURRENT moves to the version in the request).

The standalone process group is always stopped, also when the test fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.ui

ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "recsys_nightly_retrain"
HOST = "127.0.0.1"
TOP_N = 7  # the value typed into the form (the default is 20)
START_TIMEOUT_S = 240
RUN_TIMEOUT_S = 300
APPROVAL_TIMEOUT_S = 600  # queued behind the first run (max_active_runs=1), then the build
ARTIFACTS = ROOT / "test-artifacts"

CHROMIUM = os.environ.get("RECSYS_UI_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = (
    os.environ.get("RECSYS_UI_CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"
)
INSTALL_HINT = "run `make browser` or apt-get install chromium chromium-driver"


def _missing() -> str | None:
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"chromium not installed: {INSTALL_HINT}"
    if not (os.path.isfile(CHROMEDRIVER) and os.access(CHROMEDRIVER, os.X_OK)):
        return f"chromedriver not installed: {INSTALL_HINT}"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium not installed: run `make venv` (it is pinned in requirements.txt)"
    return None


if _missing():
    pytest.skip(_missing(), allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (from /proc), children first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the standalone's process group (and strays), then SIGKILL what is left."""
    strays = _descendants(proc.pid)
    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        for pid in strays:  # children that left the group (setsid) are ours too
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            proc.poll()
            alive = [p for p in [proc.pid, *strays] if Path(f"/proc/{p}").exists()]
            if proc.returncode is not None and not [p for p in alive if p != proc.pid]:
                return
            time.sleep(0.5)


class Api:
    """REST API v2 client with a token from POST /auth/token (127.0.0.1 only)."""

    def __init__(self, base: str, password: str):
        self.base = base
        body = json.dumps({"username": "admin", "password": password}).encode()
        req = urllib.request.Request(
            f"{base}/auth/token", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            self.token = json.load(r)["access_token"]

    def get(self, path: str) -> dict:
        req = urllib.request.Request(
            f"{self.base}{path}", headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)

    def send(self, method: str, path: str, body: dict) -> dict:
        req = urllib.request.Request(
            f"{self.base}{path}", data=json.dumps(body).encode(), method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.load(r)
        except urllib.error.HTTPError as exc:  # say what the server answered, not just the code
            raise AssertionError(f"{method} {path} -> {exc.code}: {exc.read()[:2000]!r}") from exc


@pytest.fixture(scope="module")
def airflow_server():
    from include.recsys.config.settings import PipelineConfig
    from include.recsys.data.synth import PRESETS, ensure_default_data

    base = Path(tempfile.mkdtemp(prefix="recsys-ui-"))
    data = base / "data"
    ensure_default_data(PipelineConfig(data_dir=data).source, PRESETS["tiny"])
    port = _free_port()
    url = f"http://{HOST}:{port}"
    venv_bin = str(Path(sys.executable).parent)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW", "RECSYS_", "MLFLOW_TRACKING_URI"))
    }
    env.update(
        {
            "PATH": f"{venv_bin}:{env.get('PATH', '/usr/bin:/bin')}",  # standalone runs `airflow`
            "AIRFLOW_HOME": str(base / "airflow"),
            "AIRFLOW__API__HOST": HOST,
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(_free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(_free_port()),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            # only the run triggered from the browser: no scheduled run competes with it
            # (max_active_runs=1) and the test's outcome does not depend on the clock
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
            "PYTHONPATH": str(ROOT),
            "RECSYS_DATA_DIR": str(data),
            "RECSYS_TASK_RETRIES": "0",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "true",
            "GX_ANALYTICS_ENABLED": "false",
        }
    )
    log_path = base / "standalone.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [str(Path(venv_bin) / "airflow"), "standalone"],
        cwd=base,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: stopped as a whole below
    )

    def log_tail(n: int = 6000) -> str:
        return log_path.read_bytes()[-n:].decode(errors="replace")

    try:
        pw_file = base / "airflow" / "simple_auth_manager_passwords.json.generated"
        deadline = time.monotonic() + START_TIMEOUT_S
        api = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"airflow standalone exited with {proc.returncode}\n{log_tail()}")
            try:
                if api is None and pw_file.exists():
                    api = Api(url, json.loads(pw_file.read_text())["admin"])
                if api is not None:
                    dag = api.get(f"/api/v2/dags/{DAG_ID}")
                    if not dag["is_paused"]:
                        break
            except (urllib.error.URLError, OSError, KeyError, ValueError):
                pass
            time.sleep(2)
        else:
            pytest.fail(f"Airflow not ready with {DAG_ID} in {START_TIMEOUT_S}s\n{log_tail()}")
        errors = api.get("/api/v2/importErrors")
        assert errors["total_entries"] == 0, errors
        yield {
            "url": url,
            "api": api,
            "password": json.loads(pw_file.read_text())["admin"],
            "data": data,
            "home": base / "airflow",
            "log_tail": log_tail,
        }
    finally:
        _stop(proc)
        log.close()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def browser(tmp_path):
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def _screenshot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"airflow-ui-{name}-{time.strftime('%Y%m%dT%H%M%S')}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


def _field_input(driver, wait, name: str):
    """The number input of param ``name`` (its +/- buttons are ``number-input:element_<name>:*``)."""
    inc = wait.until(EC.presence_of_element_located((By.ID, f"number-input:element_{name}:inc")))
    return driver.find_element(By.ID, inc.get_attribute("aria-controls"))


def test_trigger_from_ui_with_form_param_runs_to_success(airflow_server, browser):
    url, api = airflow_server["url"], airflow_server["api"]
    wait = WebDriverWait(browser, 60)
    try:
        # log in (simple auth manager, the generated admin password)
        browser.get(f"{url}/")
        wait.until(EC.presence_of_element_located((By.NAME, "username"))).send_keys("admin")
        browser.find_element(By.NAME, "password").send_keys(airflow_server["password"])
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait.until(lambda d: "/auth/login" not in d.current_url)

        # the DAG page and its Trigger button -> the parameter form
        browser.get(f"{url}/dags/{DAG_ID}")
        wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "[data-testid=trigger-dag-button]"))).click()
        submit = wait.until(
            EC.presence_of_element_located((By.CSS_SELECTOR, "[data-testid=trigger-dag-submit]"))
        )
        dialog = browser.find_element(By.CSS_SELECTOR, "[role=dialog][data-state=open]")
        for label in ("Factors", "Top N", "Dry Run", "Source Path"):  # params rendered as fields
            assert label in dialog.text, f"{label!r} missing from the trigger form"

        top_n = _field_input(browser, wait, "top_n")
        assert top_n.get_attribute("value") == "20"
        top_n.send_keys(Keys.CONTROL, "a")
        top_n.send_keys(str(TOP_N), Keys.TAB)
        wait.until(lambda d: top_n.get_attribute("value") == str(TOP_N))
        # source_path stays empty (= the default lake): the form must still accept it
        wait.until(lambda d: submit.is_enabled(), "the Trigger button of the form stays disabled")
        _screenshot(browser, "trigger-form")
        submit.click()

        # the run exists, with the form's value in its conf
        deadline = time.monotonic() + 60
        runs = []
        while not runs and time.monotonic() < deadline:
            runs = api.get(f"/api/v2/dags/{DAG_ID}/dagRuns")["dag_runs"]
            time.sleep(1)
        assert len(runs) == 1, runs
        run = runs[0]
        assert run["run_type"] == "manual"
        assert run["conf"]["top_n"] == TOP_N, run["conf"]

        # it reaches success through the real scheduler
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while time.monotonic() < deadline:
            run = api.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}")
            if run["state"] in ("success", "failed"):
                break
            time.sleep(3)
        tis = api.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}/taskInstances")
        states = {ti["task_id"] + (f"[{ti['map_index']}]" if ti["map_index"] >= 0 else ""): ti["state"]
                  for ti in tis["task_instances"]}
        assert run["state"] == "success", (
            f"run {run['dag_run_id']} is {run['state']}: {states}\n{airflow_server['log_tail']()}"
        )
        assert states.get("publish") == "success", states

        # ... and the UI shows it: the run's page with its id and state
        browser.get(f"{url}/dags/{DAG_ID}/runs/{run['dag_run_id']}")
        try:
            WebDriverWait(browser, 60).until(
                lambda d: run["dag_run_id"] in d.find_element(By.TAG_NAME, "body").text
                and "success" in d.find_element(By.TAG_NAME, "body").text.lower()
            )
        except TimeoutException:
            pytest.fail("the run page does not show the run as success:\n"
                        + browser.find_element(By.TAG_NAME, "body").text[:3000])
        _screenshot(browser, "run-success")

        # the value typed in the browser reached the pipeline: top_n ranks per user
        import pandas as pd

        recs = airflow_server["data"] / "recommendations"
        version = (recs / "CURRENT").read_text().strip()
        table = pd.read_parquet(recs / f"version={version}")
        assert len(table) > 0
        assert table["rank"].max() == TOP_N
        assert table.groupby("user_id")["rank"].max().max() == TOP_N
    except BaseException:
        _screenshot(browser, "failure")
        raise


def _login(driver, wait, url: str, password: str) -> None:
    """Log in with the simple auth manager's generated admin password."""
    driver.get(f"{url}/")
    wait.until(EC.presence_of_element_located((By.NAME, "username"))).send_keys("admin")
    driver.find_element(By.NAME, "password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait.until(lambda d: "/auth/login" not in d.current_url)


def _body_text(driver) -> str:
    return driver.find_element(By.TAG_NAME, "body").text


def _run_states(api: Api, run_id: str) -> dict[str, str]:
    tis = api.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")["task_instances"]
    return {ti["task_id"] + (f"[{ti['map_index']}]" if ti["map_index"] >= 0 else ""): ti["state"] for ti in tis}


def _wait_run(api: Api, run_id: str, until, timeout_s: float, what: str, log_tail) -> dict[str, str]:
    """Poll the run's task states until ``until(run_state, states)``; fail (with the states) on a
    finished run that never got there, or after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        run_state = api.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")["state"]
        states = _run_states(api, run_id)
        if until(run_state, states):
            return states
        if run_state in ("success", "failed") or time.monotonic() > deadline:
            pytest.fail(f"run {run_id} ({run_state}) never reached {what} in {timeout_s}s: {states}\n{log_tail()}")
        time.sleep(3)


def test_pending_approval_shows_in_ui_and_approve_publishes(airflow_server, browser):
    """require_approval: the run waits in awaiting_input, the UI lists it, Approve publishes it."""
    url, api = airflow_server["url"], airflow_server["api"]
    recs = airflow_server["data"] / "recommendations"
    wait = WebDriverWait(browser, 60)
    try:
        # the trigger form is covered above: this run comes over REST (same data, same config)
        before = (recs / "CURRENT").read_text().strip() if (recs / "CURRENT").exists() else None
        run = api.send("POST", f"/api/v2/dags/{DAG_ID}/dagRuns",
                       {"logical_date": None, "conf": {"require_approval": True}})
        run_id = run["dag_run_id"]
        ti_path = f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/approve_release/-1"
        states = _wait_run(api, run_id, lambda rs, st: st.get("approve_release") == "awaiting_input",
                           APPROVAL_TIMEOUT_S, "approve_release awaiting_input", airflow_server["log_tail"])
        assert states.get("publish") in (None, "none", "scheduled", "queued"), states  # not before the answer

        hitl = api.get(f"{ti_path}/hitlDetails")
        assert hitl["response_received"] is False, hitl
        assert hitl["options"] == ["Approve", "Reject"], hitl
        m = re.fullmatch(r"Publish recommendations (\S+)\? Gate (\w+).*", hitl["subject"])
        assert m, hitl["subject"]  # the run's own subject (include/recsys/notify/approval.py), not the placeholder
        version = m.group(1)
        assert version != before

        # Browse -> Required Actions lists the pending request of this run
        _login(browser, wait, url, airflow_server["password"])
        browser.get(f"{url}/required_actions?response_received=false")
        try:
            wait.until(lambda d: hitl["subject"] in _body_text(d) and run_id in _body_text(d))
        except TimeoutException:
            pytest.fail("Required Actions does not list the pending approval:\n" + _body_text(browser)[:3000])
        _screenshot(browser, "required-actions")

        # the subject links to the task's review page: the request's body and its two buttons
        browser.find_element(
            By.XPATH, "//a[contains(@href, '/tasks/approve_release/required_actions')]"
            f"[contains(normalize-space(), '{version}')]").click()
        wait.until(lambda d: d.current_url.endswith("/tasks/approve_release/required_actions"))
        approve = wait.until(EC.element_to_be_clickable(
            (By.XPATH, "//button[normalize-space()='Approve']")))
        WebDriverWait(browser, 30).until(lambda d: "Gate: " in _body_text(d) and version in _body_text(d))
        assert browser.find_elements(By.XPATH, "//button[normalize-space()='Reject']")
        _screenshot(browser, "approval-pending")  # state Awaiting Input, subject, gate table
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", approve)
        _screenshot(browser, "approval-buttons")  # the Approve / Reject buttons below the body
        approve.click()

        # the answer reached Airflow from the browser, and the run goes on to publish
        deadline = time.monotonic() + 60
        while not (hitl := api.get(f"{ti_path}/hitlDetails"))["response_received"]:
            if time.monotonic() > deadline:
                pytest.fail("the Approve click did not answer the request:\n" + _body_text(browser)[:3000])
            time.sleep(1)
        assert hitl["chosen_options"] == ["Approve"], hitl
        states = _wait_run(api, run_id, lambda rs, st: rs == "success", RUN_TIMEOUT_S, "success",
                           airflow_server["log_tail"])
        assert states["approve_release"] == "success" and states["publish"] == "success", states
        assert (recs / "CURRENT").read_text().strip() == version
        assert (recs / f"version={version}").is_dir()

        browser.get(f"{url}/dags/{DAG_ID}/runs/{run_id}")
        WebDriverWait(browser, 60).until(lambda d: run_id in _body_text(d) and "success" in _body_text(d).lower())
        _screenshot(browser, "approval-run-success")
    except BaseException:
        _screenshot(browser, "approval-failure")
        raise
