"""Mixtures: strategies, requested vs achieved shares, upsampling, validation hold-out, bytes."""

from __future__ import annotations

import json
import logging
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from multilora_pipeline.data_specs.record import RECORD_SCHEMA
from multilora_pipeline.data_specs.schema import MixtureSpec
from multilora_pipeline.tasks.data.files.parquet_io import write_parquet
from multilora_pipeline.tasks.data.mixture import build_mixture, requested_shares, split_validation
from multilora_pipeline.tasks.identity import mixture_id


def source(name: str, n: int, words: int = 3) -> pa.Table:
    """n distinct rows; prompt + response have `words` + 1 whitespace tokens."""
    ids = [f"{name}-{i}" for i in range(n)]
    return pa.table(
        {
            "id": ids,
            "source": [name] * n,
            "task": ["t"] * n,
            "category": ["c"] * n,
            "prompt": [" ".join([f"w{i}"] * words) for i in range(n)],
            "response": ["r"] * n,
            "choices": pa.nulls(n, pa.list_(pa.string())),
            "label": pa.nulls(n, pa.int64()),
            "meta": ["{}"] * n,
        },
        schema=RECORD_SCHEMA,
    )


SIZES = {"a": 10_000, "b": 30_000, "c": 60_000}
SOURCES = {name: source(name, n) for name, n in SIZES.items()}
HASHES = {name: f"hash-{name}" for name in SIZES}


def build(tmp_path, sources: dict[str, pa.Table], hashes, config: MixtureSpec, seed, out_dir):
    """build_mixture on the sources written, in order, to one Parquet file (as the stage has)."""
    records = tmp_path / f"records-{out_dir.name}.parquet"
    write_parquet(pa.concat_tables(sources.values()), records)
    return build_mixture(records, list(sources), hashes, config, seed, out_dir)


def mix(tmp_path, name="m", seed=0, sources=None, **config):
    config.setdefault("validation_fraction", 0.0)
    return build(tmp_path, sources or SOURCES, HASHES, MixtureSpec(**config), seed, tmp_path / name)


def counts(mixture) -> dict[str, int]:
    table = pa.concat_tables(pq.read_table(p) for p in sorted(mixture.train_dir.glob("*.parquet")))
    values = table.column("source").to_pylist()
    return {s: values.count(s) for s in SIZES}


STRATEGIES = [
    ({"strategy": "proportional"}, {"a": 0.1, "b": 0.3, "c": 0.6}),
    (
        {"strategy": "weights", "weights": {"a": 1, "b": 1, "c": 2}},
        {"a": 0.25, "b": 0.25, "c": 0.5},
    ),
    ({"strategy": "capped", "cap": 20_000}, {"a": 0.2, "b": 0.4, "c": 0.4}),
    (
        {"strategy": "temperature", "temperature": 2.0},
        {k: v**0.5 / sum(x**0.5 for x in SIZES.values()) for k, v in SIZES.items()},
    ),
]


@pytest.mark.parametrize("config,expected", STRATEGIES)
def test_achieved_shares_match_requested_on_large_draws(tmp_path, config, expected):
    mixture = mix(tmp_path, size=40_000, **config)
    got = counts(mixture)
    total = sum(got.values())
    for name, share in expected.items():
        assert abs(got[name] / total - share) < 0.01
        member = mixture.manifest["sources"][name]
        assert abs(member["requested_share"] - share) < 1e-6
        assert abs(member["achieved_share"] - share) < 0.01


@pytest.mark.parametrize("config,expected", STRATEGIES)
def test_token_sized_shares_match_requested_on_large_draws(tmp_path, config, expected):
    mixture = mix(tmp_path, size_tokens=160_000, **config)  # ~40k rows of 4 tokens
    members = mixture.manifest["sources"]
    assert mixture.manifest["unit"] == "whitespace_tokens"
    achieved = {s: m["achieved_tokens"] for s, m in members.items()}
    assert abs(sum(achieved.values()) - 160_000) <= 3 * 4  # each source overshoots < 1 row
    for name, share in expected.items():
        assert abs(achieved[name] / 160_000 - share) < 0.01
        assert abs(members[name]["achieved_share"] - members[name]["requested_share"]) < 0.01


def test_without_upsampling_a_small_source_is_limited_and_reported(tmp_path):
    mixture = mix(tmp_path, strategy="weights", weights={"a": 1, "b": 1, "c": 1}, size=60_000)
    a = mixture.manifest["sources"]["a"]
    assert a["requested_rows"] == 20_000 and a["rows"] == 10_000
    assert a["achieved_share"] < a["requested_share"]
    assert counts(mixture)["a"] == 10_000  # each row once


def limit_warnings(tmp_path, caplog, sizes: dict[str, int], **config) -> list[str]:
    """The warning lines one build of a mixture of `sizes`-row sources logs."""
    sources = {name: source(name, n) for name, n in sizes.items()}
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mlora.mixture"):
        build(
            tmp_path,
            sources,
            {name: f"hash-{name}" for name in sizes},
            MixtureSpec(validation_fraction=0.0, **config),
            0,
            tmp_path / f"m{len(list(tmp_path.iterdir()))}",
        )
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_small_source_that_limits_an_unsized_mixture_is_named(tmp_path, caplog):
    # A user's case: sqrt(23) is 9% of the temperature shares, but 23 rows are 3% of the data,
    # so history runs out at 252 rows of mixture and 532 rows of the others go unused.
    sizes = {"history": 23, "a": 254, "b": 254, "c": 253}
    assert limit_warnings(tmp_path, caplog, sizes, strategy="temperature") == [
        "source history (23 rows) limits the mixture to 252 of 784 available rows; set "
        "mixture.size with mixture.allow_upsampling: true to repeat its rows, or lower "
        "mixture.temperature (1 is proportional to source size)"
    ]
    weighted = limit_warnings(
        tmp_path, caplog, sizes, strategy="weights", weights={"history": 1, "a": 1, "b": 1, "c": 1}
    )
    assert weighted == [
        "source history (23 rows) limits the mixture to 92 of 784 available rows; set "
        "mixture.size with mixture.allow_upsampling: true to repeat its rows, or lower its "
        "weight in mixture.weights"
    ]


def test_sources_too_small_for_a_requested_size_are_named(tmp_path, caplog):
    sizes = {"a": 10, "b": 100}
    weights = {"a": 1, "b": 1}
    assert limit_warnings(
        tmp_path, caplog, sizes, strategy="weights", weights=weights, size=60
    ) == [
        "source a (10 of 30 rows) cannot fill its share, so the mixture has 40 of the requested "
        "60 rows; set mixture.allow_upsampling: true to repeat rows, or lower its weight in "
        "mixture.weights"
    ]
    assert limit_warnings(tmp_path, caplog, sizes, size_tokens=600) == [  # 4 tokens a row
        "sources a (40 of 55 tokens), b (400 of 545 tokens) cannot fill their shares, so the "
        "mixture has 440 of the requested 600 tokens; set mixture.allow_upsampling: true to "
        "repeat rows, or lower mixture.size_tokens"
    ]


@pytest.mark.parametrize(
    "config",
    [
        {},  # proportional: every row once
        {"strategy": "capped", "cap": 20},  # the cap is the user's own limit
        {"strategy": "weights", "weights": {"a": 1, "b": 0}},  # b left out on purpose
        {"strategy": "temperature", "size": 200, "allow_upsampling": True},
        {"strategy": "weights", "weights": {"a": 1, "b": 10}, "size": 100},  # every share fits
    ],
)
def test_nothing_is_logged_when_no_source_limits_the_mixture(tmp_path, caplog, config):
    assert limit_warnings(tmp_path, caplog, {"a": 10, "b": 100}, **config) == []


def test_upsampling_repeats_rows_when_allowed(tmp_path):
    mixture = mix(
        tmp_path,
        strategy="weights",
        weights={"a": 1, "b": 1, "c": 1},
        size=60_000,
        allow_upsampling=True,
    )
    got = counts(mixture)
    assert got == {"a": 20_000, "b": 20_000, "c": 20_000}


def test_size_in_tokens(tmp_path):
    sources = {"a": source("a", 5_000, words=3), "b": source("b", 5_000, words=9)}  # 4 vs 10 tokens
    mixture = build(
        tmp_path,
        sources,
        {"a": "1", "b": "2"},
        MixtureSpec(size_tokens=20_000, validation_fraction=0.0),
        0,
        tmp_path / "tok",
    )
    members = mixture.manifest["sources"]
    assert mixture.manifest["unit"] == "whitespace_tokens"
    assert abs(members["a"]["achieved_tokens"] - 10_000) <= 4
    assert abs(members["b"]["achieved_tokens"] - 10_000) <= 10


def test_validation_is_held_out_per_source_before_mixing(tmp_path):
    mixture = mix(tmp_path, validation_fraction=0.1)
    validation = pq.read_table(mixture.validation_path)
    train_ids = set(
        pa.concat_tables(pq.read_table(p) for p in mixture.train_dir.glob("*.parquet"))
        .column("id")
        .to_pylist()
    )
    val_ids = validation.column("id").to_pylist()
    assert not train_ids & set(val_ids)
    for name, n in SIZES.items():
        assert sum(v.startswith(name) for v in val_ids) == n // 10
    train, val = split_validation(SOURCES["a"], 0.1, 0, "a")
    again, _ = split_validation(SOURCES["a"], 0.1, 0, "a")
    assert train.equals(again) and val.num_rows == 1_000


def test_same_seed_same_bytes_different_seed_different_order(tmp_path):
    small = {name: t.slice(0, 3_000) for name, t in SOURCES.items()}
    first = mix(tmp_path, "one", sources=small, shard_rows=2_000)
    second = mix(tmp_path, "two", sources=small, shard_rows=2_000)
    other = mix(tmp_path, "three", sources=small, shard_rows=2_000, seed=1)
    shards = sorted(p.name for p in first.train_dir.glob("*.parquet"))
    assert len(shards) == 5  # 9000 rows / 2000 per shard
    for name in shards:
        assert (first.train_dir / name).read_bytes() == (second.train_dir / name).read_bytes()
    assert first.mixture_id == second.mixture_id != other.mixture_id
    order = lambda m: pq.read_table(m.train_dir / shards[0]).column("id").to_pylist()  # noqa: E731
    assert order(first) != order(other)
    manifest = json.loads((first.train_dir / "manifest.json").read_text())
    assert manifest["mixture_id"] == first.mixture_id and manifest["shards"] == shards


def test_mixture_id_depends_on_inputs_parameters_and_seed():
    config = MixtureSpec()
    base = mixture_id(HASHES, config, 0)
    assert base == mixture_id(dict(HASHES), MixtureSpec(), 0)
    assert base != mixture_id({**HASHES, "a": "changed"}, config, 0)
    assert base != mixture_id(HASHES, MixtureSpec(validation_fraction=0.2), 0)
    assert base != mixture_id(HASHES, config, 1)


def test_requested_shares_sum_to_one():
    shares = requested_shares(SIZES, MixtureSpec(strategy="temperature", temperature=4))
    assert abs(sum(shares.values()) - 1) < 1e-9
    assert shares["a"] < shares["b"] < shares["c"]


def test_a_mixture_folder_without_its_catalog_row_is_kept_not_rebuilt_in_place(tmp_path):
    # Another spec's run sharing this data renamed the same mixture into place and has not
    # committed its catalog row yet (or a run died before its commit): the folder is whole,
    # that run may be reading it, and the stage must neither delete nor replace it.
    from multilora_pipeline.tasks.data.outputs import StageOutput
    from multilora_pipeline.tasks.data.stages import mixture_stage
    from multilora_pipeline.tasks.workspace import Workspace
    from tests.specs import one_source_spec

    ws = Workspace.resolve(tmp_path / "ws").ensure()
    spec = one_source_spec("kept", {"name": "a", "path": "good.jsonl", "template": "gsm8k"})
    clean_path = tmp_path / "clean.parquet"
    pq.write_table(source("a", 200), clean_path)
    clean = StageOutput("decontaminate", "c1", [], {}, str(clean_path), 200, "h", False)
    first = mixture_stage(ws, clean, spec)
    folder = ws.stage_dir("mixture", first.output_id)
    shard = folder / "train" / "train-00000.parquet"
    before = shard.read_bytes()
    # The flow commits the catalog row after the stage (flows/data.py): there is none yet.
    with shard.open("rb") as reading:  # the other run reads the shard meanwhile
        again = mixture_stage(ws, clean, spec)
        assert os.fstat(reading.fileno()).st_nlink == 1  # its file was not deleted
    assert again.output_id == first.output_id and not again.reused
    assert shard.read_bytes() == before
    assert [p.name for p in folder.parent.iterdir()] == [first.output_id]  # no temporaries
