"""Fixtures shared by tests/test_app.py and tests/test_app_browser.py: the app's parts (shipped weights,
committed sample and records), pictures written at test time, the app served in the test process on a
free port, and a guard that no connection or name lookup leaves 127.0.0.1."""

from __future__ import annotations

import socket
from pathlib import Path

import helpers  # noqa: F401  (environment and sys.path)
import pytest
from PIL import Image

from modular.tools.app import assemble, build_app, free_port, launch

LOOPBACK = ("127.0.0.1", "::1", "localhost")
__all__ = ["only_loopback", "parts", "example", "photo", "served"]  # the fixtures; a test module imports them all


@pytest.fixture(scope="module", autouse=True)
def only_loopback():
    """Every connection and name lookup made from this process during these tests must stay on this
    computer: others are refused and listed, and the list must be empty at the end."""
    attempts: list[str] = []
    connect, lookup = socket.socket.connect, socket.getaddrinfo

    def guarded_connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOOPBACK:
            attempts.append(f"connect {address}")
            raise OSError(f"test: no connection may leave 127.0.0.1 ({address})")
        return connect(sock, address)

    def guarded_lookup(host, *args, **kwargs):
        if host not in LOOPBACK and host is not None:
            attempts.append(f"lookup {host}")
            raise socket.gaierror(f"test: no name lookup outside this computer ({host})")
        return lookup(host, *args, **kwargs)

    socket.socket.connect, socket.getaddrinfo = guarded_connect, guarded_lookup
    try:
        yield attempts
    finally:
        socket.socket.connect, socket.getaddrinfo = connect, lookup
    assert not attempts, attempts


@pytest.fixture(scope="module")
def parts():
    return assemble()


def example_of(parts, name: str) -> Path:
    """The sample's example of class ``name``, a 32x32 PNG."""
    sample = parts.sample
    return sample.path(next(i for i in sample.examples if sample.classes[i.label] == name))


@pytest.fixture(scope="module")
def example(parts) -> Path:
    """The sample's cat, a 32x32 PNG."""
    return example_of(parts, "cat")


@pytest.fixture(scope="module")
def photo(example, tmp_path_factory) -> Path:
    """The cat as a 300x200 JPEG, written now."""
    path = tmp_path_factory.mktemp("upload") / "my cat.jpg"
    Image.open(example).convert("RGB").resize((300, 200), Image.Resampling.BICUBIC).save(path, quality=92)
    return path


@pytest.fixture(scope="module")
def served(parts):
    demo = build_app(parts)
    url = launch(demo, parts, port=free_port())
    try:
        yield url, demo
    finally:
        demo.close()
