"""Offline test infrastructure for the marketplace: wheels built here, a PEP 503 index
on loopback, and pip run so that it can never reach the public internet.

Standard library only; nothing here needs setuptools, a build backend or the network.

Wheels (PEP 427)
    `build_wheel(out_dir, name, version, files=..., requires=..., entry_points=...)`
        any pure-Python wheel, with METADATA, WHEEL, entry_points.txt and a RECORD of
        sha256 digests; byte-for-byte reproducible (fixed zip timestamps).
    `plugin_wheel(out_dir, name="kb-demo", version="1.0.0", plugin_id="@acme/demo", ...)`
        a KB Labs plugin: package `kb_demo` with `kb.plugin.json` (route `GET /hello`,
        CLI `demo hello`), `handlers.py` and the `kb_labs.plugins` entry point.
    `broken_wheel(out_dir, ..., defect=...)`
        a correctly named `.whl` that pip refuses to install.

Index
    `SimpleIndex(wheels_dir)`: serves the `*.whl` files of `wheels_dir` as a PEP 503
    "simple" index on 127.0.0.1 (a free port) from a daemon thread; the folder is read on
    every request, so wheels added later are served too.

        with SimpleIndex(wheels) as index:
            run_pip("install", "--target", str(target), "--index-url", index.url, "kb-demo")

pip
    `pip_env()`: the environment for a pip subprocess: every `PIP_*` and proxy variable
    removed, `PIP_CONFIG_FILE=/dev/null` (pip then reads no pip.conf at all: this machine's
    has extra indexes, find-links and constraints), no version check, no prompts, no cache.
    `run_pip(*args)`: `python -m pip ARGS` with that environment. It refuses (ValueError)
    an `install`, `download`, `wheel` or `index` command that has neither `--no-index` nor
    an `--index-url`, or whose `--index-url`, `--extra-index-url` or `--find-links` is not
    on loopback or the local disk (`check_offline`).
    Note: pip byte-compiles what it installs, so `<target>/<pkg>/__pycache__/` appears
    (and is listed in the installed RECORD) unless `--no-compile` is passed.

Fixture (import it into a test module: `from tests.marketplace_fixtures import
simple_index  # noqa: F401 - the fixture`, and mark the parameter `# noqa: F811`)
    `simple_index`: a started `SimpleIndex` over the empty folder `tmp_path / "wheels"`
    (`simple_index.wheels_dir`), stopped after the test.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import quote, unquote, urlsplit

import pytest

__all__ = [
    "GENERATOR",
    "PLUGIN_ENTRY_POINT_GROUP",
    "SimpleIndex",
    "broken_wheel",
    "build_wheel",
    "canonical_name",
    "check_offline",
    "pip_env",
    "plugin_manifest",
    "plugin_wheel",
    "run_pip",
    "simple_index",
    "wheel_contents",
    "wheel_filename",
]

GENERATOR = "kblabs-tests (marketplace_fixtures)"
PLUGIN_ENTRY_POINT_GROUP = "kb_labs.plugins"
WHEEL_TAG = "py3-none-any"
# Every entry gets this timestamp (the zip format starts at 1980): the same inputs give
# the same bytes, so a wheel's sha256 is stable across runs.
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
NAME = re.compile(r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$", re.IGNORECASE)  # PEP 508
VERSION = re.compile(r"^[A-Za-z0-9.!+_]+$")  # loose: no `-`, which would split the name
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


# --- names ---------------------------------------------------------------------------------


def canonical_name(name: str) -> str:
    """PEP 503 normalized project name: `Kb_Demo.x` → `kb-demo-x`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _escaped(name: str) -> str:
    """The distribution name as it appears in wheel and .dist-info names (`-` → `_`)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def wheel_filename(name: str, version: str) -> str:
    """`<normalized_dist>-<version>-py3-none-any.whl`."""
    return f"{_escaped(name)}-{version}-{WHEEL_TAG}.whl"


def _check_name_version(name: str, version: str) -> None:
    if not NAME.match(name):
        raise ValueError(f"{name!r} is not a valid distribution name (PEP 508)")
    if not VERSION.match(version):
        raise ValueError(f"{version!r} is not a usable version for a wheel file name")


# --- wheels --------------------------------------------------------------------------------


def _record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _as_bytes(content: str | bytes) -> bytes:
    return content.encode("utf-8") if isinstance(content, str) else content


def _check_archive_path(path: str) -> str:
    parts = path.split("/")
    if not path or path.startswith("/") or "\\" in path or ".." in parts or "" in parts:
        raise ValueError(f"{path!r} is not a relative archive path like 'pkg/mod.py'")
    return path


def _write_zip(target: Path, entries: Iterable[tuple[str, bytes]]) -> None:
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path, data in entries:
            info = zipfile.ZipInfo(path, date_time=ZIP_DATE)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)


def _metadata(name: str, version: str, requires: Sequence[str], extra: str) -> str:
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Requires-Dist: {requirement}" for requirement in requires]
    text = "\n".join(lines) + "\n"
    if extra:
        text += extra if extra.endswith("\n") else extra + "\n"
    return text


def _wheel_file(wheel_version: str = "1.0") -> str:
    return (
        f"Wheel-Version: {wheel_version}\n"
        f"Generator: {GENERATOR}\n"
        "Root-Is-Purelib: true\n"
        f"Tag: {WHEEL_TAG}\n"
    )


def _entry_points_file(entry_points: Mapping[str, Mapping[str, str]]) -> str:
    sections = []
    for group, entries in entry_points.items():
        lines = [f"[{group}]"] + [f"{key} = {value}" for key, value in entries.items()]
        sections.append("\n".join(lines) + "\n")
    return "\n".join(sections)


def _wheel_entries(
    name: str,
    version: str,
    files: Mapping[str, str | bytes],
    requires: Sequence[str],
    entry_points: Mapping[str, Mapping[str, str]] | None,
    metadata_extra: str,
    *,
    wheel_version: str = "1.0",
    with_wheel_file: bool = True,
) -> list[tuple[str, bytes]]:
    """Every (path, bytes) of the wheel in archive order, RECORD last."""
    dist_info = f"{_escaped(name)}-{version}.dist-info"
    entries = [(_check_archive_path(path), _as_bytes(data)) for path, data in files.items()]
    if any(path.split("/")[0] == dist_info for path, _ in entries):
        raise ValueError(f"files must not write into {dist_info}/: it is generated")
    entries.append(
        (f"{dist_info}/METADATA", _metadata(name, version, requires, metadata_extra).encode())
    )
    if with_wheel_file:
        entries.append((f"{dist_info}/WHEEL", _wheel_file(wheel_version).encode()))
    if entry_points is not None:
        entries.append((f"{dist_info}/entry_points.txt", _entry_points_file(entry_points).encode()))
    record = f"{dist_info}/RECORD"
    lines = [f"{path},{_record_hash(data)},{len(data)}" for path, data in entries]
    lines.append(f"{record},,")
    entries.append((record, ("\n".join(lines) + "\n").encode()))
    return entries


def build_wheel(
    out_dir: Path,
    name: str,
    version: str,
    *,
    files: Mapping[str, str | bytes],
    requires: Sequence[str] = (),
    entry_points: Mapping[str, Mapping[str, str]] | None = None,
    metadata_extra: str = "",
) -> Path:
    """Write a pure-Python wheel (PEP 427) into `out_dir` and return its path.

    `files` maps archive paths (`"kb_demo/__init__.py"`) to text (UTF-8) or bytes;
    `requires` become `Requires-Dist` lines; `entry_points` is `{group: {name: value}}`
    (`entry_points.txt` is written only when given); `metadata_extra` is appended to
    METADATA as is (e.g. `"Requires-Python: >=3.11\\n"`). Overwrites an existing file
    of the same name.
    """
    _check_name_version(name, version)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / wheel_filename(name, version)
    _write_zip(target, _wheel_entries(name, version, files, requires, entry_points, metadata_extra))
    return target


# --- KB Labs plugins -------------------------------------------------------------------


def _package(name: str) -> str:
    return _escaped(name)


def _unscoped(plugin_id: str) -> str:
    return plugin_id.rsplit("/", 1)[-1].lstrip("@")


def plugin_manifest(
    name: str = "kb-demo", version: str = "1.0.0", plugin_id: str = "@acme/demo"
) -> dict:
    """The `kb.plugin.json` that `plugin_wheel` ships (as a dict).

    Package `<name with - → _>`; REST `GET /hello` and CLI `<unscoped id> hello` (for
    `@acme/demo`: `python -m kblabs demo hello`), both handled by `<pkg>.handlers:hello`.
    """
    package = _package(name)
    handler = f"{package}.handlers:hello"
    return {
        "schema": "kb.plugin/3",
        "id": plugin_id,
        "version": version,
        "display": {"name": name, "description": f"Test plugin {plugin_id} {version}"},
        "rest": {
            "routes": [
                {
                    "method": "GET",
                    "path": "/hello",
                    "handler": handler,
                    "description": "Answer with the configured answer and the version",
                }
            ]
        },
        "cli": {
            "commands": [
                {
                    "id": "hello",
                    "group": _unscoped(plugin_id),
                    "describe": "Print the answer and the version",
                    "handler": handler,
                }
            ]
        },
    }


def plugin_wheel(
    out_dir: Path,
    name: str = "kb-demo",
    version: str = "1.0.0",
    plugin_id: str = "@acme/demo",
    *,
    requires: Sequence[str] = (),
    route_answer: str = "hi",
    broken_import: bool = False,
) -> Path:
    """A KB Labs plugin distribution as a wheel in `out_dir`.

    Package `<name with - → _>/` holds `__init__.py`, `kb.plugin.json`
    (`plugin_manifest(name, version, plugin_id)`) and `handlers.py` with
    `async def hello(ctx, input) -> {"answer": route_answer, "version": version}`; with
    `broken_import=True`, importing `handlers` raises RuntimeError (the package itself
    imports fine). Entry point: `[kb_labs.plugins] <unscoped id> = <package>`.
    """
    package = _package(name)
    handlers = (
        '"""Handlers of the test plugin (built by tests/marketplace_fixtures.py)."""\n\n'
        + (
            f"raise RuntimeError({f'{name} {version}: broken on purpose'!r})\n\n"
            if broken_import
            else ""
        )
        + "\nasync def hello(ctx, input):\n"
        + f"    return {{'answer': {route_answer!r}, 'version': {version!r}}}\n"
    )
    manifest = json.dumps(plugin_manifest(name, version, plugin_id), indent=2) + "\n"
    return build_wheel(
        out_dir,
        name,
        version,
        files={
            f"{package}/__init__.py": f'"""Test plugin {plugin_id} {version}."""\n',
            f"{package}/kb.plugin.json": manifest,
            f"{package}/handlers.py": handlers,
        },
        requires=requires,
        entry_points={PLUGIN_ENTRY_POINT_GROUP: {_unscoped(plugin_id): package}},
        metadata_extra=f"Summary: Test plugin {plugin_id}\n",
    )


BROKEN_DEFECTS = ("no-wheel-file", "bad-wheel-version", "not-a-zip")


def broken_wheel(
    out_dir: Path,
    name: str = "kb-broken",
    version: str = "1.0.0",
    *,
    defect: str = "no-wheel-file",
) -> Path:
    """A correctly named `.whl` (so an index lists it) that `pip install` refuses.

    `defect` (pip 23's error in brackets):
    - `"no-wheel-file"`: the .dist-info has no WHEEL ["has an invalid wheel, could not
      read '…dist-info/WHEEL' file"];
    - `"bad-wheel-version"`: `Wheel-Version: 9.0` ["Wheel-Version (9.0) is not
      compatible with this version of pip"];
    - `"not-a-zip"`: plain bytes ["Wheel 'kb-broken' located at … is invalid."].
    pip does not check RECORD on install (a wrong hash or a garbage line installs, with
    at most a warning), so a corrupt RECORD is not offered as a defect.
    """
    if defect not in BROKEN_DEFECTS:
        raise ValueError(f"defect must be one of {BROKEN_DEFECTS}, not {defect!r}")
    _check_name_version(name, version)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / wheel_filename(name, version)
    if defect == "not-a-zip":
        target.write_bytes(b"this is not a zip archive\n" * 8)
        return target
    package = _package(name)
    entries = _wheel_entries(
        name,
        version,
        {f"{package}/__init__.py": '"""Never installed."""\n'},
        (),
        None,
        "",
        wheel_version="9.0",
        with_wheel_file=defect == "bad-wheel-version",
    )
    _write_zip(target, entries)
    return target


# --- the PEP 503 index -------------------------------------------------------------------


def _project_of(filename: str) -> str:
    return canonical_name(filename.split("-", 1)[0])


def _page(title: str, links: Iterable[tuple[str, str]]) -> bytes:
    body = "\n".join(
        f'    <a href="{html.escape(href)}">{html.escape(text)}</a><br/>' for href, text in links
    )
    return (
        "<!DOCTYPE html>\n<html>\n  <head>\n"
        '    <meta name="pypi:repository-version" content="1.0">\n'
        f"    <title>{html.escape(title)}</title>\n  </head>\n  <body>\n"
        f"{body}\n  </body>\n</html>\n"
    ).encode()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    index: SimpleIndex

    def handle_error(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        """Quiet: a client that hangs up mid-response is not a test failure."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def do_GET(self) -> None:
        self._answer(head=False)

    def _answer(self, *, head: bool) -> None:
        index = self.server.index
        path = unquote(urlsplit(self.path).path)
        index._count(path)
        status, headers, body = index._route(path)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)


class SimpleIndex:
    """A PEP 503 "simple" index of the `*.whl` files in `wheels_dir`, on 127.0.0.1.

    - `/simple/`: a link per project (PEP 503 normalized names);
    - `/simple/<project>/`: a link per wheel of that project, `…#sha256=<hex>`
      (`/simple/<project>` redirects there; an unknown project is a 404, which pip
      reports as "No matching distribution found");
    - `/files/<wheel>`: the wheel itself.

    The folder is listed on every request, so wheels written after `start()` are served.
    `requests` counts every request answered, `request_paths` lists their paths.
    Use as a context manager, or `start()` / `stop()` (both idempotent).
    """

    def __init__(self, wheels_dir: Path) -> None:
        self.wheels_dir = Path(wheels_dir)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._paths: list[str] = []

    # lifecycle

    def start(self) -> SimpleIndex:
        if self._server is None:
            server = _Server(("127.0.0.1", 0), _Handler)
            server.index = self
            self._server = server
            self._thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"SimpleIndex:{server.server_address[1]}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> SimpleIndex:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # addresses and counters

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("SimpleIndex is not started")
        return self._server.server_address[1]

    @property
    def root_url(self) -> str:
        """`http://127.0.0.1:<port>` (no trailing slash)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The index URL for pip's `--index-url`: `http://127.0.0.1:<port>/simple/`."""
        return f"{self.root_url}/simple/"

    @property
    def requests(self) -> int:
        with self._lock:
            return len(self._paths)

    @property
    def request_paths(self) -> list[str]:
        with self._lock:
            return list(self._paths)

    def _count(self, path: str) -> None:
        with self._lock:
            self._paths.append(path)

    # content

    def wheels(self) -> dict[str, list[Path]]:
        """Normalized project name → its wheel files (sorted by file name)."""
        projects: dict[str, list[Path]] = {}
        if self.wheels_dir.is_dir():
            for wheel in sorted(self.wheels_dir.glob("*.whl")):
                if wheel.is_file():
                    projects.setdefault(_project_of(wheel.name), []).append(wheel)
        return projects

    def _route(self, path: str) -> tuple[int, dict[str, str], bytes]:
        html_headers = {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-cache"}
        if path in ("/simple", "/simple/"):
            if path == "/simple":
                return self._redirect("/simple/")
            links = [(f"/simple/{project}/", project) for project in sorted(self.wheels())]
            return HTTPStatus.OK, html_headers, _page("Simple index", links)
        if path.startswith("/simple/"):
            rest = path[len("/simple/") :]
            project = canonical_name(rest.rstrip("/"))
            if "/" in rest.rstrip("/") or not project:
                return self._not_found()
            wheels = self.wheels().get(project)
            if not wheels:
                return self._not_found()
            if not rest.endswith("/"):
                return self._redirect(f"/simple/{project}/")
            links = [
                (
                    f"/files/{quote(wheel.name)}#sha256={hashlib.sha256(wheel.read_bytes()).hexdigest()}",
                    wheel.name,
                )
                for wheel in wheels
            ]
            return HTTPStatus.OK, html_headers, _page(f"Links for {project}", links)
        if path.startswith("/files/"):
            filename = path[len("/files/") :]
            wheel = self.wheels_dir / filename
            if "/" in filename or not filename.endswith(".whl") or not wheel.is_file():
                return self._not_found()
            return (
                HTTPStatus.OK,
                {"Content-Type": "application/octet-stream"},
                wheel.read_bytes(),
            )
        return self._not_found()

    @staticmethod
    def _redirect(location: str) -> tuple[int, dict[str, str], bytes]:
        return HTTPStatus.MOVED_PERMANENTLY, {"Location": location}, b""

    @staticmethod
    def _not_found() -> tuple[int, dict[str, str], bytes]:
        return HTTPStatus.NOT_FOUND, {"Content-Type": "text/plain"}, b"not found\n"


# --- pip, offline ----------------------------------------------------------------------

_PROXY_VARIABLES = {"http_proxy", "https_proxy", "all_proxy", "ftp_proxy"}
_NEEDS_INDEX = {"install", "download", "wheel", "index"}
_PIP_COMMANDS = _NEEDS_INDEX | {
    "uninstall",
    "freeze",
    "inspect",
    "list",
    "show",
    "check",
    "config",
    "search",
    "cache",
    "hash",
    "completion",
    "debug",
    "help",
}


def pip_env(base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """The environment for a pip subprocess that only sees the indexes on its command line.

    From `base` (default `os.environ`): drops every `PIP_*` variable and the proxy
    variables, then sets `PIP_CONFIG_FILE=/dev/null` (no pip.conf is read at all),
    `PIP_DISABLE_PIP_VERSION_CHECK=1` (no request to pypi.org),
    `PIP_NO_INPUT=1`, `PIP_NO_CACHE_DIR=1` and `NO_PROXY` for loopback; then `extra`.
    """
    source = os.environ if base is None else base
    env = {
        key: value
        for key, value in source.items()
        if not key.upper().startswith("PIP_") and key.lower() not in _PROXY_VARIABLES
    }
    env.update(
        PIP_CONFIG_FILE=os.devnull,
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
        PIP_NO_CACHE_DIR="1",
        NO_PROXY="127.0.0.1,localhost,::1",
        no_proxy="127.0.0.1,localhost,::1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    env.update(extra)
    return env


def _is_local(location: str) -> bool:
    parts = urlsplit(location)
    if parts.scheme in ("", "file"):
        return True  # a path or file: URL
    return parts.scheme in ("http", "https") and parts.hostname in LOOPBACK_HOSTS


def _option_values(args: Sequence[str], *names: str) -> list[str]:
    values = []
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                values.append(args[i + 1])
            elif name.startswith("--") and arg.startswith(name + "="):
                values.append(arg.split("=", 1)[1])
            elif not name.startswith("--") and arg.startswith(name) and len(arg) > len(name):
                values.append(arg[len(name) :])  # -ihttp://…
    return values


def check_offline(args: Sequence[str]) -> None:
    """Raise ValueError unless pip ARGS can only reach local indexes and files."""
    command = next((arg for arg in args if arg in _PIP_COMMANDS), "")
    if command not in _NEEDS_INDEX:
        return
    index_urls = _option_values(args, "--index-url", "-i")
    extra = _option_values(args, "--extra-index-url") + _option_values(args, "--find-links", "-f")
    if "--no-index" not in args and not index_urls:
        raise ValueError(f"pip {command} needs --no-index or a local --index-url: {list(args)}")
    remote = [url for url in index_urls + extra if not _is_local(url)]
    if remote:
        raise ValueError(f"pip would reach beyond this machine: {remote}")


def run_pip(
    *args: str,
    timeout: float = 180,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """`python -m pip ARGS` in a subprocess with `pip_env()` (plus `env`); never raises on
    a pip failure (check `.returncode`, `.stderr`). Refuses (ValueError) commands that
    could reach a non-local index, see `check_offline`."""
    check_offline(args)
    return subprocess.run(
        [sys.executable, "-m", "pip", *args],
        env=pip_env(**dict(env or {})),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# --- pytest fixtures ---------------------------------------------------------------------


@pytest.fixture
def simple_index(tmp_path: Path) -> Iterator[SimpleIndex]:
    """A started `SimpleIndex` over the empty folder `tmp_path / "wheels"` (write wheels
    into `simple_index.wheels_dir`), stopped after the test."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    with SimpleIndex(folder) as index:
        yield index


def wheel_contents(wheel: Path) -> dict[str, bytes]:
    """Archive path → bytes of every file in a wheel (handy in assertions)."""
    with zipfile.ZipFile(wheel) as archive:
        return {name: archive.read(name) for name in archive.namelist()}
