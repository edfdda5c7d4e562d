"""The set-up scripts behind the README's two commands, run as bash runs them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENSURE_REDIS = ROOT / "scripts" / "ensure-redis.sh"


def run_sourced(script: Path, path: Path) -> subprocess.CompletedProcess[str]:
    """``source script`` in a bash whose PATH is ``path`` alone."""
    return subprocess.run(
        ["/bin/bash", "-c", f"set -euo pipefail; source {script}; echo sourced"],
        env={"PATH": str(path)},
        capture_output=True,
        text=True,
        timeout=30,
    )


def fake_apt_get(bin_dir: Path) -> Path:
    """An apt-get that records its arguments and 'installs' a redis-server."""
    calls = bin_dir / "apt-get.calls"
    apt_get = bin_dir / "apt-get"
    apt_get.write_text(
        "#!/bin/bash\n"
        f'echo "$*" >> {calls}\n'
        f"printf '#!/bin/bash\\n' > {bin_dir}/redis-server\n"
        f"/bin/chmod +x {bin_dir}/redis-server\n"
    )
    apt_get.chmod(0o755)
    return calls


def test_ensure_redis_does_nothing_when_redis_server_is_there(tmp_path: Path) -> None:
    (tmp_path / "redis-server").write_text("#!/bin/bash\n")
    (tmp_path / "redis-server").chmod(0o755)
    calls = fake_apt_get(tmp_path)
    result = run_sourced(ENSURE_REDIS, tmp_path)
    assert result.returncode == 0 and result.stdout == "sourced\n", result
    assert not calls.exists()


def test_ensure_redis_installs_the_package_when_missing(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root installs packages; the refusal is tested either way")
    calls = fake_apt_get(tmp_path)
    result = run_sourced(ENSURE_REDIS, tmp_path)
    assert result.returncode == 0 and result.stdout == "sourced\n", result
    assert calls.read_text() == "install -y -qq redis-server\n"
    assert "installing redis-server" in result.stderr


def test_ensure_redis_says_what_to_install_when_it_cannot(tmp_path: Path) -> None:
    # No apt-get: nothing to install with.
    result = run_sourced(ENSURE_REDIS, tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert "the tests need redis-server on PATH; install it" in result.stderr


ENSURE_CHROMIUM = ROOT / "scripts" / "ensure-chromium.sh"


def test_ensure_chromium_does_nothing_but_forbid_browser_downloads_when_it_is_there(
    tmp_path: Path,
) -> None:
    (tmp_path / "chromium").write_text("#!/bin/bash\n")
    (tmp_path / "chromium").chmod(0o755)
    calls = fake_apt_get(tmp_path)
    result = subprocess.run(
        ["/bin/bash", "-c", f"set -euo pipefail; source {ENSURE_CHROMIUM}; "
         'echo "$PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD"'],
        env={"PATH": str(tmp_path)}, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0 and result.stdout == "1\n", result
    assert not calls.exists()


def test_ensure_chromium_installs_debian_s_package_when_missing(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root installs packages; the refusal is tested either way")
    calls = tmp_path / "apt-get.calls"
    apt_get = tmp_path / "apt-get"
    apt_get.write_text(
        "#!/bin/bash\n"
        f'echo "$*" >> {calls}\n'
        f"printf '#!/bin/bash\\n' > {tmp_path}/chromium\n"
        f"/bin/chmod +x {tmp_path}/chromium\n"
    )
    apt_get.chmod(0o755)
    result = run_sourced(ENSURE_CHROMIUM, tmp_path)
    assert result.returncode == 0 and result.stdout == "sourced\n", result
    assert calls.read_text() == "install -y -qq chromium\n"
    assert "installing chromium" in result.stderr


def test_ensure_chromium_says_what_to_install_when_it_cannot(tmp_path: Path) -> None:
    result = run_sourced(ENSURE_CHROMIUM, tmp_path)  # no apt-get to install with
    assert result.returncode == 1
    assert result.stdout == ""
    assert "the tests need chromium on PATH; install it" in result.stderr
