"""Broker connections of the apps celerynb builds: kombu's Redis channel with one client
per connection pool, not one per command (real Redis: the session's LocalCluster)."""

import uuid

import pytest
from kombu import Queue
from kombu.transport import pyamqp
from kombu.transport import redis as kombu_redis

import celerynb.worker
from celerynb._redis_channel import BrokerConnection, OneClientChannel, OneClientTransport


@pytest.fixture
def sync_clients_built(monkeypatch):
    """The clients a channel builds for its commands (not its polling connection's)."""
    built = []
    create = OneClientChannel._create_client

    def counted(self, asynchronous=False):
        client = create(self, asynchronous=asynchronous)
        if not asynchronous:
            built.append(client)
        return client

    monkeypatch.setattr(OneClientChannel, "_create_client", counted)
    return built


def test_messages_go_through_one_client_of_the_channel(session, sync_clients_built):
    with session.app.connection_for_write() as connection:
        queue = connection.SimpleQueue(f"celerynb-test-{uuid.uuid4().hex}")
        try:
            for i in range(5):
                queue.put({"i": i})
            got = [queue.get(timeout=5) for _ in range(5)]
            for message in got:
                message.ack()
        finally:
            queue.clear()
            queue.close()
    assert [message.payload["i"] for message in got] == list(range(5))
    assert isinstance(queue.channel, OneClientChannel)
    assert len({id(client) for client in sync_clients_built}) == 1, "kombu: one per command"


def test_celerys_sends_go_through_one_client_too(session, sync_clients_built):
    """Celery sends from kombu's pool of connections, which made plain kombu ones."""
    name = f"celerynb-test-{uuid.uuid4().hex}"
    queue = Queue(name, routing_key=name)
    with session.app.producer_or_acquire() as producer:
        assert isinstance(producer.channel, OneClientChannel)
        for i in range(5):
            producer.publish({"i": i}, routing_key=name, declare=[queue])
        assert producer.channel._size(name) == 5
        queue.bind(producer.channel).delete()
    # None if an earlier test's send built the pooled channel's client already.
    assert len(sync_clients_built) <= 1, "kombu built one for each command"


def test_a_new_connection_pool_gets_its_own_client(session, sync_clients_built):
    with session.app.connection_for_write() as connection:
        channel = connection.channel()
        try:
            with channel.conn_or_acquire() as client:
                assert client.ping()
            channel._disconnect_pools()  # what a fork or a closed connection does
            with channel.conn_or_acquire() as renewed:
                assert renewed.ping()
            assert renewed is not client and renewed.connection_pool is channel.pool
        finally:
            channel.close()
    assert len(sync_clients_built) == 2


def test_the_connection_keeps_its_redis_url_in_logs_with_the_password_masked(session):
    connection = session.app.connection_for_write()
    assert connection.transport_cls == "redis"
    assert connection.as_uri().startswith("redis://:**@127.0.0.1:")


def test_the_worker_app_and_the_kernel_app_both_use_it(session):
    assert celerynb.worker.app.amqp.Connection is BrokerConnection
    assert isinstance(session.app.connection_for_write().default_channel, OneClientChannel)


@pytest.mark.parametrize(
    ("url", "transport"),
    [
        ("redis://localhost:6379/0", OneClientTransport),
        ("rediss://localhost:6380/0", OneClientTransport),
        ("sentinel://localhost:26379", kombu_redis.SentinelTransport),
        ("amqp://guest@localhost//", pyamqp.Transport),
    ],
)
def test_only_plain_redis_transports_change(url, transport):
    assert BrokerConnection(url).get_transport_cls() is transport
