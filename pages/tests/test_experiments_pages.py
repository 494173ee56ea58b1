"""The experiments pages: staff only; promote and stop through the services; a missing experiment is a 404."""

import pytest

from experiments.models import Arm, Experiment
from experiments.services import experiment_start

pytestmark = pytest.mark.django_db


@pytest.fixture
def experiment(registry) -> Experiment:
    experiment = Experiment.objects.create(key="page-test", name="Page test")
    Arm.objects.create(experiment=experiment, name="control", position=0, model_id="demo")
    Arm.objects.create(experiment=experiment, name="treatment", position=1, model_id="demo-backup")
    return experiment_start(experiment=experiment)


def test_it_shows_the_experiments_and_one_experiments_arms_to_staff(page_client, make_user, experiment):
    client = page_client(make_user("staff", is_staff=True))

    listing = client.get("/experiments/")
    detail = client.get(f"/experiments/{experiment.pk}/")

    assert listing.status_code == 200 and b"Page test" in listing.content
    assert detail.status_code == 200
    assert b'data-arm="control"' in detail.content and b'data-arm="treatment"' in detail.content
    assert b"Collecting: 0 observations" in detail.content
    assert client.get("/experiments/999999/").status_code == 404


def test_it_refuses_everyone_but_staff_and_changes_nothing(client, page_client, make_user, experiment):
    assert client.get("/experiments/").status_code == 302  # to the login page
    other = page_client(make_user("someone", tier="enterprise"))
    for url in ("/experiments/", f"/experiments/{experiment.pk}/"):
        assert other.get(url).status_code == 403
    assert other.post(f"/experiments/{experiment.pk}/promote/", {"arm": "treatment"}).status_code == 403
    assert other.post(f"/experiments/{experiment.pk}/stop/").status_code == 403
    assert Experiment.objects.get(pk=experiment.pk).status == Experiment.Status.RUNNING


def test_staff_promote_an_arm_and_stop_the_experiment(page_client, make_user, experiment):
    client = page_client(make_user("staff", is_staff=True))

    unknown = client.post(f"/experiments/{experiment.pk}/promote/", {"arm": "nope"}, follow=True)
    assert b"The experiment has no arm" in unknown.content
    assert Experiment.objects.get(pk=experiment.pk).status == Experiment.Status.RUNNING

    promoted = client.post(f"/experiments/{experiment.pk}/promote/", {"arm": "treatment"}, follow=True)
    assert b"treatment is promoted" in promoted.content
    assert Arm.objects.get(experiment=experiment, name="treatment").state == Arm.State.WINNER
    assert Arm.objects.get(experiment=experiment, name="control").state == Arm.State.STOPPED

    client.post(f"/experiments/{experiment.pk}/stop/")
    assert Experiment.objects.get(pk=experiment.pk).status == Experiment.Status.STOPPED
