"""The systemd units in systemd/: the facts deployment relies on, and `systemd-analyze verify`.

Unit files are read line by line rather than with configparser alone, because systemd
allows a key to repeat (`ExecStart=` twice in a drop-in: the empty one resets the list)
and configparser would keep only the last value.
"""

from __future__ import annotations

import configparser
import functools
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from kblabs.cli import build_parser
from kblabs.config.settings import ServerSettings

UNIT_DIR = Path(__file__).resolve().parents[2] / "systemd"
SERVICE = UNIT_DIR / "kblabs.service"
SOCKET = UNIT_DIR / "kblabs.socket"
DROP_IN = UNIT_DIR / "kblabs.service.d" / "socket-activation.conf"
DEPLOYED_PYTHON = "/opt/kblabs/venv/bin/python"
SD_LISTEN_FDS_START = 3  # the first file descriptor systemd passes to an activated service

Unit = dict[str, list[tuple[str, str]]]


def parse_unit(path: Path) -> Unit:
    """{section: [(key, value), …]} in file order, repeated keys kept."""
    sections: Unit = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line.startswith(("#", ";")):
            continue
        if line.endswith("\\"):  # continuation line
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"{path.name}: {line!r} is outside any section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: {line!r} is not key=value"
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: Unit, section: str, key: str) -> list[str]:
    """Every value of `key`, with systemd's rule that an empty assignment resets the list."""
    out: list[str] = []
    for name, value in unit.get(section, []):
        if name == key:
            out = [] if value == "" else [*out, value]
    return out


def one(unit: Unit, section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"[{section}] {key}= expected once, found {found}"
    return found[0]


def merged(base: Unit, drop_in: Unit) -> Unit:
    """A unit with a drop-in applied: the drop-in's assignments come after the base's."""
    return {name: [*base.get(name, []), *drop_in.get(name, [])] for name in {*base, *drop_in}}


def timespan_seconds(text: str) -> float:
    """systemd time span ("180", "3min", "1min 30s", "500ms") in seconds."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+)", text)
    assert parts and "".join(f"{n}{u}" for n, u in parts) == text.replace(" ", ""), text
    return sum(float(number) * units[unit] for number, unit in parts)


def kblabs_argv(command_line: str) -> list[str]:
    """The arguments after `python -m kblabs`, checked to be exactly that invocation."""
    argv = shlex.split(command_line)
    assert argv[0] == DEPLOYED_PYTHON, f"unexpected interpreter in {command_line!r}"
    assert argv[1:3] == ["-m", "kblabs"], command_line
    return argv[3:]


def environment(unit: Unit) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in values(unit, "Service", "Environment"):
        for item in shlex.split(line):
            key, _, value = item.partition("=")
            env[key] = value
    return env


@functools.cache
def _service() -> Unit:
    return parse_unit(SERVICE)


# -- (a) the facts, read from the files ---------------------------------------------------


@pytest.mark.parametrize("path", [SERVICE, SOCKET, DROP_IN], ids=lambda p: p.name)
def test_units_are_well_formed_ini(path: Path) -> None:
    reader = configparser.ConfigParser(strict=False, interpolation=None)
    reader.optionxform = str  # systemd keys are case-sensitive
    reader.read_string(path.read_text(), source=str(path))
    assert reader.sections()
    assert parse_unit(path).keys() == set(reader.sections())


def test_service_is_notify_and_runs_as_kblabs() -> None:
    service = _service()
    assert one(service, "Service", "Type") == "notify"
    assert one(service, "Service", "User") == "kblabs"
    assert one(service, "Service", "Group") == "kblabs"
    assert one(service, "Service", "WorkingDirectory") == "/var/lib/kblabs"
    assert one(service, "Install", "WantedBy") == "multi-user.target"


def test_service_environment_and_secrets_file() -> None:
    service = _service()
    env = environment(service)
    assert env["KB_ENV"] == "production"
    assert env["KB_PROJECT_ROOT"] == one(service, "Service", "WorkingDirectory")
    assert env["KB_DATA_DIR"] == "/var/lib/kblabs/data"
    assert one(service, "Service", "EnvironmentFile") == "/etc/kblabs/secrets.env"
    secretish = [k for k in env if re.search(r"SECRET|TOKEN|PASSWORD|KEY", k)]
    assert not secretish, f"secrets belong in the EnvironmentFile, not the unit: {secretish}"


def test_exec_lines_are_real_cli_commands() -> None:
    service = _service()
    parser = build_parser()

    pre = values(service, "Service", "ExecStartPre")
    assert len(pre) == 1
    migrate = parser.parse_args(kblabs_argv(pre[0]))
    assert (migrate.command, migrate.action, migrate.revision) == ("migrate", "upgrade", "head")

    serve = parser.parse_args(kblabs_argv(one(service, "Service", "ExecStart")))
    assert serve.command == "serve"
    # ExecStartPre already migrated: serve must not race it, and must refuse if behind.
    assert serve.no_migrate is True
    # Host and port come from the config unless socket activation passes a socket.
    assert serve.host is None and serve.port is None and serve.bind is None


def test_stop_and_restart_policy() -> None:
    service = _service()
    assert one(service, "Service", "KillSignal") == "SIGTERM"
    graceful_s = ServerSettings().graceful_timeout_ms / 1000
    stop_s = timespan_seconds(one(service, "Service", "TimeoutStopSec"))
    assert stop_s > graceful_s, "systemd would SIGKILL before the drain can finish"
    assert stop_s >= 180
    assert one(service, "Service", "Restart") == "on-failure"
    assert timespan_seconds(one(service, "Service", "RestartSec")) == 5


def test_hardening() -> None:
    service = _service()
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "RestrictNamespaces": "yes",
        "RestrictRealtime": "yes",
        "UMask": "0077",
        "SystemCallArchitectures": "native",
    }
    actual = {key: one(service, "Service", key) for key in expected}
    assert actual == expected
    # Present and empty: no capabilities at all.
    assert ("CapabilityBoundingSet", "") in service["Service"]
    assert ("AmbientCapabilities", "") in service["Service"]
    assert values(service, "Service", "CapabilityBoundingSet") == []
    # ProtectSystem=strict makes everything read-only: the data dir must be writable.
    writable = [
        Path(p) for line in values(service, "Service", "ReadWritePaths") for p in line.split()
    ]
    assert Path("/var/lib/kblabs") in writable
    data_dir = Path(environment(service)["KB_DATA_DIR"])
    assert any(data_dir.is_relative_to(path) for path in writable)


def test_socket_matches_default_bind() -> None:
    socket_unit = parse_unit(SOCKET)
    defaults = ServerSettings()
    assert values(socket_unit, "Socket", "ListenStream") == [f"{defaults.host}:{defaults.port}"]
    assert one(socket_unit, "Socket", "Accept") == "no"
    assert one(socket_unit, "Install", "WantedBy") == "sockets.target"


def test_socket_activation_drop_in() -> None:
    service = _service()
    drop_in = parse_unit(DROP_IN)
    # The drop-in resets ExecStart (empty assignment) before setting its own.
    raw_exec_start = [v for k, v in drop_in["Service"] if k == "ExecStart"]
    assert len(raw_exec_start) == 2 and raw_exec_start[0] == ""
    assert "kblabs.socket" in one(drop_in, "Unit", "Requires").split()
    assert "kblabs.socket" in one(drop_in, "Unit", "After").split()

    effective = merged(service, drop_in)
    serve = build_parser().parse_args(kblabs_argv(one(effective, "Service", "ExecStart")))
    assert serve.command == "serve" and serve.no_migrate is True
    assert serve.bind == f"fd://{SD_LISTEN_FDS_START}"
    # Everything else (migrations, environment) still comes from kblabs.service.
    assert values(effective, "Service", "ExecStartPre") == values(
        service, "Service", "ExecStartPre"
    )


# -- (b) systemd-analyze verify ------------------------------------------------------------

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (package: systemd)"
)

# Messages that only say this machine is not the deployment host: no kblabs user or
# group, no /var/lib/kblabs or /etc/kblabs. (The missing /opt/kblabs venv is avoided by
# pointing the copies at this Python instead.) Anything else fails the test.
ENVIRONMENT_ONLY = [
    re.compile(r"(?i)\b(user|group)\b.*\bkblabs\b.*(unknown|not found|no such|failed|resolve)"),
    re.compile(r"(?i)(unknown|resolve|no such|not found).*\b(user|group)\b.*\bkblabs\b"),
    re.compile(r"(/var/lib/kblabs|/etc/kblabs/secrets\.env).*(No such file|does not exist)"),
]


def _copy_units(dest: Path) -> dict[str, Path]:
    """Copies of the units with the interpreter pointing at this Python (which exists)."""
    python = f'"{sys.executable}"' if re.search(r"\s", sys.executable) else sys.executable
    (dest / "kblabs.service.d").mkdir()
    copies = {}
    for source in (SERVICE, SOCKET, DROP_IN):
        target = dest / source.relative_to(UNIT_DIR)
        text = source.read_text()
        target.write_text(text.replace(DEPLOYED_PYTHON, python))
        copies[source.name] = target
    return copies


def _verify(*units: Path) -> list[str]:
    """Lines systemd-analyze printed that are not explained by the environment."""
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C", "SYSTEMD_LOG_COLOR": "0"},
        cwd=units[0].parent,
    )
    lines = (result.stdout + result.stderr).splitlines()
    return [
        line
        for line in lines
        if line.strip() and not any(pattern.search(line) for pattern in ENVIRONMENT_ONLY)
    ]


@needs_systemd_analyze
def test_systemd_analyze_verify_service_alone() -> None:
    with tempfile.TemporaryDirectory() as folder:
        copies = _copy_units(Path(folder))
        shutil.rmtree(Path(folder) / "kblabs.service.d")  # installed without the socket
        assert _verify(copies["kblabs.service"]) == []


@needs_systemd_analyze
def test_systemd_analyze_verify_socket_activation() -> None:
    with tempfile.TemporaryDirectory() as folder:
        copies = _copy_units(Path(folder))
        assert _verify(copies["kblabs.service"], copies["kblabs.socket"]) == []


@needs_systemd_analyze
def test_systemd_analyze_reads_the_drop_in() -> None:
    """Control: a mistake in the drop-in is reported, so the checks above do see the
    drop-in and the filter does not hide real problems."""
    with tempfile.TemporaryDirectory() as folder:
        copies = _copy_units(Path(folder))
        drop_in = copies["socket-activation.conf"]
        drop_in.write_text(drop_in.read_text() + "NoSuchSetting=1\n")
        problems = _verify(copies["kblabs.service"], copies["kblabs.socket"])
        assert any("NoSuchSetting" in line for line in problems), problems
