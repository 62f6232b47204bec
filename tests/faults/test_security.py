"""Security checks: no secrets in tracked files, safe loaders, a patched pyarrow."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# real-looking secrets; placeholders (T000/B000/XXXX, xoxb-... with FAKE, <token>) are allowed
_WEBHOOK = re.compile(r"hooks\.slack\.com/services/(T[A-Z0-9]{8,})/(B[A-Z0-9]{8,})/([A-Za-z0-9]{20,})")
_TOKEN = re.compile(r"\bxox[abposr]-[0-9]{6,}-[0-9A-Za-z-]{10,}")
_ALLOWED = ("FAKE", "XXXX", "EXAMPLE")


def _tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        pytest.skip("not a git checkout")
    return [ROOT / p for p in out.splitlines() if (ROOT / p).is_file()]


def test_security_no_secrets_in_repo() -> None:
    """A real-looking Slack webhook URL or xox[bp]- token in a tracked file or default config ->
    the test fails (placeholders such as T000/B000/XXXX or *FAKE* are allowed)."""
    found = []
    for path in _tracked_files():
        try:
            text = path.read_text(errors="ignore")
        except OSError:
            continue
        for m in [*_WEBHOOK.finditer(text), *_TOKEN.finditer(text)]:
            if not any(a in m.group(0).upper() for a in _ALLOWED):
                found.append(f"{path.relative_to(ROOT)}: {m.group(0)[:24]}...")
    assert not found, found


def test_security_models_load_without_pickle() -> None:
    """A model bundle could carry pickled objects (code execution on load) -> every np.load in
    the library passes allow_pickle=False and nothing imports pickle."""
    src = (ROOT / "include" / "recsys" / "scoring" / "bundle.py").read_text()
    loads = re.findall(r"np\.load\([^)]*\)", src)
    assert loads and all("allow_pickle=False" in call for call in loads), loads
    for py in (ROOT / "include").rglob("*.py"):
        text = py.read_text()
        assert "allow_pickle=True" not in text, py
        assert not re.search(r"^\s*import pickle|pickle\.loads?\(", text, re.M), py


def test_security_pyarrow_without_parquet_cve() -> None:
    """A crafted Parquet/IPC file (CVE-2023-47248, pyarrow < 14.0.1) -> the installed pyarrow is
    >= 14.0.1, not affected."""
    import pyarrow

    major, minor, patch = (int(re.match(r"\d+", x).group()) for x in pyarrow.__version__.split(".")[:3])
    assert (major, minor, patch) >= (14, 0, 1), pyarrow.__version__


def test_security_models_come_from_the_registry_only() -> None:
    """A model from an arbitrary location -> champion bundles are only downloaded from the
    project's registry (models:/<registered name>/<version>)."""
    src = (ROOT / "include" / "recsys" / "tracking" / "registry.py").read_text()
    assert 'models:/{cfg.model_name}/' in src
