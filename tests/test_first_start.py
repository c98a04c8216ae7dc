"""A first start on an empty store creates an admin and prints its key, once."""

import re

import openai

from tests.gateway_fixtures import MODEL, gateway_yaml
from tests.support.processes import GatewayServer


def test_first_start_prints_an_admin_key_once(start_sim, tmp_path):
    sim = start_sim("--instant")
    yaml_text = f"storage: 'sqlite:///{tmp_path}/first.db'\n" + gateway_yaml([sim])
    first = GatewayServer(tmp_path, yaml_text)
    try:
        output = first.output()
        assert "Created the first admin, admin@localhost" in output
        (key,) = re.findall(r"API key:\s+(sk-inf-\S+)", output)
        assert re.search(r"password:\s+\S{20,}", output)
        client = openai.OpenAI(base_url=first.url + "/v1", api_key=key, max_retries=0)
        assert client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        admin_users = client.get("/admin/users", cast_to=object)
        assert [u["role"] for u in admin_users["data"]] == ["admin"]
    finally:
        first.stop()
    second = GatewayServer(tmp_path, yaml_text)
    try:
        assert "Created the first admin" not in second.output()
        assert key not in second.output()
    finally:
        second.stop()
