"""Live task progress of an in-process ``dag.test()`` run, its noisy logs kept in a file.

Progress comes from Airflow's listener hooks (``on_task_instance_running / success / failed /
skipped``): ``dag.test()`` runs every task in this process and thread, and the task runner
calls the hooks of a listener registered with :func:`airflow.sdk.listener.get_listener_manager`
around each task. No thread and no DB polling is involved. Tasks the scheduler loop skips
without running (``upstream_failed``, short-circuited) fire no hook; :meth:`TaskProgress.finish`
reports them from the DAG run's final task states.

The logs (Airflow's task logs, library logging, warnings, anything a C extension prints) are
captured by pointing file descriptors 1 and 2 at a log file: every writer is covered, whatever
stream object it kept. The progress lines go to a duplicate of the original stdout.
"""

from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from include.recsys.cli._console import STYLES, Out
from include.recsys.core.fmt import fmt_num

TAIL_LINES = 8
MARKS = {"success": "ok", "failed": "FAILED", "skipped": "skipped", "upstream_failed": "not run",
         "retry": "retry"}

# lines of Airflow's own bookkeeping that say nothing about why a task failed
_NOISE = re.compile(
    r"Task instance state updated|Task started|::(end)?group::|Updating RenderedTaskInstanceFields|"
    r"\[DAG TEST\]|Pushing xcom|Executing on_|error calling listener|XCom not found"
)
_TRACEBACK = re.compile(r"^\s*(Traceback \(most recent call last\)|╭─+ Traceback)")
_CHAINED = re.compile(r"^(The above exception was the direct cause|During handling of the above exception)")
_EXC_PATH = re.compile(r"^(?:[A-Za-z_][\w]*\.)+(?=[A-Za-z_]\w*: )")  # airflow.sdk.exceptions.X: -> X:
_STAMP = re.compile(r"^\d{4}-\d\d-\d\d[T ][\d:.,]+Z?\s*|\s+loc=\S+$")


class LogCapture:
    """Redirect fd 1 and 2 to ``path`` (None: leave them alone) while the block runs.

    ``__enter__`` returns a text stream on the original stdout for the human-facing lines.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._saved: tuple[int, int] | None = None
        self.stream: TextIO | None = None

    def __enter__(self) -> TextIO:
        sys.stdout.flush()
        sys.stderr.flush()
        self.stream = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace")
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self._saved = (os.dup(1), os.dup(2))
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
        return self.stream

    def __exit__(self, *exc: Any) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        if self._saved is not None:
            os.dup2(self._saved[0], 1)
            os.dup2(self._saved[1], 2)
            for fd in self._saved:
                os.close(fd)
            self._saved = None
        if self.stream is not None:
            self.stream.close()  # our duplicate of stdout; fd 1 itself stays open
            self.stream = None

    def offset(self) -> int:
        if self.path is None:
            return 0
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def tail(self, since: int, lines: int = TAIL_LINES) -> list[str]:
        """The last ``lines`` meaningful log lines written since byte ``since`` (tasks run one
        at a time under ``dag.test()``, so that is the failing task's own log)."""
        if self.path is None:
            return []
        sys.stdout.flush()
        sys.stderr.flush()
        with open(self.path, "rb") as fh:
            fh.seek(since)
            text = fh.read().decode("utf-8", errors="replace")
        return [_short(ln, 200) for ln in meaningful(text.splitlines())[-lines:]]


def meaningful(lines: list[str]) -> list[str]:
    """Log lines without Airflow's bookkeeping and without traceback frames (the exception
    line that ends a traceback stays, with its module path cut to the class name)."""
    keep: list[str] = []
    in_traceback = False
    for ln in lines:
        if not ln.strip() or _NOISE.search(ln) or _CHAINED.match(ln):
            continue
        if _TRACEBACK.match(ln):
            in_traceback = True
            continue
        if in_traceback:
            if ln[:1].isspace():  # a frame or its source line
                continue
            in_traceback = False
            ln = _EXC_PATH.sub("", ln)
        keep.append(_STAMP.sub("", ln).rstrip())
    return keep


def _short(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."


def figures(task_id: str, value: Any) -> str:
    """What a stage's XCom says it did, in a few words ('' when it says nothing countable)."""
    v = value if isinstance(value, dict) else {}
    st = v.get("stats") or {}
    counts = v.get("counts") or {}
    if task_id == "snapshot" and st:
        return (f"{fmt_num(st.get('rows_read'), 'int')} rows in -> {fmt_num(st.get('rows'), 'int')} rows out "
                f"({fmt_num(st.get('users'), 'int')} users, {fmt_num(st.get('items'), 'int')} items)")
    if task_id in ("validate_input", "validate_output") and counts:
        warned = f", {counts.get('warned')} warnings" if counts.get("warned") else ""
        return f"{counts.get('passed')}/{counts.get('checks')} checks passed{warned}"
    if task_id == "split" and st:
        return f"{fmt_num(st.get('train_rows'), 'int')} train / {fmt_num(st.get('holdout_rows'), 'int')} holdout rows"
    if task_id == "plan_trials" and isinstance(value, list):
        return f"{len(value)} trials" if value else "no tuning tonight"
    if task_id == "select_best" and v:
        return _short(str(v.get("detail") or v.get("source") or ""), 80)
    if task_id == "should_publish" and isinstance(value, bool):
        return "go on: register and publish" if value else "dry run: nothing is registered or published"
    if task_id == "train" and st:
        return (f"{fmt_num(st.get('users'), 'int')} users x {fmt_num(st.get('items'), 'int')} items, "
                f"{fmt_num(st.get('nnz'), 'int')} interactions")
    if task_id == "evaluate" and v.get("metrics"):
        models = v["metrics"]
        key = next((k for k in models.get("candidate", {}) if k.startswith("ndcg@")), None)
        return f"{key}: " + ", ".join(f"{m} {fmt_num(models[m].get(key))}" for m in models) if key else ""
    if task_id == "gate" and v:
        return f"{v.get('verdict')} on {v.get('metric')}" + (" (FORCED)" if v.get("forced") else "")
    if task_id == "register" and v:
        return f"model version {v.get('model_version')} (challenger)"
    if task_id == "plan_shards" and isinstance(value, list):
        return f"{len(value)} shards"
    if task_id == "approve_release" and v:
        if not v.get("required"):
            return "not asked (require_approval is off)"
        by = v.get("by")
        by = (by.get("name") or by.get("id")) if isinstance(by, dict) else by  # Airflow's user record
        return f"approved by {by}" if v.get("approved") else ""
    if task_id == "publish" and v:
        return f"CURRENT -> {v.get('version')}" if v.get("moved") else f"{v.get('version')} already served"
    if "rows" in v:
        out = f"{fmt_num(v['rows'], 'int')} rows out"
        out += f" ({fmt_num(v['users'], 'int')} users)" if "users" in v else ""
        return out + (f" -> version {v['version']}" if v.get("version") else "")
    return ""


def group_figures(task_id: str, values: list[Any]) -> str:
    """The figures of a mapped task's instances together."""
    dicts = [v for v in values if isinstance(v, dict)]
    if task_id == "run_trial":
        scores = [v["best_metric"] for v in dicts if v.get("ok") and v.get("best_metric") is not None]
        return f"best validation score {max(scores):.4f}" if scores else ""
    if dicts and all("rows" in v for v in dicts):
        users = sum(int(v.get("users") or 0) for v in dicts)
        return f"{sum(int(v['rows']) for v in dicts):,} rows out" + (f" ({users:,} users)" if users else "")
    return ""


@dataclass
class Failure:
    task: str
    state: str
    reason: str
    tail: list[str] = field(default_factory=list)


@dataclass
class _Mapped:
    task_id: str
    total: int | None
    seconds: float = 0.0
    states: list[str] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)


def _state(value: Any) -> str:
    return str(getattr(value, "value", value))


def _reason(error: Any) -> str:
    if error is None:
        return "no error was reported (see the log)"
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    name = type(error).__name__ if isinstance(error, BaseException) else ""
    if name in ("AirflowFailException", "str", "") or re.match(r"^\w+(Error|Exception|Failed)\b", text):
        return _short(text or name, 300)
    return _short(f"{name}: {text}", 300)


class TaskProgress:
    """An Airflow listener printing one line per finished task (mapped tasks: one per task)."""

    def __init__(self, out: Out, capture: LogCapture) -> None:
        self.out = out
        self.capture = capture
        self.failures: list[Failure] = []
        self.seen: set[str] = set()
        self._start: dict[tuple[str, int], tuple[float, int]] = {}
        self._mapped: _Mapped | None = None
        self._live = None
        self.width = 16

    # --- listener hooks (see airflow.sdk._shared.listeners.spec.taskinstance) --------------
    def on_task_instance_running(self, previous_state: Any, task_instance: Any) -> None:
        ti = task_instance
        if self._mapped is not None and self._mapped.task_id != ti.task_id:
            self._flush_mapped()
        self._start[(ti.task_id, ti.map_index)] = (time.monotonic(), self.capture.offset())
        if ti.map_index >= 0 and self._mapped is None:
            self._mapped = _Mapped(ti.task_id, _mapped_total(ti))
        label = ti.task_id
        if self._mapped is not None:
            label += f" {len(self._mapped.states) + 1}/{self._mapped.total or '?'}"
        self._status(f"running {label} ...")

    def on_task_instance_success(self, previous_state: Any, task_instance: Any) -> None:
        self._done(task_instance, "success", _xcom(task_instance))

    def on_task_instance_skipped(self, previous_state: Any, task_instance: Any) -> None:
        self._done(task_instance, "skipped", None)

    def on_task_instance_failed(self, previous_state: Any, task_instance: Any, error: Any) -> None:
        state = _state(getattr(task_instance, "state", None) or "failed")
        state = "retry" if state == "up_for_retry" else "failed"
        self._done(task_instance, state, None, error)

    # --- reporting --------------------------------------------------------------------------
    def _done(self, ti: Any, state: str, value: Any, error: Any = None) -> None:
        t0, offset = self._start.pop((ti.task_id, ti.map_index), (time.monotonic(), 0))
        seconds = time.monotonic() - t0
        note = ""
        if state in ("failed", "retry"):
            failure = Failure(ti.task_id, state, _reason(error), self.capture.tail(offset))
            note = failure.reason
            if state == "failed":
                self.failures.append(failure)
            else:
                note = f"attempt {getattr(ti, 'try_number', '?')} failed, will retry: {note}"
        if ti.map_index >= 0 and self._mapped is not None and state != "retry":
            m = self._mapped
            m.seconds += seconds
            m.states.append(state)
            m.values.append(value)
            if m.total is not None and len(m.states) >= m.total:
                self._flush_mapped()
            return
        self._row(state, ti.task_id, seconds, note or figures(ti.task_id, value))

    def _flush_mapped(self) -> None:
        m, self._mapped = self._mapped, None
        if m is None:
            return
        ok = sum(s == "success" for s in m.states)
        total = m.total or len(m.states)
        worst = next((s for s in ("failed", "skipped") if s in m.states), "success")
        note = group_figures(m.task_id, m.values)
        if worst != "success":
            note = f"{ok} succeeded, {len(m.states) - ok} {worst}" + (f"; {note}" if note else "")
        self._row(worst, f"{m.task_id} {ok}/{total}", m.seconds, note, task_id=m.task_id)

    def _row(
        self, state: str, label: str, seconds: float | None, note: str, task_id: str | None = None
    ) -> None:
        self.seen.add(task_id or label)
        self._status(None)
        secs = f"{seconds:6.1f}s" if seconds is not None else "      -"
        mark = MARKS.get(state, state)
        self.out.styled([
            (f"  {mark:<9}", STYLES.get(state)), (f"{label:<{self.width + 6}}", "bold"),
            (f"{secs}  ", "dim"), (note, None),
        ])
        for failure in self.failures[-1:]:
            if failure.task == (task_id or label) and state == "failed" and failure.tail:
                self.out.line(f"          last log lines of {failure.task}:", "dim")
                for ln in failure.tail:
                    self.out.line(f"          | {ln}", "dim")

    def _status(self, text: str | None) -> None:
        """A transient spinner line on a terminal (nothing in plain mode)."""
        if self.out.console is None:
            return
        if text is None:
            if self._live is not None:
                self._live.stop()
                self._live = None
            return
        from rich.live import Live
        from rich.spinner import Spinner

        if self._live is None:
            # redirect_*=False: rich must not re-route sys.stdout (the task logs) to the terminal
            self._live = Live(console=self.out.console, transient=True, redirect_stdout=False,
                              redirect_stderr=False, refresh_per_second=8)
            self._live.start()
        self._live.update(Spinner("dots", text=text))

    def finish(self, task_states: dict[str, list[str]], order: list[str]) -> None:
        """Close the last mapped group, then report the tasks no hook saw (never ran)."""
        self._flush_mapped()
        self._status(None)
        by_state: dict[str, list[str]] = {}
        for task_id in order:
            states = task_states.get(task_id) or []
            if task_id not in self.seen and states:
                by_state.setdefault(states[0] if len(set(states)) == 1 else "mixed", []).append(task_id)
        why = {"upstream_failed": "an upstream task failed", "skipped": "nothing to do in this run"}
        for state, tasks in by_state.items():
            if len(tasks) == 1:
                self._row(state, tasks[0], None, f"not run ({why.get(state, state)})")
            else:
                names = _short(", ".join(tasks), 90)
                self._row(state, f"{len(tasks)} tasks", None, f"not run ({why.get(state, state)}): {names}")


def _xcom(ti: Any) -> Any:
    """The value the task just returned (its XCom), None when there is none.

    Read from the metadata DB rather than with ``ti.xcom_pull``: for a task that returned
    nothing, the pull would log a misleading "[error] XCom not found" into the task log."""
    try:
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            row = session.scalars(
                select(XComModel).where(
                    XComModel.dag_id == ti.dag_id, XComModel.run_id == ti.run_id,
                    XComModel.task_id == ti.task_id, XComModel.map_index == ti.map_index,
                    XComModel.key == "return_value",
                )
            ).first()
            return None if row is None else XComModel.deserialize_value(row)
    except Exception:
        return None


def _mapped_total(ti: Any) -> int | None:
    """How many instances the mapped task expanded to (from the metadata DB)."""
    try:
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session
        from sqlalchemy import func, select

        with create_session() as session:
            return session.scalar(
                select(func.count()).select_from(TaskInstance).where(
                    TaskInstance.dag_id == ti.dag_id, TaskInstance.run_id == ti.run_id,
                    TaskInstance.task_id == ti.task_id, TaskInstance.map_index >= 0,
                )
            ) or None
    except Exception:
        return None


def listen(progress: TaskProgress):
    """Register ``progress`` with the task runner's listener manager; returns an undo."""
    from airflow.listeners import hookimpl
    from airflow.sdk.listener import get_listener_manager

    class _Hooks:
        @hookimpl
        def on_task_instance_running(self, previous_state, task_instance):
            progress.on_task_instance_running(previous_state, task_instance)

        @hookimpl
        def on_task_instance_success(self, previous_state, task_instance):
            progress.on_task_instance_success(previous_state, task_instance)

        @hookimpl
        def on_task_instance_skipped(self, previous_state, task_instance):
            progress.on_task_instance_skipped(previous_state, task_instance)

        @hookimpl
        def on_task_instance_failed(self, previous_state, task_instance, error):
            progress.on_task_instance_failed(previous_state, task_instance, error)

    hooks = _Hooks()
    manager = get_listener_manager()
    manager.add_listener(hooks)
    return lambda: manager.pm.unregister(hooks)
