"""A minimal CRI client: ``ImageService/PullImage`` as kubelet calls it, over the real gRPC API.

Enough of ``k8s.io/cri-api``'s ``runtime.v1`` messages (field numbers as in its api.proto)
is declared at run time with protobuf's descriptor pool, so no generated code is kept here.
kubelet sends a pull secret's credentials as ``AuthConfig`` username/password (its keyring
leaves ``server_address`` empty); :meth:`CriClient.pull_image` does the same.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = ["CriClient"]

_STRING = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
_MESSAGE = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
_OPTIONAL = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL

# message -> [(field, number, type name or None for string)]
_MESSAGES: dict[str, list[tuple[str, int, str | None]]] = {
    "ImageSpec": [("image", 1, None)],
    "AuthConfig": [
        ("username", 1, None),
        ("password", 2, None),
        ("auth", 3, None),
        ("server_address", 4, None),
        ("identity_token", 5, None),
        ("registry_token", 6, None),
    ],
    "PullImageRequest": [("image", 1, ".runtime.v1.ImageSpec"), ("auth", 2, ".runtime.v1.AuthConfig")],
    "PullImageResponse": [("image_ref", 1, None)],
}


def _classes() -> dict[str, Any]:
    file = descriptor_pb2.FileDescriptorProto(name="shoal_testing_cri.proto", package="runtime.v1", syntax="proto3")
    for name, fields in _MESSAGES.items():
        message = file.message_type.add(name=name)
        for field, number, type_name in fields:
            spec = message.field.add(name=field, number=number, label=_OPTIONAL)
            spec.type = _MESSAGE if type_name else _STRING
            if type_name:
                spec.type_name = type_name
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"runtime.v1.{name}")) for name in _MESSAGES
    }


class CriClient:
    """CRI over containerd's socket (``unix://``).

    Parameters:
        address: the socket path containerd serves (its CRI plugin enabled).
    """

    def __init__(self, address: str) -> None:
        self._classes = _classes()
        self._channel = grpc.insecure_channel(f"unix://{address}")
        self._pull = self._channel.unary_unary(
            "/runtime.v1.ImageService/PullImage",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=self._classes["PullImageResponse"].FromString,
        )

    def pull_image(
        self, image: str, *, username: str | None = None, password: str | None = None, timeout: float = 300.0
    ) -> str:
        """Pull (and unpack) ``image`` like kubelet; returns the image ref (its config digest)."""
        request = self._classes["PullImageRequest"](image=self._classes["ImageSpec"](image=image))
        if username is not None:
            request.auth.CopyFrom(self._classes["AuthConfig"](username=username, password=password or ""))
        response = self._pull(request, timeout=timeout)
        return str(response.image_ref)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
