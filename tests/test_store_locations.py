"""Store locations on the command line: a path is a path (``::`` included), a ``memory://`` store
is refused (it would end with the command), and what a remote filesystem raises (no
credentials, no connection) is one line naming the URL and the fix, before any network call."""

from __future__ import annotations

import socket

import pytest

from ensemble_engine.errors import StoreError
from ensemble_engine.location import remote_error, store_location
from ensemble_engine.store import open_store

GRAPH = """\
version: 1
store: s3://ee-no-credentials/ee.zarr
fit: val
apply: test
nodes:
  soft:
    combiner: soft_vote
    inputs: ["m*"]
output: soft
"""
AWS_SECRETS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
)


def test_a_path_with_double_colons_is_a_folder(digits_dir, tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = run_cli("store", "init", "a::b.zarr", "--data", digits_dir)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "a::b.zarr" / "zarr.json").is_file()
    assert open_store("a::b.zarr", "r").split("val").n > 0
    for args in (("ls", "a::b.zarr", "--json"), ("validate", "a::b.zarr")):
        res = run_cli(*args)
        assert res.exit_code == 0, res.output


def test_memory_stores_are_refused_on_the_command_line_only(run_cli):
    res = run_cli("ls", "memory://cli/ee.zarr")
    assert res.exit_code == 2
    assert "lives in one process's memory and is gone when this command ends" in res.stderr
    st = open_store("memory://api/ee.zarr", "w")  # the Python API keeps them
    st.set_classes(["a", "b"])
    assert open_store("memory://api/ee.zarr", "r").classes == ["a", "b"]
    assert store_location("memory://api/ee.zarr/") == "memory://api/ee.zarr"


@pytest.fixture
def no_network(monkeypatch) -> list[str]:
    """Every attempt to resolve or connect is recorded and refused."""
    attempts: list[str] = []

    def refuse(name: str):
        def guard(*args, **kwargs):
            attempts.append(f"{name}{args[:2]}")
            raise OSError(f"network access is disabled in this test ({name})")

        return guard

    for name in ("create_connection", "getaddrinfo", "gethostbyname"):
        monkeypatch.setattr(socket, name, refuse(name))
    monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
    return attempts


def test_s3_without_credentials_is_one_line_before_any_network_call(
    tmp_path, run_cli, monkeypatch, no_network
):
    s3fs = pytest.importorskip("s3fs")
    nothing = tmp_path / "none"
    for key in AWS_SECRETS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(nothing))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(nothing))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # botocore's last resort, a request
    (tmp_path / "graph.yaml").write_text(GRAPH, "utf-8")
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        for args in (
            ("combine", tmp_path / "graph.yaml"),
            ("ls", "s3://ee-no-credentials/ee.zarr"),
            ("store", "init", "s3://ee-no-credentials/ee.zarr"),
            ("validate", "s3://ee-no-credentials/ee.zarr"),
        ):
            res = run_cli(*args)
            assert "Traceback" not in res.output, res.output
            assert res.exit_code == 2, (args, res.output)
            [line] = res.stderr.splitlines()
            assert line.startswith(
                "Error: cannot reach store s3://ee-no-credentials/ee.zarr (NoCredentialsError"
            ), line
            assert "set AWS credentials" in line and "AWS_ENDPOINT_URL_S3" in line
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    assert no_network == []


def test_remote_errors_name_the_fix():
    exceptions = pytest.importorskip("botocore.exceptions")
    url = "s3://b/ee.zarr"
    cases = [
        (exceptions.NoCredentialsError(), "set AWS credentials"),
        (exceptions.PartialCredentialsError(provider="env", cred_var="x"), "set AWS credentials"),
        (exceptions.EndpointConnectionError(endpoint_url="http://h"), "check the network"),
        (ConnectionRefusedError(111, "Connection refused"), "check the network"),
        (PermissionError(13, "Forbidden"), "that the credentials may use it"),
        (
            exceptions.ClientError({"Error": {"Code": "403"}}, "HeadObject"),
            "that the credentials may use it",
        ),
        (FileNotFoundError(2, "no bucket"), "that the bucket exists"),
    ]
    for exc, fix in cases:
        err = remote_error(url, exc)
        assert isinstance(err, StoreError), exc
        assert str(err).startswith(f"cannot reach store {url} ({type(exc).__name__}"), str(err)
        assert fix in str(err), str(err)
    bug = ValueError("not a remote error")
    assert remote_error(url, bug) is bug  # a bug keeps its traceback
