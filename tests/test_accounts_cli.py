"""`inferegator users ...` and `inferegator keys ...`: the real binary on a temporary store."""

import json
import os
import subprocess
import sys

import pytest
import requests

from inferegator.store.store import Store
from tests.support.processes import GatewayServer

INFEREGATOR = os.path.join(os.path.dirname(sys.executable), "inferegator")
MODEL = "acme/sim-chat"
PASSWORD = "correct horse battery"


def write_config(path, storage: str, backend_url: str = "http://127.0.0.1:9") -> str:
    path.write_text(f"storage: {storage}\nauth:\n  key_cache_ttl_s: 0\nmodels:\n"
                    f"  - id: {MODEL}\n    backends: [{{type: sglang, url: '{backend_url}', "
                    "model: sim-model}]\n")
    return str(path)


@pytest.fixture
def storage(tmp_path):
    return f"sqlite:///{tmp_path}/cli.db"


@pytest.fixture
def cli(tmp_path, storage):
    """Run `inferegator ARGS --config <a temp config on a temp SQLite store>`."""
    config = write_config(tmp_path / "cli.yaml", storage)

    def run(*args, stdin=None, config=config):
        result = subprocess.run([INFEREGATOR, *args, "--config", config], input=stdin,
                                capture_output=True, text=True, timeout=60)
        assert "Traceback" not in result.stderr, result.stderr
        return result

    return run


def as_json(result):
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def refused(result, *words):
    assert result.returncode == 2, result.stdout
    assert result.stderr.startswith("inferegator: ")
    for word in words:
        assert word in result.stderr, result.stderr
    return result.stderr


def test_users_create_and_list_as_table_and_json(cli):
    table = cli("users", "create", "--email", "Ann@Example.com", "--password", PASSWORD,
                "--admin")
    assert table.returncode == 0, table.stderr
    assert table.stdout.split()[:5] == ["ID", "EMAIL", "ROLE", "CREATED", "DISABLED"]
    assert "ann@example.com" in table.stdout and "admin" in table.stdout
    bob = as_json(cli("users", "create", "--email", "bob@example.com", "--password", PASSWORD,
                      "--json"))
    assert bob["email"] == "bob@example.com" and bob["role"] == "user"
    assert "password" not in json.dumps(bob) and "hash" not in json.dumps(bob)
    users = as_json(cli("users", "list", "--json"))
    assert [u["email"] for u in users] == ["ann@example.com", "bob@example.com"]
    listed = cli("users", "list")
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 3


def test_users_create_reads_one_line_of_stdin_when_no_password_is_given(cli, storage):
    user = as_json(cli("users", "create", "--email", "cat@example.com", "--json",
                       stdin=PASSWORD + "\nignored\n"))
    store = Store(storage)
    try:
        _, stored = store.accounts.user_password_hash("cat@example.com")
    finally:
        store.close()
    from inferegator.store.secrets import verify_password

    assert user["email"] == "cat@example.com" and verify_password(PASSWORD, stored)
    refused(cli("users", "create", "--email", "dan@example.com", stdin=""), "password")


@pytest.mark.parametrize("args,words", [
    (["--email", "not-an-email", "--password", PASSWORD], ["--email"]),
    (["--email", "eve@example.com", "--password", "short"], ["--password", "12"]),
])
def test_users_create_refuses_bad_input(cli, args, words):
    refused(cli("users", "create", *args), *words)
    assert as_json(cli("users", "list", "--json")) == []


def test_users_create_refuses_a_duplicate_email(cli):
    assert cli("users", "create", "--email", "fay@example.com", "--password", PASSWORD) \
        .returncode == 0
    refused(cli("users", "create", "--email", "FAY@example.com", "--password", PASSWORD),
            "exists already")


def test_keys_create_prints_the_secret_once_and_it_is_the_stored_key(cli, storage):
    user = as_json(cli("users", "create", "--email", "gus@example.com", "--password",
                       PASSWORD, "--json"))
    result = cli("keys", "create", "--user", "gus@example.com", "--name", "ci", "--rpm", "30",
                 "--tpm", "9000", "--budget", "12.5", "--models", MODEL)
    assert result.returncode == 0, result.stderr
    secret, details = result.stdout.splitlines()
    key_id = details.split()[1]
    assert secret.startswith("sk-inf-") and key_id.startswith("key_")
    store = Store(storage)
    try:
        record = store.accounts.find_key(secret)
    finally:
        store.close()
    assert record.id == key_id and record.user_id == user["id"]
    assert (record.requests_per_minute, record.tokens_per_minute, record.monthly_budget_usd,
            record.allowed_models) == (30, 9000, 12.5, (MODEL,))

    listing = cli("keys", "list")
    assert secret not in listing.stdout and key_id in listing.stdout
    assert "rpm=30" in listing.stdout and f"models={MODEL}" in listing.stdout
    keys = as_json(cli("keys", "list", "--user", user["id"], "--json"))
    assert [k["id"] for k in keys] == [key_id] and keys[0]["name"] == "ci"
    assert keys[0]["limits"]["monthly_budget_usd"] == 12.5


def test_keys_create_json_has_the_secret_and_the_record(cli):
    cli("users", "create", "--email", "hal@example.com", "--password", PASSWORD)
    created = as_json(cli("keys", "create", "--user", "hal@example.com", "--json"))
    assert created["key"].startswith("sk-inf-") and created["id"].startswith("key_")
    assert created["limits"]["allowed_models"] is None and created["revoked"] is False


@pytest.mark.parametrize("args,words", [
    (["--user", "nobody@example.com"], ["nobody@example.com"]),
    (["--user", "ivy@example.com", "--rpm", "-1"], ["--rpm"]),
    (["--user", "ivy@example.com", "--tpm", "0"], ["--tpm"]),
    (["--user", "ivy@example.com", "--budget", "-3"], ["--budget"]),
    (["--user", "ivy@example.com", "--budget", "nan"], ["--budget"]),
    (["--user", "ivy@example.com", "--models", f"{MODEL},no/such-model"], ["no/such-model",
                                                                           MODEL]),
    (["--user", "ivy@example.com", "--models", ","], ["--models"]),
])
def test_keys_create_refuses_bad_input(cli, args, words):
    cli("users", "create", "--email", "ivy@example.com", "--password", PASSWORD)
    refused(cli("keys", "create", *args), *words)
    assert as_json(cli("keys", "list", "--json")) == []


def test_keys_revoke_and_unknown_keys(cli):
    cli("users", "create", "--email", "jo@example.com", "--password", PASSWORD)
    key_id = as_json(cli("keys", "create", "--user", "jo@example.com", "--json"))["id"]
    revoked = as_json(cli("keys", "revoke", key_id, "--json"))
    assert revoked["id"] == key_id and revoked["revoked"] is True
    assert as_json(cli("keys", "list", "--json"))[0]["revoked"] is True
    refused(cli("keys", "revoke", "key_nope"), "key_nope")
    refused(cli("keys", "list", "--user", "nobody"), "nobody")


def test_a_bad_config_or_storage_is_a_one_line_error(cli, tmp_path):
    refused(cli("users", "list", config=str(tmp_path / "missing.yaml")), "missing.yaml")
    bad = write_config(tmp_path / "bad.yaml", "mysql://db/accounts")
    refused(cli("users", "list", config=bad), "mysql://db/accounts")
    unreachable = write_config(tmp_path / "unreachable.yaml",
                               "sqlite:////proc/no-such-dir/x.db")
    refused(cli("keys", "list", config=unreachable), "storage")


def test_a_cli_made_admin_key_drives_the_admin_api(cli, sim, tmp_path, storage):
    cli("users", "create", "--email", "root@example.com", "--password", PASSWORD, "--admin")
    secret = cli("keys", "create", "--user", "root@example.com").stdout.splitlines()[0]
    config = (tmp_path / "cli.yaml").read_text().replace("http://127.0.0.1:9", sim.url)
    gateway = GatewayServer(tmp_path, config)
    try:
        resp = requests.get(gateway.url + "/v1/admin/users",
                            headers={"Authorization": f"Bearer {secret}"}, timeout=10)
        assert resp.status_code == 200, resp.text
        assert [u["email"] for u in resp.json()["data"]] == ["root@example.com"]
        key_id = as_json(cli("keys", "list", "--json"))[0]["id"]
        assert cli("keys", "revoke", key_id).returncode == 0
        resp = requests.get(gateway.url + "/v1/admin/users",
                            headers={"Authorization": f"Bearer {secret}"}, timeout=10)
        assert resp.status_code == 401
    finally:
        gateway.stop()
