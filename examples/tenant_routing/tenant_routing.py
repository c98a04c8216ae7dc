"""tenant_routing: each tenant's requests go to its own backend first, by ``X-Tenant``.

Settings (``plugins: {tenant_routing: {tenants: [...]}}``): ``tenants`` lists
``"<tenant>=<part of its backend's URL>"`` strings, e.g. ``"acme=gpu-a.internal:30000"``.
A request whose ``X-Tenant`` header names a tenant tries the candidates whose URL contains
that part first, then the other candidates in the order they came (healthy primaries,
then fallbacks). Without the header, for a tenant not listed, or when none of the
tenant's backends is a candidate right now (unhealthy, drained): None, and the model's
own routing policy applies, so installing the plugin changes nothing by itself.
"""

import dataclasses

from inferegator.plugin import ListOf, Section, Setting, String, hookimpl, plugin_settings

NAME = "tenant_routing"
HEADER = "X-Tenant"


@dataclasses.dataclass(frozen=True)
class Settings:
    tenants: tuple = ()


SETTINGS = Section(
    Settings,
    Setting("tenants", ListOf(String()), "Each tenant and a part of its backend's URL, "
            'as "tenant=url-part".'),
)


def parse_tenants(entries) -> dict[str, str]:
    """{tenant: url part} from "tenant=url-part" strings; ValueError names a bad one."""
    tenants = {}
    for entry in entries:
        tenant, _, part = entry.partition("=")
        if not tenant.strip() or not part.strip():
            raise ValueError(f"plugins.{NAME}.tenants: {entry!r} is not tenant=url-part")
        tenants[tenant.strip()] = part.strip()
    return tenants


@hookimpl
def inferegator_startup(gateway):
    gateway.plugin_state[NAME] = parse_tenants(plugin_settings(gateway, NAME).tenants)


@hookimpl
def inferegator_select_backend(gateway, request, candidates):
    tenant = request.header(HEADER)
    part = gateway.plugin_state[NAME].get(tenant) if tenant else None
    if part is None:
        return None
    own = [backend for backend in candidates if part in backend.url]
    if not own:
        return None
    return own + [backend for backend in candidates if backend not in own]
