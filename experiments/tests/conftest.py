from collections.abc import Callable, Iterator

import pytest

from experiments.selectors import running_experiments


@pytest.fixture(autouse=True)
def _fresh_experiments_snapshot() -> Iterator[None]:
    # Each test's database is rolled back afterwards: the snapshot of running experiments must not outlive it.
    running_experiments.invalidate()
    yield
    running_experiments.invalidate()


@pytest.fixture
def make_experiment(db) -> Callable:
    """A running experiment (by default) with `arms`: (name, model id, params, weight) each, the first the control."""
    from experiments.models import Arm, Experiment
    from experiments.services import experiment_start

    def make(key: str = "exp", arms=(("control", "demo", {}, 1), ("treatment", "demo-backup", {}, 1)), *,
             start: bool = True, **fields) -> Experiment:
        experiment = Experiment.objects.create(key=key, name=fields.pop("name", key.title()), **fields)
        for position, (name, model_id, params, weight) in enumerate(arms):
            Arm.objects.create(experiment=experiment, name=name, position=position, model_id=model_id, params=params,
                               weight=weight, template_ref=f"greeting@{position + 1}")
        if start:
            experiment_start(experiment=experiment)
        return experiment

    return make
