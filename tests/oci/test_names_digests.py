from __future__ import annotations

import pytest

from regd.oci.digest import Digest, DigestError
from regd.oci.names import is_valid_repository, is_valid_tag
from regd.oci.reference import ReferenceError_, parse_reference


@pytest.mark.parametrize(
    "name", ["a", "library/ubuntu", "a-b/c.d/e_f", "a__b", "a---b", "x" * 255, "0/1/2"]
)
def test_valid_repository_names(name: str) -> None:
    assert is_valid_repository(name)


@pytest.mark.parametrize(
    "name",
    ["", "A", "a/../b", "..", "a/./b", "a//b", "/a", "a/", "-a", "a-", "a_-b", "a...b", "x" * 256],
)
def test_invalid_repository_names(name: str) -> None:
    assert not is_valid_repository(name)


@pytest.mark.parametrize("tag", ["latest", "v1.0.0", "_x", "A-b_c.d", "a" * 128])
def test_valid_tags(tag: str) -> None:
    assert is_valid_tag(tag)


@pytest.mark.parametrize("tag", ["", ".a", "-a", "a" * 129, "a:b", "a/b", "a b"])
def test_invalid_tags(tag: str) -> None:
    assert not is_valid_tag(tag)


def test_digest_round_trip() -> None:
    d = Digest.of(b"abc")
    assert str(d).startswith("sha256:")
    assert Digest.parse(str(d)) == d
    assert Digest.of(b"abc", "sha512").algorithm == "sha512"


@pytest.mark.parametrize(
    "text", ["", "sha256", "sha256:", "sha256:xyz", "SHA256:" + "a" * 64, "md5:" + "a" * 32]
)
def test_bad_digests(text: str) -> None:
    with pytest.raises(DigestError):
        Digest.parse(text)


def test_references() -> None:
    ref = parse_reference("localhost:5000/a/b:v1")
    assert (ref.host, ref.repository, ref.tag, ref.digest) == ("localhost:5000", "a/b", "v1", None)
    ref = parse_reference("a/b@sha256:" + "c" * 64)
    assert ref.host is None
    assert ref.identifier == "sha256:" + "c" * 64
    assert parse_reference("x.io/a").host == "x.io"
    assert parse_reference("a").identifier == "latest"
    for bad in ("", "A/b", "a:b:c", "a@sha256:zz", "a b", "a@"):
        with pytest.raises(ReferenceError_):
            parse_reference(bad)
