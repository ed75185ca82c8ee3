"""Flow runs a killed process left "Running" in Prefect: found and marked Crashed by the
next run of the same spec in the same workspace.

A run of a spec holds the spec's lock (flows/pipeline.py: `spec_lock`) for its whole life,
so once the next run holds it, any other flow run of that spec and workspace still marked
Running or Pending is one whose process died. Runs are recognised by a tag each run puts
on itself (`run_tag`); runs of older code, which carry none, are left as they are.
"""

from __future__ import annotations

import logging

from multilora_pipeline.data_specs.schema import PipelineSpec
from multilora_pipeline.models.content import content_key
from multilora_pipeline.tasks.workspace import Workspace

log = logging.getLogger("mlora.pipeline")


def run_tag(ws: Workspace, spec: PipelineSpec) -> str:
    """The tag of every flow run of `spec` in `ws` (the workspace by its path's key)."""
    return f"mlora-spec:{spec.name}@{content_key(str(ws.root))[:8]}"


def close_stale_runs(ws: Workspace, spec: PipelineSpec) -> list[str]:
    """Tag the current flow run, and mark this spec's other Running/Pending flow runs in
    this workspace Crashed. Call it holding the spec lock. Returns the ids marked."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.runtime import flow_run
    from prefect.states import Crashed

    tag, current = run_tag(ws, spec), flow_run.id
    marked = []
    with get_client(sync_client=True) as client:
        if current:
            client.update_flow_run(current, tags=sorted({*flow_run.tags, tag}))
        open_runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=[tag]),
                state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING])
                ),
            )
        )
        for run in open_runs:
            if str(run.id) == str(current):
                continue
            client.set_flow_run_state(
                run.id,
                Crashed(
                    message="its process was killed: found still Running by the next run "
                    f"of spec {spec.name!r}, which holds the spec's lock"
                ),
                force=True,
            )
            marked.append(str(run.id))
    if marked:
        log.warning(
            "marked %d flow run(s) of spec %s Crashed: their process was killed (%s)",
            len(marked),
            spec.name,
            ", ".join(marked),
        )
    return marked
