"""Kyverno's image library: parse container image references the way the Go engine does.

Policies compare registries, repositories, tags and digests of container images, so the parse must agree
with go-containerregistry's `name.ParseReference` (non-strict, Docker Hub defaults) that Kyverno uses:
`nginx` is `index.docker.io/library/nginx:latest`, a `repo:tag@digest` reference is a digest reference
whose tag Kyverno still reports, and a first path component is a registry only when it contains `.` or `:`.
`parse_reference` is also used by the image-data lookup to match references written differently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from engine.cel.libraries import Library, cel, opaque, opaque_type

IMAGE_TYPE = "kyverno.image"

DEFAULT_REGISTRY = "index.docker.io"
_REGISTRY_ALIAS = "docker.io"
_DEFAULT_NAMESPACE = "library"
_DEFAULT_TAG = "latest"

_REPOSITORY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-./")
_TAG_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-.ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_DIGEST_CHARS = frozenset("sh:0123456789abcdef")
# What Go's url.Parse("//" + name) keeps, unchanged, as the host: hostname or [IPv6] with an optional port.
_AUTHORITY = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?")


class ImageReferenceError(ValueError):
    """The string is not an image reference go-containerregistry would accept."""


@dataclass(frozen=True, slots=True)
class ImageReference:
    """A parsed image reference; `digest` is empty for tag references."""

    registry: str
    repository: str
    tag: str
    digest: str

    @property
    def identifier(self) -> str:
        """Kyverno's `identifier()`: the tag, the digest, or `tag@digest` when both were written."""
        if self.digest:
            return f"{self.tag}@{self.digest}" if self.tag else self.digest
        return self.tag

    @property
    def name(self) -> str:
        """Fully qualified name, e.g. `index.docker.io/library/nginx:latest`."""
        base = f"{self.registry}/{self.repository}"
        return f"{base}@{self.digest}" if self.digest else f"{base}:{self.tag}"


def _check_element(kind: str, value: str, allowed: frozenset[str], low: int, high: int) -> None:
    if not low <= len(value) <= high:
        raise ImageReferenceError(f"{kind} must be between {low} and {high} characters in length: {value}")
    if any(ch not in allowed for ch in value):
        raise ImageReferenceError(f"{kind} can only contain the characters `{''.join(sorted(allowed))}`: {value}")


def _repository(name: str) -> tuple[str, str]:
    """(registry, repository) of a repository name, as go-containerregistry's NewRepository."""
    if not name:
        raise ImageReferenceError("a repository name must be specified")
    registry, repo = "", name
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first):
        registry, repo = first, rest
    _check_element("repository", repo, _REPOSITORY_CHARS, 2, 255)
    if _AUTHORITY.fullmatch(registry) is None:
        raise ImageReferenceError(f"registries must be valid RFC 3986 URI authorities: {registry}")
    if registry in ("", _REGISTRY_ALIAS):
        registry = DEFAULT_REGISTRY
    if "/" not in repo and registry == DEFAULT_REGISTRY:
        repo = f"{_DEFAULT_NAMESPACE}/{repo}"
        _check_element("repository", repo, _REPOSITORY_CHARS, 2, 255)
    return registry, repo


def _tag(name: str) -> tuple[str, str, str]:
    """(registry, repository, tag) as go-containerregistry's NewTag; the tag defaults to `latest`."""
    base, tag = name, ""
    parts = name.split(":")
    if len(parts) > 1 and "/" not in parts[-1]:
        base, tag = ":".join(parts[:-1]), parts[-1]
    if tag:
        _check_element("tag", tag, _TAG_CHARS, 1, 127)
    registry, repo = _repository(base)
    return registry, repo, tag or _DEFAULT_TAG


def _tag_of_digest_reference(original: str) -> str:
    """The tag written before `@` in `repo:tag@digest` (a registry port is not a tag)."""
    before, sep, _ = original.partition("@")
    if not sep:
        return ""
    colon = before.rfind(":")
    if colon == -1 or colon < before.rfind("/"):
        return ""
    return before[colon + 1 :]


def parse_reference(text: str) -> ImageReference:
    """Parse `text` like go-containerregistry's `name.ParseReference` with default options."""
    if text.startswith(("http://", "https://")):
        raise ImageReferenceError(f"image reference must not contain a URL scheme (http:// or https://): {text}")
    try:
        registry, repo, tag = _tag(text)
        return ImageReference(registry, repo, tag, "")
    except ImageReferenceError:
        pass
    parts = text.split("@")
    if len(parts) == 2:
        base, digest = parts
        try:
            _check_element("digest", digest, _DIGEST_CHARS, 71, 71)
            try:
                registry, repo, _ = _tag(base)
                base = f"{registry}/{repo}"
            except ImageReferenceError:
                pass
            registry, repo = _repository(base)
            return ImageReference(registry, repo, _tag_of_digest_reference(text), digest)
        except ImageReferenceError:
            pass
    raise ImageReferenceError(f"could not parse reference: {text}")


def _to_value(ref: ImageReference) -> dict[str, Any]:
    return opaque(IMAGE_TYPE, registry=ref.registry, repository=ref.repository, tag=ref.tag, digest=ref.digest)


def _image(value: Any) -> dict[str, Any]:
    if opaque_type(value) != IMAGE_TYPE:
        raise ValueError("no such overload: expected an image (from parseImageReference)")
    result: dict[str, Any] = value
    return result


def _parse(text: str) -> dict[str, Any]:
    return _to_value(parse_reference(text))


def _is_image(text: str) -> bool:
    try:
        parse_reference(text)
    except ImageReferenceError:
        return False
    return True


def _registry(value: Any) -> str:
    return str(_image(value)["registry"])


def _repository_of(value: Any) -> str:
    return str(_image(value)["repository"])


def _identifier(value: Any) -> str:
    image = _image(value)
    return ImageReference(
        str(image["registry"]), str(image["repository"]), str(image["tag"]), str(image["digest"])
    ).identifier


def _tag_of(value: Any) -> str:
    return str(_image(value)["tag"])


def _digest(value: Any) -> str:
    return str(_image(value)["digest"])


def _contains_digest(value: Any) -> bool:
    return bool(_image(value)["digest"])


_IMAGE = cel.Type.Map(cel.Type.DYN, cel.Type.DYN)


def _member(name: str, result: Any, impl: Any) -> Any:
    return cel.FunctionDecl(name, [cel.Overload(f"kyverno_image_{name}", result, [_IMAGE], is_member=True, impl=impl)])


LIBRARY = Library(
    name="kyverno.image",
    functions=(
        cel.FunctionDecl(
            "parseImageReference",
            [cel.Overload("kyverno_parse_image_reference_string", _IMAGE, [cel.Type.STRING], impl=_parse)],
        ),
        cel.FunctionDecl("image", [cel.Overload("kyverno_image_string", _IMAGE, [cel.Type.STRING], impl=_parse)]),
        cel.FunctionDecl(
            "isImage",
            [cel.Overload("kyverno_is_image_string", cel.Type.BOOL, [cel.Type.STRING], impl=_is_image)],
        ),
        _member("registry", cel.Type.STRING, _registry),
        _member("repository", cel.Type.STRING, _repository_of),
        _member("identifier", cel.Type.STRING, _identifier),
        _member("tag", cel.Type.STRING, _tag_of),
        _member("digest", cel.Type.STRING, _digest),
        _member("containsDigest", cel.Type.BOOL, _contains_digest),
    ),
)
"""`parseImageReference`, `image` (deprecated alias), `isImage` and the Image member functions."""
