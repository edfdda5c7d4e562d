"""scripts/ensure-promtool.sh, run as run_tests.sh runs it: promtool is taken out of
Debian's package, never installed with the Prometheus server around it."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENSURE_PROMTOOL = ROOT / "scripts" / "ensure-promtool.sh"
PROMTOOL = "#!/bin/sh\necho promtool from the package\n"


def run_sourced(tmp_path: Path, path: str) -> subprocess.CompletedProcess[str]:
    """``source ensure-promtool.sh`` with ``venv`` set, as after ensure-venv.sh."""
    (tmp_path / "venv" / "bin").mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        ["/bin/bash", "-c", f"set -euo pipefail; venv={tmp_path}/venv; "
         f"source {ENSURE_PROMTOOL}; echo sourced"],
        env={"PATH": path}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def fake_apt_get(bin_dir: Path) -> Path:
    """An apt-get that records its arguments and, asked to download, leaves a
    prometheus .deb holding a promtool and a server in the current directory."""
    calls = bin_dir / "apt-get.calls"
    apt_get = bin_dir / "apt-get"
    apt_get.write_text(
        "#!/bin/bash\nset -e\n"
        f'echo "$*" >> {calls}\n'
        '[[ " $* " == *" download "* ]] || exit 0\n'
        "mkdir -p package/DEBIAN package/usr/bin\n"
        "printf 'Package: prometheus\\nVersion: 2.42.0\\nArchitecture: all\\n"
        "Maintainer: test <test@example.com>\\nDescription: test\\n' > package/DEBIAN/control\n"
        f"printf '{PROMTOOL.encode('unicode_escape').decode()}' > package/usr/bin/promtool\n"
        "printf '#!/bin/sh\\n' > package/usr/bin/prometheus\n"
        "chmod 755 package/usr/bin/*\n"
        "dpkg-deb --build --root-owner-group package prometheus_2.42.0_all.deb >/dev/null\n"
        "rm -r package\n"
    )
    apt_get.chmod(0o755)
    return calls


def test_promtool_on_path_is_used_as_it_is(tmp_path: Path) -> None:
    (tmp_path / "promtool").write_text("#!/bin/sh\n")
    (tmp_path / "promtool").chmod(0o755)
    calls = fake_apt_get(tmp_path)
    result = run_sourced(tmp_path, f"{tmp_path}:/usr/bin:/bin")
    assert result.returncode == 0 and result.stdout == "sourced\n", result
    assert not calls.exists()
    assert not (tmp_path / "venv" / "bin" / "promtool").exists()


def test_promtool_alone_is_taken_out_of_debian_s_package(tmp_path: Path) -> None:
    calls = fake_apt_get(tmp_path)
    result = run_sourced(tmp_path, f"{tmp_path}:/usr/bin:/bin")
    assert result.returncode == 0 and result.stdout == "sourced\n", result
    # Downloaded, not installed: no server is set up, or started.
    assert [line.split()[-1] for line in calls.read_text().splitlines()] == ["prometheus"]
    assert "download" in calls.read_text() and "install" not in calls.read_text()
    promtool = tmp_path / "venv" / "bin" / "promtool"
    assert subprocess.run([promtool], capture_output=True, text=True).stdout == (
        "promtool from the package\n"
    )
    assert sorted(p.name for p in promtool.parent.iterdir()) == ["promtool"]
    # Sourced again, it finds the one it took.
    assert run_sourced(tmp_path, f"{tmp_path}:/usr/bin:/bin").stdout == "sourced\n"
    assert len(calls.read_text().splitlines()) == 1


def test_without_apt_get_it_says_what_to_install(tmp_path: Path) -> None:
    result = run_sourced(tmp_path, str(tmp_path))
    assert result.returncode == 1
    assert result.stdout == ""
    assert "the tests need promtool on PATH or in" in result.stderr
    assert "apt-get install prometheus" in result.stderr
