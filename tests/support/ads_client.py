"""An ADS client that acts like Envoy, for protocol tests: a real grpc.aio stream, responses queued."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

from xds_operator.xds.snapshot import CLUSTER, ENDPOINT, LISTENER

RECEIVE_TIMEOUT = 10.0  # an expected response must arrive within this (only a failing test waits it out)
EVENTUALLY_TIMEOUT = 15.0  # generous: the machine may be loaded, and only a failing test waits this long
SILENCE = 0.3  # "nothing arrives" is checked over this window


def resource_names(response: discovery_pb2.DiscoveryResponse) -> list[str]:
    """The names of the resources in a response, decoded from their Any payloads."""
    names = []
    for packed in response.resources:
        if packed.type_url == CLUSTER:
            message: Any = cluster_pb2.Cluster()
        elif packed.type_url == LISTENER:
            message = listener_pb2.Listener()
        elif packed.type_url == ENDPOINT:
            message = endpoint_pb2.ClusterLoadAssignment()
        else:
            raise AssertionError(f"unexpected resource type {packed.type_url}")
        assert packed.type_url == response.type_url
        packed.Unpack(message)
        names.append(message.cluster_name if packed.type_url == ENDPOINT else message.name)
    return sorted(names)


class _EnvoyLikeStream:
    """What the clients of both ADS variants share: the node on the first request only, error
    details for NACKs, and a background task that drains responses into a queue, so receiving
    with a timeout never cancels the RPC itself."""

    def __init__(self, call: Any, node_id: str, labels: Mapping[str, str]):
        self.node = base_pb2.Node(id=node_id, cluster="test")
        self.node.metadata.update({"labels": dict(labels)})
        self.call = call
        self.responses: asyncio.Queue[Any] = asyncio.Queue()
        self._first = True
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            async for response in self.call:
                self._received(response)
                self.responses.put_nowait(response)

    def _received(self, response: Any) -> None:
        """A hook for what a client tracks of each response as it arrives."""

    async def _write(self, request: Any, error: str | None) -> None:
        if self._first:  # Envoy sends its node on the first request of a stream only
            request.node.CopyFrom(self.node)
            self._first = False
        if error is not None:
            request.error_detail.CopyFrom(
                status_pb2.Status(code=grpc.StatusCode.INVALID_ARGUMENT.value[0], message=error)
            )
        await asyncio.wait_for(self.call.write(request), RECEIVE_TIMEOUT)

    async def recv(self, timeout: float = RECEIVE_TIMEOUT) -> Any:
        try:
            return await asyncio.wait_for(self.responses.get(), timeout)
        except TimeoutError:
            raise AssertionError(f"no response within {timeout} s") from None

    async def _expect_type(self, type_url: str) -> Any:
        response = await self.recv()
        assert response.type_url == type_url, f"expected {type_url}, got {response.type_url}"
        assert response.nonce, "every response carries a nonce"
        return response

    async def expect_nothing(self, timeout: float = SILENCE) -> None:
        try:
            response = await asyncio.wait_for(self.responses.get(), timeout)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected response: {self._describe(response)}")

    def _describe(self, response: Any) -> str:
        raise NotImplementedError

    async def close(self) -> None:
        self.call.cancel()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


class AdsClient(_EnvoyLikeStream):
    """One state-of-the-world ADS stream, as Envoy drives it: node on the first request, then nonce + version."""

    def __init__(self, channel: grpc.aio.Channel, node_id: str, labels: Mapping[str, str]):
        super().__init__(
            ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(), node_id, labels
        )

    async def send(
        self,
        type_url: str,
        *,
        names: Iterable[str] = (),
        version: str = "",
        nonce: str = "",
        error: str | None = None,
    ) -> None:
        request = discovery_pb2.DiscoveryRequest(
            type_url=type_url, resource_names=list(names), version_info=version, response_nonce=nonce
        )
        await self._write(request, error)

    async def expect(
        self, type_url: str, names: Iterable[str] | None = None, version: str | None = None
    ) -> discovery_pb2.DiscoveryResponse:
        """Receive the next response and check its type (and resource names and version, if given)."""
        response = await self._expect_type(type_url)
        if names is not None:
            assert resource_names(response) == sorted(names)
        if version is not None:
            assert response.version_info == version
        return response

    def _describe(self, response: discovery_pb2.DiscoveryResponse) -> str:
        return f"{response.type_url} version {response.version_info} {resource_names(response)}"

    async def ack(self, response: discovery_pb2.DiscoveryResponse, names: Iterable[str] = ()) -> None:
        await self.send(response.type_url, names=names, version=response.version_info, nonce=response.nonce)

    async def nack(
        self,
        response: discovery_pb2.DiscoveryResponse,
        message: str,
        *,
        kept_version: str = "",
        names: Iterable[str] = (),
    ) -> None:
        """Reject a response: its nonce, the version still in use, and the reason."""
        await self.send(response.type_url, names=names, version=kept_version, nonce=response.nonce, error=message)

    async def subscribe_and_ack(self, type_url: str, names: Iterable[str] = ()) -> discovery_pb2.DiscoveryResponse:
        """First request of a type, receive the answer, ACK it: Envoy's steady state."""
        names = list(names)
        await self.send(type_url, names=names)
        response = await self.expect(type_url)
        await self.ack(response, names)
        return response


async def eventually(check: Callable[[], object], what: str = "condition", timeout: float = EVENTUALLY_TIMEOUT) -> None:
    """Wait until check() holds: the servers under test react asynchronously (a closed stream, a watch event)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class DeltaAdsClient(_EnvoyLikeStream):
    """One incremental (delta) ADS stream, as Envoy drives it; the proxy's view is kept in `held`.

    `held[type_url]` maps resource name → version, updated from every response (as Envoy does,
    whether or not it then ACKs), so a reconnect can present it as initial_resource_versions.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        node_id: str,
        labels: Mapping[str, str],
        held: dict[str, dict[str, str]] | None = None,
    ):
        self.held: dict[str, dict[str, str]] = held if held is not None else {}
        super().__init__(
            ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources(), node_id, labels
        )

    def _received(self, response: discovery_pb2.DeltaDiscoveryResponse) -> None:
        held = self.held.setdefault(response.type_url, {})
        for resource in response.resources:
            held[resource.name] = resource.version
        for name in response.removed_resources:
            held.pop(name, None)

    async def send(
        self,
        type_url: str,
        *,
        subscribe: Iterable[str] = (),
        unsubscribe: Iterable[str] = (),
        initial: Mapping[str, str] | None = None,
        nonce: str = "",
        error: str | None = None,
    ) -> None:
        request = discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url,
            resource_names_subscribe=list(subscribe),
            resource_names_unsubscribe=list(unsubscribe),
            initial_resource_versions=dict(initial or {}),
            response_nonce=nonce,
        )
        await self._write(request, error)

    async def expect(
        self, type_url: str, changed: Iterable[str] | None = None, removed: Iterable[str] | None = None
    ) -> discovery_pb2.DeltaDiscoveryResponse:
        """The next response: its type, and (if given) the names it changes and removes."""
        response = await self._expect_type(type_url)
        if changed is not None:
            assert delta_names(response) == sorted(changed)
        if removed is not None:
            assert sorted(response.removed_resources) == sorted(removed)
        return response

    def _describe(self, response: discovery_pb2.DeltaDiscoveryResponse) -> str:
        return f"{response.type_url} changed {delta_names(response)} removed {list(response.removed_resources)}"

    async def ack(self, response: discovery_pb2.DeltaDiscoveryResponse) -> None:
        await self.send(response.type_url, nonce=response.nonce)

    async def nack(self, response: discovery_pb2.DeltaDiscoveryResponse, message: str) -> None:
        await self.send(response.type_url, nonce=response.nonce, error=message)

    async def subscribe_and_ack(
        self, type_url: str, names: Iterable[str] = (), initial: Mapping[str, str] | None = None
    ) -> discovery_pb2.DeltaDiscoveryResponse:
        await self.send(type_url, subscribe=names, initial=initial)
        response = await self.expect(type_url)
        await self.ack(response)
        return response


def delta_names(response: discovery_pb2.DeltaDiscoveryResponse) -> list[str]:
    """The names of the resources a delta response carries, checked against their payloads."""
    for resource in response.resources:
        assert resource.resource.type_url == response.type_url
        assert resource.version, "every delta resource carries its version"
    as_sotw = discovery_pb2.DiscoveryResponse(
        type_url=response.type_url, resources=[resource.resource for resource in response.resources]
    )
    names = resource_names(as_sotw)
    assert names == sorted(resource.name for resource in response.resources)
    return names
