"""cli.program_cache: compiled programs are kept between runs and a damaged cache never changes an answer."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import celvern
from cli.program_cache import DiskProgramCache, configured_cache
from engine.cel.environment import program_cache, validating_environment

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def apply(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("CELVERN_CACHE_DIR", str(cache_dir))
    result = CliRunner().invoke(celvern, ["apply", str(EXAMPLES / "policies"), "-r", str(EXAMPLES / "resources")])
    assert result.exit_code in (0, 1), result.output
    return result.output


def entries(cache_dir: Path) -> list[Path]:
    return [path for path in cache_dir.rglob("*") if path.is_file()]


def test_second_run_reads_the_cache_and_answers_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = apply(tmp_path, monkeypatch)
    stored = entries(tmp_path)
    assert stored, "the first run stores its compiled programs"
    mtimes = {path: path.stat().st_mtime_ns for path in stored}
    assert apply(tmp_path, monkeypatch) == first
    assert {path: path.stat().st_mtime_ns for path in entries(tmp_path)} == mtimes  # read, not rewritten


@pytest.mark.parametrize("damage", [b"", b"garbage", b'{"source": "other"}\0xx'], ids=["empty", "garbage", "stale"])
def test_damaged_entries_are_compiled_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: bytes) -> None:
    first = apply(tmp_path, monkeypatch)
    for path in entries(tmp_path):
        path.write_bytes(damage)
    assert apply(tmp_path, monkeypatch) == first


class CountingCache(DiskProgramCache):
    """The disk cache, counting the entries it hands back."""

    hits = 0

    def get(self, key: str) -> bytes | None:
        found = super().get(key)
        self.hits += found is not None
        return found


def test_programs_from_the_cache_evaluate_like_compiled_ones(tmp_path: Path) -> None:
    environment = validating_environment()
    cache = CountingCache(tmp_path)
    expression = "object.spec.containers.all(c, c.image.startsWith('registry.example.com/'))"
    with program_cache(cache):
        compiled = environment.compile(expression, path="x")
        assert cache.hits == 0 and entries(tmp_path)
        cached = environment.compile(expression, path="y")
    assert cache.hits == 1  # the second program came from the stored entry, not from compiling
    assert cached.path == "y" and cached.text == compiled.text and cached.reads == compiled.reads
    for image in ("registry.example.com/app", "docker.io/app"):
        data = {"object": {"spec": {"containers": [{"image": image}]}}}
        assert cached.evaluate(environment.activation(data)) == compiled.evaluate(environment.activation(data))


def test_no_cache_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELVERN_NO_CACHE", "1")
    assert configured_cache() is None
