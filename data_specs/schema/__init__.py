"""The pipeline spec: one YAML file describes a whole run, from sources to promotion.

Every section is a strict pydantic model: unknown keys and wrong types fail
with the YAML path of the bad value (e.g. ``sources[2].template``). Each field's
docstring is its documentation. `PipelineSpec.spec_hash` is a hash of the
canonical (validated, defaults filled) form, recorded everywhere downstream.

One job per file, imports pointing one way (credentials <- the models <- loader):

    credentials.py  secret patterns, the URL check, redact_url (imports no model)
    strict.py       Strict, the base of every section, and NAME_RE
    sources.py      DataLocation, HubDataset, SourceSpec, EvalSuiteSpec
    data_stages.py  DedupSpec, NearDedupSpec, DecontaminationSpec, MixtureSpec
    base_model.py   BaseModelSpec, TinyModelSpec
    training.py     ArmSpec (its adapter fields are MultiLoRAConfig's), TrainingSpec
    evaluation.py   EvaluationSpec, RegistrySpec
    spec.py         DataSpec, PipelineSpec: the whole file, cross-section checks, spec_hash
    loader.py       load_spec, parse_spec, error messages, check_local_files, demo_spec_path

Code outside this package imports from here, ``multilora_pipeline.data_specs.schema``,
never from one of its files: which file defines a section is this package's business.
The modules inside import from each other's files directly.
"""

from multilora_pipeline.data_specs.schema.base_model import BaseModelSpec, TinyModelSpec
from multilora_pipeline.data_specs.schema.credentials import redact_url
from multilora_pipeline.data_specs.schema.data_stages import (
    DecontaminationSpec,
    DedupSpec,
    MixtureSpec,
    NearDedupSpec,
)
from multilora_pipeline.data_specs.schema.evaluation import EvaluationSpec, RegistrySpec
from multilora_pipeline.data_specs.schema.loader import (
    check_local_files,
    demo_spec_path,
    load_spec,
    parse_spec,
)
from multilora_pipeline.data_specs.schema.sources import (
    DataLocation,
    EvalSuiteSpec,
    HubDataset,
    SourceSpec,
)
from multilora_pipeline.data_specs.schema.spec import DataSpec, PipelineSpec
from multilora_pipeline.data_specs.schema.training import ADAPTER_FIELDS, ArmSpec, TrainingSpec

__all__ = [
    "ADAPTER_FIELDS",
    "ArmSpec",
    "BaseModelSpec",
    "DataLocation",
    "DataSpec",
    "DecontaminationSpec",
    "DedupSpec",
    "EvalSuiteSpec",
    "EvaluationSpec",
    "HubDataset",
    "MixtureSpec",
    "NearDedupSpec",
    "PipelineSpec",
    "RegistrySpec",
    "SourceSpec",
    "TinyModelSpec",
    "TrainingSpec",
    "check_local_files",
    "demo_spec_path",
    "load_spec",
    "parse_spec",
    "redact_url",
]
