"""tenant_routing: X-Tenant picks the tenant's backend; otherwise the model's own policy."""

import pytest

HOSTS = {"alpha": "127.0.0.1", "beta": "localhost"}  # two backend URLs, one simulator


def test_each_tenant_goes_to_its_own_backend_and_the_rest_to_the_policy(make_gateway,
                                                                         simulator):
    port = simulator.url.rsplit(":", 1)[1]
    backends = [{"type": "sglang", "url": f"http://{host}:{port}", "model": "sim-model"}
                for host in HOSTS.values()]
    gateway = make_gateway(
        models=[{"id": "acme/sim-chat", "routing": "round_robin", "backends": backends}],
        settings={"tenant_routing": {"tenants": [f"{t}={h}:" for t, h in HOSTS.items()]}})
    key, _ = gateway.user()
    for tenant in ("alpha", "beta", "beta", "alpha", "alpha"):
        assert gateway.chat(key, headers={"X-Tenant": tenant}).status_code == 200
        assert f"//{HOSTS[tenant]}:" in gateway.upstream[-1].backend.url
    for headers in ({}, {"X-Tenant": "gamma"}):  # no tenant, unknown tenant: round robin
        assert gateway.chat(key, headers=headers).status_code == 200
    assert {call.backend.url for call in gateway.upstream[-2:]} == {b["url"] for b in backends}


def test_a_malformed_tenant_entry_stops_the_gateway_with_its_name(make_gateway):
    with pytest.raises(ValueError, match="'nobody' is not tenant=url-part"):
        make_gateway(settings={"tenant_routing": {"tenants": ["nobody"]}})
