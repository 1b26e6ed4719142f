"""The marketplace's offline test infrastructure: wheels pip accepts (or refuses), a PEP 503
index on loopback, and pip kept away from every index but the test's own."""

from __future__ import annotations

import base64
import hashlib
import http.client
import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kblabs.plugins.discovery import installed_plugins
from kblabs.plugins.manifest import validate_manifest
from tests.marketplace_fixtures import (
    PLUGIN_ENTRY_POINT_GROUP,
    SimpleIndex,
    broken_wheel,
    build_wheel,
    canonical_name,
    check_offline,
    pip_env,
    plugin_manifest,
    plugin_wheel,
    run_pip,
    simple_index,  # noqa: F401 - the fixture
    wheel_contents,
    wheel_filename,
)


def get(index: SimpleIndex, path: str) -> tuple[int, dict[str, str], bytes]:
    """GET on the index without urllib (which would honour this machine's proxies)."""
    connection = http.client.HTTPConnection("127.0.0.1", index.port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def links(page: bytes) -> list[str]:
    return re.findall(r'href="([^"]+)"', page.decode())


def dist_in(target: Path, name: str) -> importlib.metadata.Distribution:
    found = [
        d
        for d in importlib.metadata.distributions(path=[str(target)])
        if canonical_name(d.metadata["Name"]) == canonical_name(name)
    ]
    assert len(found) == 1, found
    return found[0]


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stdout + result.stderr
    return result


# --- build_wheel ---------------------------------------------------------------------------


def test_wheel_has_metadata_wheel_entry_points_and_a_correct_record(tmp_path):
    wheel = build_wheel(
        tmp_path,
        "My.Pkg-Name",
        "1.2.3",
        files={"my_pkg/__init__.py": "X = 1\n", "my_pkg/data.bin": b"\x00\x01\xff"},
        requires=["kb-dep>=1", 'tomli; python_version < "3.11"'],
        entry_points={"console_scripts": {"my-pkg": "my_pkg:main"}, "kb_labs.x": {"a": "b"}},
        metadata_extra="Requires-Python: >=3.11",
    )
    assert wheel == tmp_path / "my_pkg_name-1.2.3-py3-none-any.whl"
    assert wheel_filename("My.Pkg-Name", "1.2.3") == wheel.name
    contents = wheel_contents(wheel)
    info = "my_pkg_name-1.2.3.dist-info"
    assert list(contents) == [
        "my_pkg/__init__.py",
        "my_pkg/data.bin",
        f"{info}/METADATA",
        f"{info}/WHEEL",
        f"{info}/entry_points.txt",
        f"{info}/RECORD",
    ]
    assert contents[f"{info}/METADATA"].decode() == (
        "Metadata-Version: 2.1\nName: My.Pkg-Name\nVersion: 1.2.3\n"
        'Requires-Dist: kb-dep>=1\nRequires-Dist: tomli; python_version < "3.11"\n'
        "Requires-Python: >=3.11\n"
    )
    assert contents[f"{info}/WHEEL"].decode().splitlines() == [
        "Wheel-Version: 1.0",
        "Generator: kblabs-tests (marketplace_fixtures)",
        "Root-Is-Purelib: true",
        "Tag: py3-none-any",
    ]
    assert (
        "[console_scripts]\nmy-pkg = my_pkg:main\n" in contents[f"{info}/entry_points.txt"].decode()
    )

    record = contents[f"{info}/RECORD"].decode().splitlines()
    assert record[-1] == f"{info}/RECORD,,"
    assert len(record) == len(contents)
    for line in record[:-1]:
        path, digest, size = line.split(",")
        data = contents[path]
        expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        assert digest == f"sha256={expected}" and "=" not in expected
        assert int(size) == len(data)


def test_wheels_are_reproducible_and_entry_points_optional(tmp_path):
    first = build_wheel(tmp_path / "a", "kb-x", "1.0", files={"kb_x.py": ""}).read_bytes()
    second = build_wheel(tmp_path / "b", "kb-x", "1.0", files={"kb_x.py": ""}).read_bytes()
    assert first == second
    assert "kb_x-1.0.dist-info/entry_points.txt" not in wheel_contents(
        tmp_path / "a" / "kb_x-1.0-py3-none-any.whl"
    )


@pytest.mark.parametrize(
    ("name", "version", "files"),
    [
        ("-bad", "1.0", {"a.py": ""}),
        ("kb-x", "1.0-1", {"a.py": ""}),
        ("kb-x", "1.0", {"/abs.py": ""}),
        ("kb-x", "1.0", {"../up.py": ""}),
        ("kb-x", "1.0", {"kb_x-1.0.dist-info/METADATA": ""}),
    ],
)
def test_bad_names_versions_and_paths_are_refused(tmp_path, name, version, files):
    with pytest.raises(ValueError):
        build_wheel(tmp_path, name, version, files=files)


def test_pip_installs_a_built_wheel_into_a_target(tmp_path):
    wheel = build_wheel(
        tmp_path / "wheels",
        "kb-thing",
        "0.3.0",
        files={"kb_thing/__init__.py": "VALUE = 42\n", "kb_thing/sub/mod.py": "Y = 2\n"},
        requires=["kb-dep>=1"],
        entry_points={"kb_labs.adapters": {"thing": "kb_thing:Adapter"}},
    )
    target = tmp_path / "target"
    # --no-deps: kb-dep is not on offer here (resolution is tested against the index)
    ok(run_pip("install", "--no-index", "--no-deps", "--target", str(target), str(wheel)))

    assert (target / "kb_thing" / "__init__.py").read_text() == "VALUE = 42\n"
    assert (target / "kb_thing" / "sub" / "mod.py").is_file()
    dist = dist_in(target, "kb-thing")
    assert dist.version == "0.3.0"
    assert dist.requires == ["kb-dep>=1"]
    (entry,) = dist.entry_points.select(group="kb_labs.adapters")
    assert (entry.name, entry.value) == ("thing", "kb_thing:Adapter")
    # pip rewrites RECORD with what it installed: every file listed is there
    installed = [line.split(",")[0] for line in dist.read_text("RECORD").splitlines()]
    assert "kb_thing/sub/mod.py" in installed
    assert all((target / path).exists() for path in installed)


# --- plugin_wheel --------------------------------------------------------------------------


def test_plugin_manifest_is_valid_and_shipped_in_the_wheel(tmp_path):
    manifest, problems = validate_manifest(plugin_manifest("kb-demo", "2.0.0", "@acme/demo"))
    assert problems == [] and manifest is not None
    assert manifest.provides() == ["cli-command", "rest-route"]
    route, command = manifest.rest.routes[0], manifest.cli.commands[0]
    assert (route.method, route.path, route.handler) == ("GET", "/hello", "kb_demo.handlers:hello")
    assert (command.group, command.id, command.handler) == ("demo", "hello", route.handler)

    wheel = plugin_wheel(tmp_path, "kb-demo", "2.0.0", "@acme/demo")
    assert wheel.name == "kb_demo-2.0.0-py3-none-any.whl"
    shipped = json.loads(wheel_contents(wheel)["kb_demo/kb.plugin.json"])
    assert shipped == plugin_manifest("kb-demo", "2.0.0", "@acme/demo")
    assert validate_manifest(shipped)[1] == []


def test_an_installed_plugin_wheel_is_discovered_and_its_handler_answers(tmp_path):
    wheel = plugin_wheel(
        tmp_path / "wheels",
        "kb-other-thing",
        "2.1.0",
        "@acme/other",
        route_answer="yo",
        requires=["kb-dep"],
    )
    target = tmp_path / "plugins"
    ok(run_pip("install", "--no-index", "--no-deps", "--target", str(target), str(wheel)))

    package = target / "kb_other_thing"
    assert sorted(p.name for p in package.iterdir() if p.name != "__pycache__") == [
        "__init__.py",
        "handlers.py",
        "kb.plugin.json",
    ]
    dist = dist_in(target, "kb-other-thing")
    (entry,) = dist.entry_points.select(group=PLUGIN_ENTRY_POINT_GROUP)
    assert (entry.name, entry.value) == ("other", "kb_other_thing")
    assert dist.requires == ["kb-dep"]
    (found,) = installed_plugins(target)
    assert found.package_dir == package.resolve() and found.integrity.startswith("sha256-")

    answer = subprocess.run(
        [
            sys.executable,
            "-c",
            "import asyncio, json, sys; sys.path.insert(0, sys.argv[1]);"
            "from kb_other_thing.handlers import hello;"
            "print(json.dumps(asyncio.run(hello(None, {}))))",
            str(target),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(answer.stdout) == {"answer": "yo", "version": "2.1.0"}


def test_a_broken_import_plugin_installs_but_its_handlers_raise(tmp_path):
    wheel = plugin_wheel(tmp_path / "wheels", broken_import=True)
    target = tmp_path / "plugins"
    ok(run_pip("install", "--no-index", "--target", str(target), str(wheel)))
    assert (
        validate_manifest(json.loads((target / "kb_demo" / "kb.plugin.json").read_text()))[1] == []
    )
    code = "import sys; sys.path.insert(0, sys.argv[1]); import kb_demo; import kb_demo.handlers"
    result = subprocess.run(
        [sys.executable, "-c", code, str(target)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "RuntimeError: kb-demo 1.0.0: broken on purpose" in result.stderr


# --- broken_wheel --------------------------------------------------------------------------


@pytest.mark.parametrize("defect", ["no-wheel-file", "bad-wheel-version", "not-a-zip"])
def test_pip_refuses_a_broken_wheel(tmp_path, defect):
    wheel = broken_wheel(tmp_path / "wheels", defect=defect)
    assert wheel.name == "kb_broken-1.0.0-py3-none-any.whl"
    target = tmp_path / "target"
    result = run_pip("install", "--no-index", "--target", str(target), str(wheel))
    assert result.returncode != 0
    assert "ERROR" in result.stderr
    assert not (target / "kb_broken").exists()


def test_broken_wheel_knows_its_defects(tmp_path):
    with pytest.raises(ValueError, match="defect"):
        broken_wheel(tmp_path, defect="corrupt-record")


# --- SimpleIndex ---------------------------------------------------------------------------


def test_index_pages_follow_pep_503_and_see_new_wheels(simple_index):  # noqa: F811
    index, wheels_dir = simple_index, simple_index.wheels_dir
    assert index.url == f"http://127.0.0.1:{index.port}/simple/"
    old = plugin_wheel(wheels_dir, version="1.0.0")
    build_wheel(wheels_dir, "Other_Pkg", "0.1", files={"other_pkg.py": ""})

    status, headers, page = get(index, "/simple/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert links(page) == ["/simple/kb-demo/", "/simple/other-pkg/"]

    status, _, page = get(index, "/simple/kb-demo/")
    sha = hashlib.sha256(old.read_bytes()).hexdigest()
    assert links(page) == [f"/files/{old.name}#sha256={sha}"]

    new = plugin_wheel(wheels_dir, version="1.1.0")  # after start: served at once
    _, _, page = get(index, "/simple/KB_Demo/")  # any spelling of the name
    assert [link.split("#")[0] for link in links(page)] == [
        f"/files/{old.name}",
        f"/files/{new.name}",
    ]

    status, _, body = get(index, f"/files/{new.name}")
    assert status == 200 and body == new.read_bytes()
    status, headers, _ = get(index, "/simple/kb-demo")
    assert status == 301 and headers["Location"] == "/simple/kb-demo/"
    for missing in ("/simple/nope/", "/files/nope.whl", "/files/../x.whl", "/elsewhere"):
        assert get(index, missing)[0] == 404, missing
    assert index.requests == 9
    assert index.request_paths[:2] == ["/simple/", "/simple/kb-demo/"]


def test_index_start_stop_and_context_manager(tmp_path):
    index = SimpleIndex(tmp_path)
    with pytest.raises(RuntimeError):
        index.url  # noqa: B018 - not started
    with index as started:
        assert started is index
        port = index.port
        assert get(index, "/simple/")[0] == 200
        assert links(get(index, "/simple/")[2]) == []  # an empty folder is an empty index
    index.stop()  # idempotent
    with pytest.raises(ConnectionRefusedError):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", "/simple/")


def test_pip_download_picks_the_pinned_version(tmp_path, simple_index):  # noqa: F811
    wheels_dir = simple_index.wheels_dir
    plugin_wheel(wheels_dir, version="1.0.0", route_answer="old")
    plugin_wheel(wheels_dir, version="1.1.0", route_answer="new")
    dest = tmp_path / "dest"
    ok(
        run_pip(
            "download",
            "--no-deps",
            "--index-url",
            simple_index.url,
            "--dest",
            str(dest),
            "kb-demo==1.0.0",
        )
    )
    assert [p.name for p in dest.iterdir()] == ["kb_demo-1.0.0-py3-none-any.whl"]
    assert "/files/kb_demo-1.0.0-py3-none-any.whl" in simple_index.request_paths
    assert "/files/kb_demo-1.1.0-py3-none-any.whl" not in simple_index.request_paths


def test_pip_install_from_the_index_takes_the_latest_and_its_dependencies(
    tmp_path,
    simple_index,  # noqa: F811
):
    wheels_dir = simple_index.wheels_dir
    plugin_wheel(wheels_dir, version="1.0.0", requires=["kb-dep>=1"])
    plugin_wheel(wheels_dir, version="1.1.0", requires=["kb-dep>=1"])
    build_wheel(wheels_dir, "kb-dep", "1.5", files={"kb_dep.py": "DEP = True\n"})
    target = tmp_path / "target"
    ok(run_pip("install", "--target", str(target), "--index-url", simple_index.url, "kb-demo"))
    assert dist_in(target, "kb-demo").version == "1.1.0"
    assert dist_in(target, "kb-dep").version == "1.5"
    assert (target / "kb_dep.py").read_text() == "DEP = True\n"
    assert '"version": "1.1.0"' in (target / "kb_demo" / "kb.plugin.json").read_text()


def test_pip_reports_an_unknown_project_and_refuses_a_broken_one(
    tmp_path,
    simple_index,  # noqa: F811
):
    wheels_dir = simple_index.wheels_dir
    plugin_wheel(wheels_dir)
    broken_wheel(wheels_dir, "kb-broken", "1.0.0")
    target = tmp_path / "target"
    missing = run_pip(
        "install", "--target", str(target), "--index-url", simple_index.url, "kb-nope"
    )
    assert missing.returncode != 0
    assert "No matching distribution found" in missing.stderr  # the marketplace's 404
    assert "/simple/kb-nope/" in simple_index.request_paths

    missing_version = run_pip(
        "download",
        "--no-deps",
        "--index-url",
        simple_index.url,
        "--dest",
        str(tmp_path / "d"),
        "kb-demo==9.9.9",
    )
    assert missing_version.returncode != 0
    assert "No matching distribution found" in missing_version.stderr

    broken = run_pip(
        "install", "--target", str(target), "--index-url", simple_index.url, "kb-broken"
    )
    assert broken.returncode != 0 and "invalid wheel" in broken.stderr
    assert not (target / "kb_broken").exists()


# --- pip, offline ----------------------------------------------------------------------


def test_pip_env_sees_no_machine_configuration():
    env = pip_env(
        {
            "PIP_FIND_LINKS": "/opt/wheels",
            "pip_index_url": "https://x",
            "HTTPS_PROXY": "p",
            "http_proxy": "p",
            "HOME": "/home/u",
        },
        PIP_TIMEOUT="5",
    )
    assert env["HOME"] == "/home/u" and env["PIP_TIMEOUT"] == "5"
    assert env["PIP_CONFIG_FILE"] == "/dev/null"
    assert env["PIP_DISABLE_PIP_VERSION_CHECK"] == "1"
    for gone in ("PIP_FIND_LINKS", "pip_index_url", "HTTPS_PROXY", "http_proxy"):
        assert gone not in env
    # what pip itself reads with that environment: no file and no variable
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        env=pip_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert [line for line in listed.stdout.splitlines() if "index" in line or "find" in line] == []


@pytest.mark.parametrize(
    "args",
    [
        ("install", "kb-demo"),
        ("install", "--index-url", "https://pypi.org/simple", "kb-demo"),
        ("download", "-ihttps://pypi.org/simple", "kb-demo"),
        ("install", "--no-index", "--extra-index-url=https://pypi.org/simple", "kb-demo"),
        ("install", "--no-index", "-f", "https://example.com/wheels", "kb-demo"),
        ("--verbose", "wheel", "kb-demo"),
    ],
)
def test_run_pip_refuses_anything_that_could_reach_the_internet(args):
    with pytest.raises(ValueError):
        run_pip(*args)


@pytest.mark.parametrize(
    "args",
    [
        ("install", "--no-index", "x.whl"),
        ("install", "--index-url", "http://127.0.0.1:9/simple/", "kb-demo"),
        ("download", "--index-url=http://localhost:9/simple/", "kb-demo"),
        ("install", "--no-index", "--find-links", "/opt/wheels", "kb-demo"),
        ("uninstall", "-y", "wheel"),
        ("--version",),
    ],
)
def test_local_pip_commands_pass_the_guard(args):
    check_offline(args)
