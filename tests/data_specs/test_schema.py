"""The spec schema: strict keys and types with YAML paths, combinations, secrets, stable hash."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from multilora_pipeline.data_specs.errors import SpecError
from multilora_pipeline.data_specs.formats import TEMPLATE_NAMES
from multilora_pipeline.data_specs.schema import RegistrySpec, TrainingSpec, load_spec, parse_spec

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data_specs" / "demo_tiny.yaml"
PAPER = REPO / "data_specs" / "paper_mixture.yaml"
FILE = Path("spec.yaml")


@pytest.fixture
def demo() -> dict:
    return yaml.safe_load(DEMO.read_text())


def error_of(data: dict) -> str:
    with pytest.raises(SpecError) as err:
        parse_spec(data, FILE)
    return str(err.value)


def edited(data: dict, path: str, value) -> dict:
    """A copy of `data` with the dotted `path` (list indices as numbers) set to `value`."""
    data = copy.deepcopy(data)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node = data
    for key in parents:
        node = node[key]
    node[last] = value
    return data


@pytest.mark.parametrize(
    "path,where",
    [
        ("seeed", "seeed"),  # top level
        ("sources.1.tempalte", "sources[1].tempalte"),  # in a list item
        ("dedup.near.treshold", "dedup.near.treshold"),  # two sections down
        ("arms.1.rnak", "arms[1].rnak"),
        ("base_model.tiny.hiden_size", "base_model.tiny.hiden_size"),
    ],
)
def test_unknown_keys_fail_with_their_yaml_path(demo, path, where):
    message = error_of(edited(demo, path, 1))
    assert f"{where}: unknown key" in message and str(FILE) in message
    assert "did you mean" in message


def test_unknown_key_inside_a_hub_location_names_the_yaml_path(demo):
    data = copy.deepcopy(demo)
    data["sources"][0] = {"name": "x", "template": "alpaca", "hf": {"id": "a/b", "splt": "train"}}
    assert "sources[0].hf.splt: unknown key; did you mean 'split'?" in error_of(data)


@pytest.mark.parametrize(
    "path,value,fragment",
    [
        ("dedup.near.num_perm", "128", "dedup.near.num_perm: Input should be a valid integer"),
        ("dedup.exact", "yes", "dedup.exact: Input should be a valid boolean"),
        ("seed", 1.5, "seed: Input should be a valid integer"),
        ("sources.2.priority", "high", "sources[2].priority"),
        ("mixture.strategy", "uniform", "mixture.strategy: Input should be 'proportional'"),
        ("dedup.near.threshold", 1.5, "dedup.near.threshold: Input should be less than or equal"),
        ("sources", {"name": "x"}, "sources: Input should be a valid list"),
        ("dedup.key", ["prompt", "label"], "dedup.key[1]"),
        ("training.max_steps", 0, "training.max_steps: Input should be greater than 0"),
    ],
)
def test_wrong_types_and_values_fail_with_path_and_value(demo, path, value, fragment):
    message = error_of(edited(demo, path, value))
    assert fragment in message
    shown = value[-1] if isinstance(value, list) else value
    if not isinstance(shown, dict):
        assert f"(got {shown!r}" in message  # the bad value is shown


@pytest.mark.parametrize(
    "path,value,fragment",
    [
        ("sources.0.hf", {"id": "tatsu-lab/alpaca"}, "give exactly one of path, hf or url"),
        ("sources.0.path", None, "give exactly one of path, hf or url (got none)"),
        (
            "sources.0",
            {"name": "x", "template": "alpaca", "url": "ftp://x/y.json"},
            "sources[0]: url must start with http",
        ),
        ("mixture", {"strategy": "weights"}, "mixture: strategy 'weights' needs a weights"),
        ("mixture", {"strategy": "capped"}, "strategy 'capped' needs cap"),
        ("mixture", {"size": 10, "size_tokens": 10}, "give size or size_tokens, not both"),
        (
            "mixture",
            {"strategy": "weights", "weights": {"nope": 1.0}},
            "mixture.weights names unknown sources ['nope']",
        ),
        ("sources.1.name", "instructions", "sources: names must be unique"),
        (
            "mixture",
            {"strategy": "weights", "weights": {"instructions": 2.0, "boolq": -1.0}},
            "weights must be finite numbers >= 0, got {'boolq': -1.0}",
        ),
        (
            "mixture",
            {"strategy": "weights", "weights": {"instructions": float("nan")}},
            "weights must be finite numbers >= 0",
        ),
        (
            "mixture",
            {"strategy": "weights", "weights": {"instructions": 0.0, "boolq": 0.0}},
            "weights sum to 0",
        ),
        (
            "mixture",
            {"strategy": "weights", "weights": {"instructions": 1.0, "boolq": 1.0}},
            "gives no weight to source(s) ['knowledge', 'math']: give each a weight (0 leaves",
        ),
        ("eval_suites.0.name", "boolq", "sources and eval_suites share the name(s) ['boolq']"),
        (
            "base_model.name_or_path",
            "Qwen/Qwen2.5-0.5B",
            "give exactly one of name_or_path, package or tiny",
        ),
        ("base_model.tiny.num_heads", 3, "hidden_size 128 must be divisible by num_heads 3"),
        ("training.seeds", [0, 1, 0], "seeds must be distinct, got [0, 1, 0]"),
        ("arms.1.name", "base", "'base' names the base model in every comparison"),
        ("training.seeds", [], "training.seeds: List should have at least 1 item"),
        (
            "arms.1.learning_rates",
            [0.001, -1.0],
            "arms[1].learning_rates[1]: Input should be greater than 0",
        ),
        ("arms.1.scale_learning_rates", [0.01], "scale_learning_rates is for multilora arms"),
        (
            "arms.0",
            {"name": "m", "kind": "multilora", "learning_rate": 0.001, "learning_rates": [0.01]},
            "give learning_rate or learning_rates (a grid to probe), not both",
        ),
    ],
)
def test_invalid_combinations_are_explained(demo, path, value, fragment):
    assert fragment in error_of(edited(demo, path, value))


def test_unknown_templates_fail_when_the_spec_loads_naming_file_field_and_valid_names(
    demo, tmp_path
):
    data = edited(edited(demo, "sources.1.template", "rte"), "eval_suites.0.template", "mmlux")
    file = tmp_path / "review.yaml"
    file.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError) as err:
        load_spec(file)
    message = str(err.value)
    valid = ", ".join(sorted(TEMPLATE_NAMES))
    assert str(file) in message
    assert (
        f"sources[1].template: unknown template 'rte'; did you mean 'superglue_rte'? "
        f"(use one of: {valid})"
    ) in message
    assert "eval_suites[0].template: unknown template 'mmlux'; did you mean 'mmlu'?" in message


def test_a_template_far_from_every_name_lists_the_valid_ones_without_a_guess(demo):
    message = error_of(edited(demo, "eval_suites.2.template", "xyz"))
    assert "eval_suites[2].template: unknown template 'xyz' (use one of: alpaca, arc," in message
    assert "did you mean" not in message


@pytest.mark.parametrize(
    "path,value",
    [
        ("sources.0.hf_token", "hf_abc"),
        ("base_model.api_key", "sk-123"),
        ("registry.password", "x"),
        ("sources.0.url", "https://user:pw@example.com/data.jsonl"),
        ("sources.0.url", "https://example.com/data.jsonl?token=abc"),
    ],
)
def test_specs_cannot_hold_secrets(demo, path, value):
    data = edited(demo, path, value)
    if path.endswith("url"):
        data["sources"][0].pop("path")
    message = error_of(data)
    assert "credential" in message and "environment" in message
    assert value.split("@")[0].split("=")[-1] not in message.replace("https://user", "")


HF_TOKEN_LIKE = "hf_" + "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3z"


@pytest.mark.parametrize(
    "param", ["auth", "sig", "key", "X-Amz-Security-Token", "X-Amz-Credential", "access_token"]
)
def test_signed_and_authenticated_urls_are_refused(demo, param):
    data = edited(demo, "sources.0.url", f"https://example.com/data.json?{param}=s3cr3tv4lue&x=1")
    data["sources"][0].pop("path")
    message = error_of(data)
    assert "url holds a credential" in message and "s3cr3tv4lue" not in message


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("description", f"my run, token {HF_TOKEN_LIKE}"),
        ("base_model.tiny", None),  # replaced below: name_or_path instead of tiny
        ("sources.1.path", "AKIAABCDEFGHIJKLMNOP.json"),
        ("description", "Authorization: Bearer abcdefghijklmnopqrstuvwxyz012345"),
    ],
)
def test_token_shaped_values_are_refused_anywhere_without_being_repeated(demo, path, value):
    if value is None:  # a token pasted as the base model's name
        data = copy.deepcopy(demo)
        data["base_model"] = {"name_or_path": HF_TOKEN_LIKE}
        path, value = "base_model.name_or_path", HF_TOKEN_LIKE
    else:
        data = edited(demo, path, value)
    message = error_of(data)
    assert "looks like a credential" in message and path.split(".")[-1] in message
    assert HF_TOKEN_LIKE not in message and "AKIA" not in message and "abcdefghijkl" not in message


def test_demo_and_paper_mixture_load_without_network():
    demo, _ = load_spec(DEMO)
    real, _ = load_spec(DEMO.with_name("demo.yaml"))
    paper, base = load_spec(PAPER)
    assert base == PAPER.parent and demo.name == "demo-tiny" and real.name == "demo"
    assert real.base_model.gguf_file and real.registry.must_beat_base  # the real-model demo
    assert [s.name for s in real.sources] == [s.name for s in demo.sources]
    categories = {s.category for s in paper.sources}
    assert categories == {"instruction", "nlu", "knowledge", "math"}
    hub_ids = {s.hf.id for s in paper.sources}
    assert {"tatsu-lab/alpaca", "databricks/databricks-dolly-15k", "aps/super_glue"} <= hub_ids
    assert {"cais/mmlu", "allenai/ai2_arc", "openai/gsm8k"} <= hub_ids
    assert {s.hf.config for s in paper.sources if s.hf.id == "aps/super_glue"} == {
        "boolq",
        "rte",
        "wic",
        "multirc",
    }
    assert all(s.hf.revision for s in [*paper.sources, *paper.eval_suites])
    assert {s.hf.split for s in paper.eval_suites} <= {"validation", "test"}
    assert paper.base_model.name_or_path and paper.base_model.tiny is None
    from multilora_pipeline.tasks.data.templates import TEMPLATES

    assert {s.template for s in [*paper.sources, *paper.eval_suites]} <= set(TEMPLATES)


def reordered(node):
    """The same content with every mapping's keys in reverse order."""
    if isinstance(node, dict):
        return {k: reordered(node[k]) for k in reversed(list(node))}
    if isinstance(node, list):
        return [reordered(v) for v in node]
    return node


def test_spec_hash_is_stable_and_ignores_key_order_and_spelled_out_defaults(demo, tmp_path):
    first = parse_spec(demo, FILE).spec_hash
    assert parse_spec(copy.deepcopy(demo), FILE).spec_hash == first
    assert parse_spec(reordered(demo), FILE).spec_hash == first
    assert parse_spec(edited(demo, "dedup.near.shingle", 5), FILE).spec_hash == first  # default
    assert parse_spec(edited(demo, "seed", 1), FILE).spec_hash != first
    assert parse_spec(edited(demo, "decontamination.ngram", 12), FILE).spec_hash != first
    # `5e-3` (which plain YAML 1.1 reads as text) is the number 0.005
    found = re.search(r"learning_rate: (\d+)\.0e-(\d+)", DEMO.read_text())
    assert found, "the demo spec writes its learning rate as N.0e-M"
    text = DEMO.read_text().replace(found[0], f"learning_rate: {found[1]}e-{found[2]}")
    (tmp_path / "demo.yaml").write_text(text)
    assert load_spec(tmp_path / "demo.yaml")[0].spec_hash == first


def test_file_level_errors(tmp_path):
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(SpecError, match="must be a YAML mapping"):
        load_spec(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(tmp_path / "bad.yaml")


def test_primary_metric_must_be_one_the_spec_produces(tmp_path):
    import yaml

    from multilora_pipeline.data_specs.schema import demo_spec_path

    data = yaml.safe_load(demo_spec_path(tiny=True).read_text())
    data["registry"]["primary_metric"] = "eval_macro_accuracy"
    with pytest.raises(SpecError, match=r"(?s)registry.*eval_macro_accuracy.*knowledge_mc_acc"):
        parse_spec(data, tmp_path / "typo.yaml")


def test_gsm8k_suites_offer_strict_and_flexible_scores_as_primary_metric(demo):
    # math_gen is the demo's gsm8k generation suite; knowledge_mc a multiple-choice one.
    for metric in ("math_gen_exact_match", "math_gen_strict_match", "math_gen_flexible_extract"):
        assert parse_spec(edited(demo, "registry.primary_metric", metric), FILE)
    assert "not a metric this spec produces" in error_of(
        edited(demo, "registry.primary_metric", "knowledge_mc_flexible_extract")
    )


def test_must_beat_base_defaults_on_and_touches_only_the_registry_section(demo):
    assert RegistrySpec().must_beat_base is True
    spec = parse_spec(demo, FILE)  # the demo turns it off: its random base sits at chance
    on = parse_spec(edited(demo, "registry.must_beat_base", True), FILE)
    assert on.registry.must_beat_base and not spec.registry.must_beat_base
    assert on.spec_hash != spec.spec_hash
    # Trained arms are reused by a hash of base_model, arms, training and seed
    # (tasks/identity.py training_hash): none of them moves with a registry setting.
    changed = {k for k, v in on.canonical().items() if spec.canonical()[k] != v}
    assert changed == {"registry"}
    assert "registry.must_beat_base" in error_of(edited(demo, "registry.must_beat_base", "no"))


def test_a_home_relative_model_folder_is_expanded(demo, monkeypatch):
    monkeypatch.setenv("HOME", "/home/someone")
    spec = parse_spec(edited(demo, "base_model", {"name_or_path": "~/models/m"}), FILE)
    assert spec.base_model.name_or_path == "/home/someone/models/m"


def test_arm_adapter_fields_are_multilora_configs_own():
    import dataclasses

    from multilora_pipeline.data_specs.schema import ADAPTER_FIELDS, ArmSpec
    from multilora_pipeline.models.multilora import MultiLoRAConfig

    config_fields = {f.name for f in dataclasses.fields(MultiLoRAConfig)} - {"init"}
    assert set(ADAPTER_FIELDS) == config_fields  # use_rslora included, declared once
    assert ArmSpec.model_fields["use_rslora"].description.startswith("Scale by alpha / sqrt")
    arm = ArmSpec(name="m", kind="multilora", use_rslora=True, n_modules=2, rank=4)
    assert arm.adapter_config() == MultiLoRAConfig(n_modules=2, rank=4, use_rslora=True)
    lora = ArmSpec(name="l", kind="lora", rank=8, scale_shape="vector").adapter_config()
    assert (lora.n_modules, lora.scale_shape, lora.init) == (1, "scalar", "lora")
    assert ArmSpec(name="f", kind="full").adapter_config() is None


def test_a_bad_adapter_setting_fails_at_load_with_the_configs_reason(tmp_path):
    from multilora_pipeline.data_specs.schema import ArmSpec

    with pytest.raises(ValueError, match="scale_shape must be one of"):
        ArmSpec(name="m", kind="multilora", scale_shape="diagonal")
    with pytest.raises(ValueError, match="scale_shape must be one of"):
        ArmSpec(name="l", kind="lora", scale_shape="diagonal")  # checked, though lora ignores it
    with pytest.raises(ValueError, match="dropout must be in"):
        ArmSpec(name="f", kind="full", dropout=5.0)
    with pytest.raises(ValueError, match="n_modules must be at most 64"):
        ArmSpec(name="m", kind="multilora", n_modules=65)


def _spec_error_in_a_fresh_process(tmp_path, text: str) -> str:
    """`mlora run` on a spec file holding `text`: its error line (exit code 2). A subprocess
    with a timeout, so a spec that would hang fails the test instead of hanging it."""
    import subprocess
    import sys

    spec = tmp_path / "hostile.yaml"
    spec.write_text(text)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "multilora_pipeline.flows.cli",
            "--workspace",
            str(tmp_path / "ws"),
            "run",
            str(spec),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert not (tmp_path / "ws" / "mlflow.db").exists()  # refused before anything was recorded
    return done.stderr


@pytest.mark.slow  # a CLI subprocess
def test_a_yaml_alias_bomb_is_refused_before_it_is_expanded(tmp_path):
    # Nine anchors of nine: 9**9 values from a few hundred bytes.
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    stderr = _spec_error_in_a_fresh_process(tmp_path, "\n".join(lines) + "\n")
    assert "error:" in stderr and "expands to more than 100,000 values" in stderr
    assert "Traceback" not in stderr


@pytest.mark.slow  # a CLI subprocess
def test_very_deep_yaml_is_refused_in_one_line(tmp_path):
    stderr = _spec_error_in_a_fresh_process(tmp_path, "x: " + "[" * 5000 + "]" * 5000 + "\n")
    assert "error:" in stderr and "nests too deeply" in stderr
    assert "Traceback" not in stderr and "RecursionError" not in stderr


def test_nesting_below_the_recursion_limit_is_refused_too(tmp_path):
    deep = "bottom"
    for _ in range(45):
        deep = [deep]
    with pytest.raises(SpecError, match="nests deeper than 40 levels"):
        parse_spec({"name": "x", "description": deep}, tmp_path / "s.yaml")


def test_a_learning_rate_grid_lists_what_each_arm_probes(demo):
    own = edited(demo, "arms.0.learning_rate", 2e-3)
    spec = parse_spec(edited(own, "training.learning_rates", [1e-4, 1e-3]), FILE)
    multilora, lora = spec.arms
    assert multilora.probe_grid(spec.training) == []  # it fixes its own
    assert lora.probe_grid(spec.training) == [(1e-4, None), (1e-3, None)]
    data = edited(demo, "arms.0.scale_learning_rates", [1e-2, 1e-1])
    spec = parse_spec(data, FILE)
    rate = spec.training.learning_rate
    assert spec.arms[0].probe_grid(spec.training) == [(rate, 1e-2), (rate, 1e-1)]
    fixed = spec.arms[0].with_learning_rates(rate, 1e-2, spec.training)
    assert fixed.probe_grid(spec.training) == []
    # A probe at the rates the arm used before has that earlier run's identity.
    plain = parse_spec(demo, FILE).arms[0]
    assert (
        spec.arms[0].with_learning_rates(rate, rate, spec.training).identity() == plain.identity()
    )
    assert fixed.identity() != plain.identity()
    no_validation = edited(data, "mixture.validation_fraction", 0.0)
    assert (
        "arms ['multilora'] probe a learning-rate grid, which is decided on the mixture's "
        "validation split: set mixture.validation_fraction above 0" in error_of(no_validation)
    )


def test_seeds_and_grids_leave_the_runs_they_already_have_the_same(demo):
    """A run's identity ignores how runs are chosen (seeds, grids, probe length): adding
    seeds finds the first seed's run again."""
    plain = parse_spec(demo, FILE)
    seeded = parse_spec(edited(demo, "training.seeds", [0, 1, 2]), FILE)
    assert seeded.training.run_seeds == [0, 1, 2] and plain.training.run_seeds == [0]
    assert seeded.training.for_run(0).identity() == plain.training.for_run(0).identity()
    assert seeded.training.for_run(1).identity() != plain.training.for_run(0).identity()
    probing = parse_spec(edited(demo, "training.probe_steps", 5), FILE)
    assert probing.training.for_run(0, probe=True).max_steps == 5
    assert probing.training.for_run(0).identity() == plain.training.for_run(0).identity()
    grid = parse_spec(edited(demo, "arms.1.learning_rates", [1e-3]), FILE)
    assert grid.arms[1].identity() == plain.arms[1].identity()


@pytest.mark.parametrize(
    "name, other", [("mixed_precision", "bf16"), ("loss_weighting", "example")]
)
def test_fields_added_later_left_at_their_default_keep_the_runs_trained_before_them(
    demo, name, other
):
    default = TrainingSpec.model_fields[name].default
    plain = parse_spec(edited(demo, f"training.{name}", default), FILE).training
    assert name not in plain.identity()  # as before the field existed
    changed = parse_spec(edited(demo, f"training.{name}", other), FILE).training
    assert changed.identity() == {**plain.identity(), name: other}


def test_mlflow_parameters_show_urls_redacted_and_the_hash_still_sees_them(demo):
    with_url = copy.deepcopy(demo)
    with_url["sources"][0].pop("path")
    with_url["sources"][0]["url"] = "https://u:@example.org/d.jsonl?v=2&sess=Zq8xv2KpT0mWc7RbN4sLdE"
    with pytest.raises(SpecError, match="credential"):  # user:...@ is refused outright
        parse_spec(with_url, FILE)
    with_url["sources"][0]["url"] = "https://example.org/d.jsonl?v=2&sess=Zq8xv2KpT0mWc7RbN4sLdE"
    spec = parse_spec(with_url, FILE)
    assert spec.params()["sources"][0]["url"] == "https://example.org/d.jsonl?v=2&sess=***"
    assert spec.canonical()["sources"][0]["url"].endswith("sess=Zq8xv2KpT0mWc7RbN4sLdE")
    other = edited(
        with_url, "sources.0.url", "https://example.org/d.jsonl?v=2&sess=another-long-value"
    )
    assert parse_spec(other, FILE).spec_hash != spec.spec_hash  # identity is the real URL


def test_arms_vllm_cannot_serve_with_its_defaults_are_named_with_the_flag(demo):
    from multilora_pipeline.data_specs.vllm_limits import vllm_notes

    assert vllm_notes(parse_spec(demo, FILE)) == []  # 4 x 4 and 16: vLLM's default 16
    # vLLM refuses only `rank > max_lora_rank`: 3 x 4 = 12, not itself one of the flag's
    # values, is served under the default 16 with no flag.
    assert vllm_notes(parse_spec(edited(demo, "arms.0.n_modules", 3), FILE)) == []
    wide = edited(edited(demo, "arms.0.n_modules", 8), "arms.0.rank", 5)
    (note,) = vllm_notes(parse_spec(wide, FILE))
    assert note.startswith("arms[0] (multilora): its PEFT export has rank 40")
    assert "--max-lora-rank 64" in note
    huge = edited(demo, "arms.1.rank", 600)
    (note,) = vllm_notes(parse_spec(huge, FILE))
    assert "above the largest rank vLLM serves (512)" in note


def test_a_path_outside_the_spec_folder_is_allowed_and_said_with_the_resolved_file(
    demo, tmp_path, caplog
):
    import logging

    from multilora_pipeline.data_specs.schema import check_local_files

    folder = tmp_path / "specs"
    folder.mkdir()
    outside = tmp_path / "shared.jsonl"
    outside.write_text("{}\n")
    data = edited(demo, "sources.1.path", "../shared.jsonl")
    for i, source in enumerate(data["sources"]):
        if i != 1:
            source["path"] = str(DEMO.parent / source["path"])
    for suite in data["eval_suites"]:
        suite["path"] = str(DEMO.parent / suite["path"])
    spec = parse_spec(data, folder / "spec.yaml")
    with caplog.at_level(logging.WARNING, logger="mlora.spec"):
        check_local_files(spec, folder / "spec.yaml", folder)
    assert f"sources[1].path reads {outside}, outside the spec's folder" in caplog.text
    assert "sources[0]" not in caplog.text  # absolute paths are taken as meant


def test_look_alike_names_are_not_taken_for_tokens(demo):
    """A dataset or folder that merely starts like a key prefix is no credential."""
    for text in ("sk-slovak-news-summaries-dataset", "org/sk-common-crawl-2024-filtered"):
        parse_spec(edited(demo, "description", text), FILE)
    assert "looks like a credential" in error_of(
        edited(demo, "description", "key sk-proj4Xb9TqLmN2vR8sYw1ZcK3hJ")
    )
