"""`mind` end to end: the built-in plugin's REST routes on the real app, on the embedded
adapters (hashed embeddings, Qdrant local mode in the project's data dir), and its CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest

from tests.conftest import AppClient, base_env, run_cli, running_app
from tests.integration.test_agent import agents as agents  # the fixture
from tests.mind_repo import generate
from tests.openai_server import OpenAIServer
from tests.openai_server import openai_server as openai_server  # the fixture

pytestmark = pytest.mark.anyio

MIND = "/api/v1/plugins/@kb-labs/mind"


async def index(api: AppClient, **body) -> httpx.Response:
    return await api.client.post(f"{MIND}/index", json=body, headers=api.auth, timeout=600)


async def query(api: AppClient, q: str, **params) -> httpx.Response:
    return await api.client.get(f"{MIND}/query", params={"q": q, **params}, headers=api.auth)


async def status(api: AppClient) -> httpx.Response:
    return await api.client.get(f"{MIND}/status", headers=api.auth)


def data(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()["data"]


def top_paths(result: dict, n: int = 3) -> list[str]:
    return [hit["path"] for hit in result["hits"][:n]]


async def test_a_generated_repository_of_2000_files(app_client: AppClient, project: Path):
    names = generate(project / "src", 2000)
    report = data(await index(app_client, path="src", jobId="first"))
    assert report["files"] == 2000 and report["filesEmbedded"] == 2000
    assert report["chunks"] == report["chunksEmbedded"] >= 2000

    progress = data(
        await app_client.client.get(
            f"{MIND}/index/progress", params={"jobId": "first"}, headers=app_client.auth
        )
    )
    assert progress["state"] == "done" and progress["done"] == progress["total"] == 2000

    for path in ("pkg3/mod_123.py", "pkg0/mod_1500.py", "pkg19/mod_1999.py"):
        found = data(await query(app_client, names[path]))
        assert path in top_paths(found), (names[path], found["hits"][:3])
        assert any(names[path] in hit["snippet"] for hit in found["hits"][:3])

    # change one file: only it is embedded again
    changed = project / "src" / "pkg5/mod_5.py"
    changed.write_text(changed.read_text() + "\ndef brand_new_function_name():\n    return 1\n")
    again = data(await index(app_client, path="src"))
    assert again["filesEmbedded"] == 1 and again["unchanged"] == 1999
    assert 1 <= again["chunksEmbedded"] <= 3  # that file's chunks, nothing else
    assert "pkg5/mod_5.py" in top_paths(data(await query(app_client, "brand_new_function_name")))

    # delete one: its chunks leave the store
    vectors = app_client.app.state.runtime.adapters.get("vectorStore")
    doomed = "pkg7/mod_7.py"
    chunk_ids = [f"{doomed}#{n}" for n in range(3)]
    assert await vectors.get(chunk_ids, collection="mind-default")
    (project / "src" / doomed).unlink()
    after = data(await index(app_client, path="src"))
    assert after["filesRemoved"] == 1 and after["removed"] == [doomed]
    assert after["filesEmbedded"] == 0 and after["chunksEmbedded"] == 0
    assert await vectors.get(chunk_ids, collection="mind-default") == []
    assert await vectors.count(collection="mind-default") == after["chunks"]
    assert doomed not in top_paths(data(await query(app_client, names[doomed])), 10)


async def test_gitignore_binaries_and_large_files_are_left_out(app_client: AppClient, project):
    src = project / "src"
    (src / "build").mkdir(parents=True)
    (src / "keep").mkdir()
    (src / ".gitignore").write_text("build/\n*.log\n!important.log\n/keep/secret_*.py\n")
    (src / "build" / "generated.py").write_text("def generated_thing():\n    pass\n")
    (src / "debug.log").write_text("noise_in_logs\n")
    (src / "important.log").write_text("important_log_line\n")
    (src / "keep" / "secret_keys.py").write_text("def secret_function():\n    pass\n")
    (src / "keep" / "public.py").write_text("def public_function():\n    pass\n")
    (src / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0binary")
    (src / "huge.py").write_text("x = 1\n" * 200_000)  # 1.2 MB, over the 512 KiB default
    (src / ".git").mkdir()
    (src / ".git" / "config").write_text("[core]\n")

    report = data(await index(app_client, path="src"))
    status = data(await app_client.client.get(f"{MIND}/status", headers=app_client.auth))
    assert status["exists"] and status["files"] == report["files"]
    manifest = json.loads(
        (project / ".kb" / "storage" / "mind" / "default" / "default.json").read_text()
    )
    assert sorted(manifest["files"]) == [".gitignore", "important.log", "keep/public.py"]
    assert report["skippedBinary"] == 1 and report["skippedLarge"] == 1
    assert report["ignored"] == 3  # build/, debug.log, keep/secret_keys.py


async def test_bad_requests_name_the_problem(app_client: AppClient, project: Path):
    async def error(response: httpx.Response, status: int, code: str) -> str:
        assert response.status_code == status, response.text
        body = response.json()
        assert body["error"]["code"] == code, body
        return body["error"]["message"]

    message = await error(await query(app_client, "anything"), 404, "MIND_INDEX_NOT_FOUND")
    assert "mind index" in message
    await error(await query(app_client, "  "), 400, "MIND_QUERY_EMPTY")
    await error(await query(app_client, "x", limit="many"), 400, "VALIDATION_ERROR")
    await error(await index(app_client, path="../elsewhere"), 400, "MIND_PATH_OUTSIDE_PROJECT")
    await error(await index(app_client, path="nope"), 404, "MIND_PATH_NOT_FOUND")
    await error(await index(app_client, index="bad name!"), 400, "MIND_INDEX_NAME_INVALID")
    await error(await index(app_client, maxFileBytes=0), 400, "VALIDATION_ERROR")
    missing = await app_client.client.get(
        f"{MIND}/index/progress", params={"jobId": "never"}, headers=app_client.auth
    )
    await error(missing, 404, "MIND_JOB_NOT_FOUND")


async def test_the_index_survives_a_restart(project: Path):
    names = generate(project / "src", 30)
    for attempt in ("first", "after restart"):
        async with running_app(project) as api:
            if attempt == "first":
                assert data(await index(api, path="src"))["filesEmbedded"] == 30
                continue
            found = data(await query(api, names["pkg4/mod_4.py"]))
            assert "pkg4/mod_4.py" in top_paths(found)
            report = data(await index(api, path="src"))
            assert report["filesEmbedded"] == 0 and report["unchanged"] == 30


async def test_switching_embeddings_rebuilds_even_at_the_same_dimensions(
    project: Path, openai_server: OpenAIServer
):
    generate(project / "src", 12)
    async with running_app(project) as api:  # the default: hashed, 384 dimensions
        first = data(await index(api, path="src"))
        assert first["filesEmbedded"] == 12 and first["rebuiltBecause"] is None
    remote = {"apiKey": "sk-mind", "baseUrl": openai_server.url, "dimensions": 384}
    config = {"platform": {"adapters": {"embeddings": "openai"}, "adapterOptions": {}}}
    config["platform"]["adapterOptions"]["embeddings"] = remote
    async with running_app(project, config) as api:
        switched = data(await index(api, path="src"))
        assert switched["filesEmbedded"] == 12 and switched["unchanged"] == 0
        assert "embeddings adapter changed" in switched["rebuiltBecause"]
        assert data(await status(api))["chunks"] == switched["chunks"]
        again = data(await index(api, path="src"))
        assert again["filesEmbedded"] == 0 and again["rebuiltBecause"] is None
        rebuilt = data(await index(api, path="src", rebuild=True))
        assert rebuilt["rebuiltBecause"] == "asked to rebuild"
        # a vector store that lost the vectors (another store, say) is noticed too
        await api.app.state.runtime.adapters.get("vectorStore").drop_collection(
            collection="mind-default"
        )
        refilled = data(await index(api, path="src"))
        assert "holds none of its vectors" in refilled["rebuiltBecause"]
        assert refilled["filesEmbedded"] == 12


async def test_mind_can_be_switched_off_and_on(app_client: AppClient, project: Path):
    (project / "src").mkdir()
    switch = "/api/v1/plugins/{}"
    off = await app_client.client.post(
        switch.format("disable"), json={"pluginId": "@kb-labs/mind"}, headers=app_client.auth
    )
    assert off.status_code == 200, off.text
    assert (await index(app_client, path="src")).status_code == 404
    on = await app_client.client.post(
        switch.format("enable"), json={"pluginId": "@kb-labs/mind"}, headers=app_client.auth
    )
    assert on.status_code == 200, on.text
    assert (await index(app_client, path="src")).status_code == 200
    lock = json.loads((project / ".kb" / "marketplace.lock").read_text())
    assert "@kb-labs/mind" not in lock.get("installed", {})  # on again: nothing remembered


@pytest.mark.live
def test_cli_works_alone_and_through_the_server(project: Path, live_server_factory):
    names = generate(project / "src", 40)
    env = base_env(project)
    # no server yet: the CLI does the work itself
    alone = run_cli("mind", "index", "src", project=project, env=env, timeout=120)
    assert alone.returncode == 0, alone.stderr
    assert "no server answers" in alone.stderr and "40 files" in alone.stdout
    found = run_cli("--json", "mind", "query", names["pkg1/mod_21.py"], project=project, env=env)
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)["result"]["hits"]
    assert "pkg1/mod_21.py" in [hit["path"] for hit in hits[:3]]

    server = live_server_factory().start()
    env = {**env, "KB_GATEWAY_URL": server.url}
    (project / "src" / "pkg0" / "mod_0.py").write_text("def only_here_now():\n    pass\n")
    through = run_cli("--json", "mind", "index", "src", project=project, env=env, timeout=120)
    assert through.returncode == 0, through.stderr
    report = json.loads(through.stdout)["result"]
    assert report["filesEmbedded"] == 1 and report["unchanged"] == 39
    assert "no server answers" not in through.stderr
    shown = run_cli("mind", "query", "only_here_now", project=project, env=env)
    assert shown.returncode == 0 and "pkg0/mod_0.py" in shown.stdout, shown.stderr
    outside = run_cli("mind", "index", str(Path(os.sep)), project=project, env=env)
    assert outside.returncode != 0 and "outside the project" in outside.stderr


@pytest.mark.live
def test_a_host_agents_workspace_is_indexed_through_the_gateway(
    project: Path, tmp_path: Path, live_server_factory, agents
):
    from tests.integration.test_agent import (
        SERVER_ENV,
        agent_env,
        register,
        start_agent,
        wait_online,
    )

    laptop = tmp_path / "laptop"
    names = generate(laptop / "app", 25)
    (laptop / ".gitignore").write_text("app/pkg1/\n")
    server = live_server_factory(**SERVER_ENV).start()
    env = agent_env(project, tmp_path / "agent.json")
    host_id = register(server, project, env, laptop)["hostId"]
    wait_online(server, host_id, start_agent(agents, project, env, tmp_path))

    url = f"{server.url}{MIND}"
    indexed = httpx.post(
        f"{url}/index",
        json={"hostId": host_id, "index": "laptop"},
        headers=server.auth,
        timeout=120,
    )
    assert indexed.status_code == 200, indexed.text
    report = indexed.json()["data"]
    assert report["root"] == f"host:{host_id}:."
    in_pkg1 = [p for p in names if p.startswith("pkg1/")]
    assert report["files"] == 1 + 25 - len(in_pkg1)  # .gitignore, and pkg1/ left out
    assert report["ignored"] == len(in_pkg1)
    found = httpx.get(
        f"{url}/query",
        params={"q": names["pkg2/mod_2.py"], "index": "laptop"},
        headers=server.auth,
    ).json()["data"]
    assert "app/pkg2/mod_2.py" in top_paths(found)
    assert not (project / "app").exists()  # nothing of the laptop's was copied here

    unknown = httpx.post(
        f"{url}/index", json={"hostId": "host-nope", "index": "laptop"}, headers=server.auth
    )
    assert unknown.status_code == 503 and unknown.json()["error"]["code"] == "HOST_NOT_CONNECTED"


async def test_the_workflow_handlers_index_and_query(app_client: AppClient, project: Path):
    import asyncio
    from urllib.parse import quote

    names = generate(project / "src", 10)

    async def run(workflow: str, inputs: dict) -> dict:
        started = await app_client.client.post(
            f"/api/v1/workflows/{quote(workflow, safe='')}/runs",
            json={"inputs": inputs},
            headers=app_client.auth,
        )
        assert started.status_code in (200, 201, 202), started.text
        run_id = started.json()["data"]["runId"]
        for _ in range(300):
            got = await app_client.client.get(f"/api/v1/runs/{run_id}", headers=app_client.auth)
            run = got.json()["data"]["run"]
            if run["status"] in ("success", "failed", "dlq", "cancelled"):
                return run
            await asyncio.sleep(0.05)
        raise AssertionError(f"run {run_id} did not finish")

    indexed = await run("@kb-labs/mind/index", {"path": "src", "index": "wf"})
    assert indexed["status"] == "success", indexed
    step = indexed["jobs"][0]["steps"][0]
    assert step["outputs"]["files"] == 10 and step["outputs"]["index"] == "wf"
    queried = await run("@kb-labs/mind/query", {"q": names["pkg3/mod_3.py"], "index": "wf"})
    assert queried["status"] == "success", queried
    hits = queried["jobs"][0]["steps"][0]["outputs"]["hits"]
    assert hits[0]["path"] == "pkg3/mod_3.py"
