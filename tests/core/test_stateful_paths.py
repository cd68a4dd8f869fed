"""Tests of openai_lb._affinity.route_of: which paths are stateful routes, told apart by one regular
expression and then read segment by segment (``_parsed_route``, the reading route_of did alone before)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openai_lb._affinity import ROUTES, _parsed_route, route_of

PREFIXES = ["/openai/", "/openai/v1/", "/openai/deployments/gpt-4o/", "/openai/deployments//"]
COLLECTIONS = ["/".join(route.collection) for route in ROUTES]
# What SDK paths are made of, and near misses of it: escapes, empty segments, a collection as a deployment.
WORDS = [
    "openai",
    "v1",
    "deployments",
    "gpt-4o",
    "chat",
    "completions",
    "embeddings",
    "models",
    *(first for route in ROUTES for first in route.collection),
    *(action for route in ROUTES for action in route.actions),
    "complete",
    "cancel",
    "resp_1",
    "file-abc",
    "",
    "%2F",
    "respon%73es",
    "jo%62s",
    "v1%2F",
    "fine_tuning%2Fjobs",
    "openai\n",
    "responses\n",
    " ",
]
SEGMENT = st.sampled_from(WORDS) | st.text(max_size=6)
PATHS = st.builds(
    lambda lead, segments, trail: (lead + "/".join(segments) + trail).encode(),
    st.sampled_from(["/", "", "//", "/openai/", "/openai/v1/", "/openai/deployments/"]),
    st.lists(SEGMENT, max_size=7),
    st.sampled_from(["", "/", "//", "?api-version=1"]),
)


@settings(max_examples=3000, deadline=None)
@given(PATHS)
def test_route_of_answers_as_the_segment_by_segment_reading_on_paths_like_the_sdks(path: bytes) -> None:
    assert route_of(path) == _parsed_route(path), f"route_of and the segment reading disagree on {path!r}"


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=64) | st.binary(max_size=40).map(lambda tail: b"/openai/" + tail))
def test_route_of_answers_as_the_segment_by_segment_reading_on_any_bytes(path: bytes) -> None:
    assert route_of(path) == _parsed_route(path), f"route_of and the segment reading disagree on {path!r}"


@settings(max_examples=1000, deadline=None)
@given(PATHS, st.binary(max_size=12), st.binary(max_size=12))
def test_route_of_reads_the_path_between_start_and_end_only(path: bytes, before: bytes, after: bytes) -> None:
    found = route_of(before + path + after, len(before), len(before) + len(path))
    assert found == _parsed_route(path), f"{path!r} read inside {before!r}...{after!r} gave {found!r}"


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("collection", COLLECTIONS)
@pytest.mark.parametrize(
    ("rest", "segments"), [("", []), ("/", []), ("/obj_1", ["obj_1"]), ("/obj_1/x", ["obj_1", "x"])]
)
def test_every_route_is_found_under_every_prefix(prefix: str, collection: str, rest: str, segments: list[str]) -> None:
    found = route_of((prefix + collection + rest).encode())
    assert found is not None, f"{prefix}{collection}{rest} was not taken for a stateful route"
    route, after = found
    assert "/".join(route.collection) == collection, f"{prefix}{collection}{rest} was taken for {route}"
    assert after == segments, f"{prefix}{collection}{rest}: segments after the collection {after}, not {segments}"


@pytest.mark.parametrize(
    "path",
    [
        "/openai/deployments/gpt-4o/chat/completions",
        "/openai/v1/chat/completions",
        "/openai/deployments/gpt-4o/embeddings",
        "/openai/v1/models",
        "/openai/deployments/responses/chat/completions",  # a deployment named like a collection
        "/openai/deployments/files",
        "/openai/v1/deployments/d/responses",
        "/openai/fine_tuning/checkpoints",
        "/openai/responses_archive",
        "/openai/respon%73es",
        "/other/openai/responses",
        "/openai",
        "",
    ],
)
def test_stateless_and_foreign_paths_have_no_route(path: str) -> None:
    assert route_of(path.encode()) is None, f"{path} was taken for a stateful route"


def test_an_escaped_segment_after_the_collection_is_read_unescaped() -> None:
    found = route_of(b"/openai/v1/fine_tuning/jo%62s/ftjob-1")
    assert found is not None, "fine_tuning/jo%62s was not read as fine_tuning/jobs"
    assert found[1] == ["ftjob-1"], f"segments after fine_tuning/jobs: {found[1]}"
