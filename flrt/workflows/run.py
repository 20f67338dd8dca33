"""Workflows by name, and the cross-site evaluation workflow.

:data:`WORKFLOWS` maps each ``[workflow] name`` a job may use (see :data:`flrt.job.WORKFLOW_PARAMS`)
to its :class:`~flrt.workflows.controller.Workflow`; :func:`run_workflow` runs a job's.
"""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType
from typing import Final

from flrt.errors import WorkflowError
from flrt.job import CrossSiteEvalParams, JobSpec
from flrt.tasks import Weights

from .controller import Controller, Workflow
from .evaluation import cross_site_eval
from .rounds import RoundPolicy
from .state import WorkflowState
from .training import fedavg, fedopt, fedprox, job_seed, scaffold

__all__ = ["WORKFLOWS", "cross_site_evaluation", "run_workflow"]


async def cross_site_evaluation(
    controller: Controller,
    job: JobSpec,
    *,
    job_id: str,
    initial_weights: Weights | None = None,
    resume: WorkflowState | None = None,
) -> WorkflowState:
    """The ``cross_site_eval`` workflow: every site trains once from ``initial_weights`` (the model
    to validate), then every site evaluates every site's model and, unless
    ``include_global = false``, ``initial_weights`` itself."""
    params = job.workflow.params
    if not isinstance(params, CrossSiteEvalParams):
        raise WorkflowError(f"the job asks for {job.workflow.name}, not cross_site_eval")
    if resume is not None:
        state = resume
    elif initial_weights is None:
        raise WorkflowError("a new workflow needs initial_weights")
    else:
        state = WorkflowState(
            job_id=job_id,
            workflow=job.workflow.name,
            seed=job_seed(job, job_id),
            round=0,
            weights=dict(initial_weights),
            history=dict(controller.site_history()),
            population=len(job.targets) if job.targets else len(controller.available_sites()),
        )
    if state.finished:
        return state
    cross = await cross_site_eval(
        controller,
        job_id=job_id,
        round=1,
        weights=state.weights,
        candidates=frozenset(job.targets) if job.targets else None,
        policy=RoundPolicy.from_spec(job.workflow, all_sites=True),
        seed=state.seed,
        history=state.history,
        include_global=params.include_global,
    )
    state = replace(state, round=1, cross_site=cross, finished=True)
    await controller.save_checkpoint(state)
    return state


#: Every workflow a job may name.
WORKFLOWS: Final = MappingProxyType(
    {
        "fedavg": fedavg,
        "fedprox": fedprox,
        "scaffold": scaffold,
        "fedopt": fedopt,
        "cross_site_eval": cross_site_evaluation,
    }
)


async def run_workflow(
    controller: Controller,
    job: JobSpec,
    *,
    job_id: str,
    initial_weights: Weights | None = None,
    resume: WorkflowState | None = None,
) -> WorkflowState:
    """Run (or resume) ``job``'s workflow. Raises what the workflow raises, and
    :class:`~flrt.errors.WorkflowError` for a workflow name this build does not have."""
    workflow: Workflow | None = WORKFLOWS.get(job.workflow.name)
    if workflow is None:
        raise WorkflowError(f"unknown workflow {job.workflow.name!r}")
    return await workflow(
        controller, job, job_id=job_id, initial_weights=initial_weights, resume=resume
    )
