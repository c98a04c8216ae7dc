"""Shared fixtures: real simulator processes on free ports."""

import pytest

from tests.support.processes import Simulator


@pytest.fixture(scope="session")
def sim():
    """One instant-mode simulator shared by tests that only read its answers."""
    server = Simulator("--instant")
    yield server
    server.stop()


@pytest.fixture
def start_sim():
    """Start simulators with given flags; all are stopped after the test."""
    started = []

    def start(*flags, **kwargs):
        server = Simulator(*flags, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


from tests.gateway_fixtures import instant_gateway, start_gateway  # noqa: E402,F401  (fixtures)


@pytest.fixture(scope="session")
def postgres():
    """A private PostgreSQL server for the whole session (Debian's binaries, a free port)."""
    from tests.support.postgres import PostgresServer

    server = PostgresServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server():
    """A private Redis for the whole session (Debian's redis-server, a free port)."""
    from tests.support.redis_server import RedisServer

    server = RedisServer()
    yield server
    server.stop()
