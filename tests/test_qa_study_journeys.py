"""Study journeys an operator or a researcher takes, end to end through the simulator (the real
server and site actors over in-memory links), each pinned by the defect it once had.

The trainers below are importable by name (``tests.test_qa_study_journeys:Counted``), as a study's
own trainer would be at its sites.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

from flrt.simulator import simulate
from flrt.tasks import EvalResult, TrainResult, TrainTask, Weights
from flrt.trainer import SiteContext

HERE = "tests.test_qa_study_journeys"


class Counted:
    """Adds one to every weight and claims ``num_samples`` samples."""

    def __init__(self, num_samples: int = 1) -> None:
        self.num_samples = num_samples

    def initial_weights(self) -> Weights:
        return {"w": np.zeros(3)}

    def train(self, task: TrainTask, context: SiteContext) -> TrainResult:
        weights = {name: value + 1 for name, value in task.weights.items()}
        return TrainResult(weights=weights, num_samples=self.num_samples, metrics={"loss": 1.0})

    def evaluate(self, weights: Weights, context: SiteContext) -> EvalResult:
        return EvalResult(metrics={"loss": 1.0}, num_samples=1)


def job(
    tmp_path: Path, trainer: str, args: str = "", *, min_sites: int = 1, params: str = ""
) -> Path:
    folder = tmp_path / "job"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "job.toml").write_text(
        f'name = "qa"\n[workflow]\nname = "fedavg"\nrounds = 2\nmin_sites = {min_sites}\n'
        f"[workflow.params]\n{params}\n"
        f'[trainer]\nspec = "{HERE}:{trainer}"\n[trainer.args]\n{args}\n'
    )
    return folder


async def run(tmp_path: Path, folder: Path, sites: int = 2) -> Any:
    with anyio.fail_after(60):
        return await simulate(folder, sites=sites, workspace=tmp_path / "ws")


# ----------------------------------------------------------------------------- what trainers return


@pytest.mark.anyio
async def test_a_sample_count_too_large_to_send_fails_the_task_not_the_site(
    tmp_path: Path,
) -> None:
    """A count past what a message can carry used to crash the site's node (an OverflowError
    from the encoder, after the task was done); now the trainer's answer is refused at the site,
    naming the trainer, and the round sees a failed answer."""
    result = await run(tmp_path, job(tmp_path, "Counted", f"num_samples = {2**53}"))
    assert result.status == "finished", result.reason  # the largest count a trainer may claim
    result = await run(tmp_path / "huge", job(tmp_path / "huge", "HugeCount"))
    assert result.status == "failed"
    assert "TrainerOutputError" in result.reason
    assert f"num_samples {2**70}" in result.reason
    assert f"{HERE}:HugeCount" in result.reason


class HugeCount(Counted):
    """Claims more samples than a 64-bit count holds (TOML cannot say it, so it is built in)."""

    def __init__(self) -> None:
        super().__init__(num_samples=2**70)


class InfiniteLoss(Counted):
    """Trains well but reports a loss that overflowed."""

    def train(self, task: TrainTask, context: SiteContext) -> TrainResult:
        result = super().train(task, context)
        return TrainResult(weights=result.weights, num_samples=1, metrics={"loss": float("inf")})


@pytest.mark.anyio
async def test_a_metric_that_is_not_finite_is_refused_at_the_site_naming_the_trainer(
    tmp_path: Path,
) -> None:
    """It used to leave the site as if all was well, and the server dropped the whole reply as a
    'malformed result': nothing in the site's log, nothing naming the trainer."""
    result = await run(tmp_path, job(tmp_path, "InfiniteLoss"))
    assert result.status == "failed"
    assert "malformed" not in result.reason
    assert f"trainer {HERE}:InfiniteLoss: train() returned metric 'loss' = inf" in result.reason
    assert "error id" in result.reason  # the site's log has the details


class Initial(Counted):
    """Round 0's model is one of :data:`INITIAL_MODELS`."""

    def __init__(self, model: str) -> None:
        super().__init__()
        self.model = model

    def initial_weights(self) -> Weights:
        return dict(INITIAL_MODELS[self.model])


INITIAL_MODELS: dict[str, Weights] = {
    "empty": {},
    "unnamed": {"": np.zeros(2)},
    "metadata": {"__metadata__": np.zeros(2)},
    "complex": {"w": np.zeros(2, np.complex64)},
    "big-endian": {"w": np.arange(3, dtype=">f8")},
}


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        ("empty", "initial_weights() returned an empty model"),
        ("unnamed", "initial_weights() returned an array named '', which a model file cannot"),
        ("metadata", "returned an array named '__metadata__', which a model file cannot"),
        ("complex", "returned weights 'w' of dtype complex64, which a global model cannot hold"),
    ],
)
@pytest.mark.anyio
async def test_a_round_0_model_the_server_cannot_keep_fails_naming_the_trainer(
    tmp_path: Path, model: str, reason: str
) -> None:
    """An empty model used to train for every round and 'finish'; a nameless array failed the
    job with a checkpoint's error naming neither the trainer nor the array; a complex one failed
    it with an 'internal error' from the aggregator."""
    result = await run(tmp_path, job(tmp_path, "Initial", f'model = "{model}"'))
    assert result.status == "failed"
    assert result.reason.startswith(f"trainer {HERE}:Initial: "), result.reason
    assert reason in result.reason
    assert not result.rounds


@pytest.mark.anyio
async def test_a_round_0_model_in_big_endian_byte_order_trains(tmp_path: Path) -> None:
    """numpy arrays read from some files are big-endian: the aggregator failed on them with an
    'internal error' about ufunc signatures. The model is the same numbers in either order."""
    result = await run(tmp_path, job(tmp_path, "Initial", 'model = "big-endian"'))
    assert result.status == "finished", result.reason
    assert result.weights["w"].dtype == np.float64
    np.testing.assert_array_equal(result.weights["w"], [2.0, 3.0, 4.0])


# ----------------------------------------------------------------------------- SCAFFOLD, resumed


def test_a_scaffold_round_trained_again_gives_the_same_answer(tmp_path: Path) -> None:
    """A restarted server asks again for the round it was in, or (its last checkpoint damaged)
    the one before. The example trainers kept one c_i, already moved on by the first try, so the
    second answer differed and the resumed job ended with another model than a run that never
    stopped (by 0.6% of the weights in a 12-round logistic regression)."""
    from flrt.examples.logreg import LogisticRegressionTrainer

    trainer = LogisticRegressionTrainer(num_sites=2, learning_rate=0.5)
    context = SiteContext.create("site-1", scratch=tmp_path)
    weights = trainer.initial_weights()
    c = {name: np.full_like(value, 0.01) for name, value in weights.items()}

    def train(round: int, model: Weights) -> TrainResult:
        return trainer.train(TrainTask("j", round, model, extras={"scaffold_c": c}), context)

    answers = {1: train(1, weights)}
    for r in range(2, 5):
        answers[r] = train(r, answers[r - 1].weights)
    for r in (4, 3, 4):  # the last round again, then the one before and the last once more
        again = train(r, answers[r - 1].weights)
        for name in weights:
            np.testing.assert_array_equal(again.weights[name], answers[r].weights[name])
            np.testing.assert_array_equal(
                again.extras["scaffold_delta"][name],
                answers[r].extras["scaffold_delta"][name],
            )
    assert len(list(tmp_path.glob("scaffold_c_local-*.safetensors"))) == 3


# ----------------------------------------------------------------------------- job files


def big_job(tmp_path: Path, padding: int) -> Path:
    """A valid job whose job.toml carries ``padding`` bytes of comments."""
    folder = job(tmp_path, "Counted")
    text = (folder / "job.toml").read_text()
    (folder / "job.toml").write_text(text + ("#" + "x" * 98 + "\n") * (padding // 100))
    return folder


def test_a_job_file_past_its_bound_is_refused_by_the_client_naming_file_and_bound(
    tmp_path: Path,
) -> None:
    """A job file of a few MiB used to go to the server and fail as 'message body of 60121456
    bytes exceeds the frame limit; send an object' (and one of 1 to 4 MiB as 'job_toml must be
    the text of a job.toml'): neither names the file or says what is wrong with it."""
    from flrt.admin import read_job
    from flrt.errors import JobError
    from flrt.job import MAX_JOB_FILE_BYTES

    folder = big_job(tmp_path, 3 * MAX_JOB_FILE_BYTES)
    size = (folder / "job.toml").stat().st_size
    with pytest.raises(JobError) as refused:
        read_job(folder)
    assert str(refused.value) == (
        f"{folder / 'job.toml'}: is {size:,} bytes, more than a job file may be"
        f" ({MAX_JOB_FILE_BYTES:,} bytes): a job names its data (a data_key the sites map to"
        " files), it does not carry it"
    )
    _, text = read_job(big_job(tmp_path / "fits", MAX_JOB_FILE_BYTES - 1000))
    assert len(text) <= MAX_JOB_FILE_BYTES


@pytest.mark.anyio
async def test_a_job_file_past_its_bound_is_refused_by_the_server_naming_file_and_bound(
    tmp_path: Path,
) -> None:
    from flrt.errors import AdminError
    from flrt.job import MAX_JOB_FILE_BYTES

    folder = big_job(tmp_path, 2 * MAX_JOB_FILE_BYTES)
    with pytest.raises(AdminError) as refused:
        await run(tmp_path, folder)
    assert refused.value.code == "invalid_job"
    assert f"{folder / 'job.toml'}: is " in refused.value.reason
    assert f"more than a job file may be ({MAX_JOB_FILE_BYTES:,} bytes)" in refused.value.reason


# ----------------------------------------------------------------------------- the README's study

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.anyio
async def test_the_readmes_study_runs_the_logreg_example_on_the_demos_three_hospitals(
    tmp_path: Path,
) -> None:
    """The README submits examples/logreg to the three hospitals of ``make demo``; the job split
    the data in two, so hospital-c could not find its part and round 1 failed."""
    from flrt.demo import SITES

    with anyio.fail_after(60):
        result = await simulate(EXAMPLES / "logreg", sites=list(SITES), workspace=tmp_path / "ws")
    assert result.status == "finished", result.reason
    assert result.rounds[-1]["accepted"] == sorted(SITES)
    assert result.cross_site is not None
    assert result.cross_site["evaluators"] == sorted(SITES)
    assert result.cross_site["missing"] == []


def test_the_readmes_simulate_command_names_as_many_sites_as_the_example_splits_the_data() -> None:
    import re
    import tomllib

    readme = (EXAMPLES.parent / "README.md").read_text(encoding="utf-8")
    job = tomllib.loads((EXAMPLES / "logreg" / "job.toml").read_text(encoding="utf-8"))
    sites = re.search(r"flrt simulate examples/logreg --sites (\d+)", readme)
    assert sites is not None
    assert int(sites.group(1)) == job["trainer"]["args"]["num_sites"]


# ----------------------------------------------------------------------------- sites' histories


class EvaluationFailsAtSite2(Counted):
    """site-2 cannot evaluate; site-1 evaluates until the site gives up on the task."""

    def evaluate(self, weights: Weights, context: SiteContext) -> EvalResult:
        if context.site == "site-2":
            raise ValueError("no validation data here")
        deadline = time.monotonic() + 30  # as a long evaluation polls its context
        while not context.abort() and time.monotonic() < deadline:
            time.sleep(0.01)
        context.raise_if_aborted()
        return super().evaluate(weights, context)


def test_a_site_still_working_when_the_others_fail_the_round_is_not_counted_late() -> None:
    from flrt.workflows.quorum import QuorumRound, SiteOutcome
    from flrt.workflows.sampling import SiteHistory

    q = QuorumRound(1, ["a", "b", "c"], min_sites=3, now=0)
    q.site_failed("c", "boom", now=1)
    assert q.reason is not None
    assert q.reason.startswith("quorum unreachable")
    assert q.outcomes() == {
        "a": SiteOutcome.CANCELLED,
        "b": SiteOutcome.CANCELLED,
        "c": SiteOutcome.FAILED,
    }
    assert SiteHistory(on_time=2).record(SiteOutcome.CANCELLED) == SiteHistory(on_time=2)
    slow = QuorumRound(1, ["a", "b"], min_sites=2, round_timeout=5.0, now=0)
    slow.result_received("a", 1, now=1)
    slow.handle_timer(now=5)  # b was too slow: late
    assert slow.outcomes() == {"a": SiteOutcome.ON_TIME, "b": SiteOutcome.LATE}


@pytest.mark.anyio
async def test_a_good_site_keeps_a_clean_history_when_another_fails_every_evaluation(
    tmp_path: Path,
) -> None:
    """An evaluation needs every site (min_sites = 2 here); site-2 fails it at once. site-1, still
    evaluating, used to be counted 'late' each time (what 'status' shows, and what 'reliable'
    sampling avoids), and its cross-site cells said 'late: cancelled after the grace period'."""
    import json

    params = "evaluate_every = 1\ncross_site_eval = true"
    folder = job(tmp_path, "EvaluationFailsAtSite2", min_sites=2, params=params)
    result = await run(tmp_path, folder)
    assert result.status == "finished", result.reason
    registry = json.loads((tmp_path / "ws" / "server" / "registry.json").read_text())
    assert registry["sites"]["site-1"]["history"] == {"on_time": 3, "late": 0, "failed": 0}
    missing = {(site, model): why for site, model, why in result.cross_site["missing"]}
    assert missing[("site-1", "global")].startswith("cancelled: quorum unreachable")
    assert missing[("site-2", "global")].startswith("failed: ValueError: no validation data")


# ----------------------------------------------------------------------------- aggregation


@pytest.mark.anyio
async def test_a_round_whose_sites_all_report_zero_samples_names_the_round_and_the_sites(
    tmp_path: Path,
) -> None:
    """It used to fail the job with 'the committed updates have a total weight of zero': no round,
    no site, nothing about num_samples."""
    result = await run(tmp_path, job(tmp_path, "Counted", "num_samples = 0", min_sites=2))
    assert result.status == "failed"
    assert result.reason == (
        "round 1 failed: the committed updates have a total weight of zero: every site that"
        " answered (site-1, site-2) reported num_samples = 0, and weighted_mean weighs updates"
        " by their samples"
    )


# ----------------------------------------------------------------------------- tables


def test_a_huge_metric_fits_its_table_cell() -> None:
    """A diverging model's loss of 5e307 used to print as a 300-digit number, which pushed every
    column after it off the screen."""
    from flrt._report import cross_site_table, rounds_table

    losses = (5.28e307, -(2.0**70), 0.25)
    rounds = rounds_table(
        {"round": r, "accepted": ["a"], "seconds": 0.5, "train": {"loss": loss}}
        for r, loss in enumerate(losses, start=1)
    )
    assert rounds.splitlines()[2].split() == ["1", "1", "-", "0.5000", "5.28e+307"]
    assert rounds.splitlines()[3].split() == ["2", "1", "-", "0.5000", "-1.181e+21"]
    assert rounds.splitlines()[4].split() == ["3", "1", "-", "0.5000", "0.2500"]
    cross = {
        "models": ["global"],
        "evaluators": ["a"],
        "results": [["a", "global", {"x": 1e300}, 1]],
    }
    assert cross_site_table(cross, "x").splitlines()[2].split() == ["a", "1e+300"]
