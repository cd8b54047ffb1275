"""The one-certificate CA file for Prefect clients of a plain-HTTP API: where the rule applies,
the warm runner's use of it for each forked run, and the project's worker's use of it for its
own clients and the runs it starts."""

from __future__ import annotations

import json
import ssl
import sys
from pathlib import Path
from typing import Any

import certifi
import pytest
from prefect import flow, get_client
from prefect.settings import (
    PREFECT_API_SSL_CERT_FILE,
    PREFECT_API_TLS_INSECURE_SKIP_VERIFY,
    PREFECT_API_URL,
    get_current_settings,
    temporary_settings,
)
from prefect.workers.process import ProcessJobConfiguration

from entrypoints.flow_worker import (
    WORKER_CA_NAME,
    EventDrivenProcessWorker,
    plain_http_ca_settings,
)
from genjobs.plain_http_ca import spare_ca_bundle_reads, write_plain_http_ca_file

NAME = "plain-http-ca.pem"


def assert_one_public_root(ca_file: Path) -> None:
    pem = ca_file.read_text()
    assert pem.count("-----BEGIN CERTIFICATE-----") == 1
    assert pem in Path(certifi.where()).read_text()
    ssl.create_default_context(cafile=str(ca_file))  # loads as a CA file


@pytest.mark.parametrize(
    ("environ", "spared"),
    [
        ({"PREFECT_API_URL": "http://prefect.internal:4200/api"}, True),
        ({"PREFECT_API_URL": "HTTP://127.0.0.1:4200/api"}, True),
        # TLS to the API: the real bundle stays
        ({"PREFECT_API_URL": "https://prefect.internal/api"}, False),
        ({"PREFECT_API_URL": "https://api.prefect.cloud/api/accounts/a/workspaces/w"}, False),
        # what an operator set stays
        (
            {"PREFECT_API_URL": "http://h/api", "PREFECT_API_SSL_CERT_FILE": "/etc/ca.pem"},
            False,
        ),
        (
            {"PREFECT_API_URL": "http://h/api", "PREFECT_API_TLS_INSECURE_SKIP_VERIFY": "true"},
            False,
        ),
        ({}, False),  # no API URL: an ephemeral API, left alone
    ],
)
def test_only_a_plain_http_api_gets_the_small_ca_file(
    tmp_path: Path, environ: dict[str, str], spared: bool
) -> None:
    ca_file = write_plain_http_ca_file(tmp_path, NAME)
    assert ca_file == tmp_path / NAME
    assert_one_public_root(ca_file)
    before = dict(environ)
    assert spare_ca_bundle_reads(environ, ca_file) is spared
    if spared:
        assert environ == {**before, "PREFECT_API_SSL_CERT_FILE": str(ca_file)}
    else:
        assert environ == before


def test_a_ca_file_that_cannot_be_written_is_none_and_leaves_nothing_behind(
    tmp_path: Path,
) -> None:
    assert write_plain_http_ca_file(tmp_path / "missing", NAME) is None
    assert list(tmp_path.iterdir()) == []


def test_without_its_file_the_run_keeps_the_full_bundle(tmp_path: Path) -> None:
    environ = {"PREFECT_API_URL": "http://h/api"}
    assert not spare_ca_bundle_reads(environ, None)
    assert not spare_ca_bundle_reads(environ, tmp_path / "gone.pem")
    assert environ == {"PREFECT_API_URL": "http://h/api"}


def test_the_worker_reads_the_small_file_for_a_plain_http_api_while_it_runs(
    tmp_path: Path,
) -> None:
    # Prefect's own default (SSL_CERT_FILE where set, else certifi's bundle) is what it spares
    with temporary_settings(updates={PREFECT_API_URL: "http://prefect.internal:4200/api"}):
        before = get_current_settings().api.ssl_cert_file
        with plain_http_ca_settings(tmp_path) as ca_file:
            assert ca_file == tmp_path / WORKER_CA_NAME
            assert get_current_settings().api.ssl_cert_file == str(ca_file)
            assert_one_public_root(ca_file)
        assert get_current_settings().api.ssl_cert_file == before
    # the runs the worker started inherit the setting and may outlive it: the file stays
    assert_one_public_root(ca_file)


@pytest.mark.parametrize(
    "updates",
    [
        {PREFECT_API_URL: "https://prefect.internal/api"},
        {PREFECT_API_URL: "http://h/api", PREFECT_API_SSL_CERT_FILE: "/etc/ca.pem"},
        {PREFECT_API_URL: "http://h/api", PREFECT_API_TLS_INSECURE_SKIP_VERIFY: True},
    ],
    ids=["https", "operator-ca-file", "skip-verify"],
)
def test_otherwise_the_workers_settings_stay(tmp_path: Path, updates: dict[Any, Any]) -> None:
    with temporary_settings(updates=updates):
        before = get_current_settings().api.model_dump()
        with plain_http_ca_settings(tmp_path) as ca_file:
            assert ca_file is None
            assert get_current_settings().api.model_dump() == before
    assert list(tmp_path.iterdir()) == []


ENV_REPORT_SCRIPT = (
    "import json, os, sys; open(sys.argv[1], 'w').write(json.dumps(dict(os.environ)))"
)


@flow(name="ca-file-probe")
def probe() -> None:
    """Never runs: its flow run is what the worker starts a process for."""


@pytest.mark.usefixtures("prefect_api")
async def test_the_worker_and_its_runs_read_the_small_file_which_outlives_the_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("GENJOBS_HOME", str(home))
    report = tmp_path / "environment.json"
    async with get_client() as client:
        flow_run = await client.create_flow_run(probe)
    async with EventDrivenProcessWorker(
        work_pool_name="ca-file-probe-pool", create_pool_if_not_found=True
    ) as worker:
        assert worker.ca_file == home / WORKER_CA_NAME  # the test API is plain HTTP
        assert get_current_settings().api.ssl_cert_file == str(worker.ca_file)
        configuration = ProcessJobConfiguration(
            command=f'{sys.executable} -c "{ENV_REPORT_SCRIPT}" {report}', working_dir=tmp_path
        )
        configuration.prepare_for_flow_run(flow_run)
        result = await worker.run(flow_run, configuration)
    assert result.status_code == 0
    environment = json.loads(report.read_text())
    assert environment["PREFECT__FLOW_RUN_ID"] == str(flow_run.id)
    assert environment["PREFECT_API_SSL_CERT_FILE"] == str(home / WORKER_CA_NAME)
    assert worker.ca_file is None
    assert get_current_settings().api.ssl_cert_file != str(home / WORKER_CA_NAME)
    assert_one_public_root(home / WORKER_CA_NAME)


@pytest.mark.usefixtures("prefect_api")
async def test_without_a_usable_home_the_worker_keeps_the_bundle_and_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    not_a_folder = tmp_path / "home"
    not_a_folder.write_text("a file where GENJOBS_HOME should be")
    monkeypatch.setenv("GENJOBS_HOME", str(not_a_folder))
    before = get_current_settings().api.ssl_cert_file
    async with EventDrivenProcessWorker(
        work_pool_name="ca-file-probe-pool", create_pool_if_not_found=True
    ) as worker:
        assert worker.ca_file is None
        assert get_current_settings().api.ssl_cert_file == before
    assert not_a_folder.read_text() == "a file where GENJOBS_HOME should be"
    assert [path.name for path in tmp_path.iterdir()] == ["home"]  # no staging file left
