"""MLflow's tracking store on a real PostgreSQL server (a throwaway one: tests/support/postgres.py), as a cluster keeps
it and as `sweep.tracking_uri=postgresql://...` uses it directly: every point of concurrent writers kept once,
artifacts where the sweep puts them, and a wrong password said in one line that does not repeat it."""

import threading

import pytest

from switchsweep.platform.errors import ConfigError
from switchsweep.platform.tracking import Tracker, reachable
from tests.support.postgres import Postgres, available
from tests.support.sweep_harness import free_port


@pytest.fixture(scope="module")
def postgres():
    why = available()
    if why:
        pytest.skip(why)
    server = Postgres(free_port()).start(databases=("direct", "refused"))
    yield server
    server.stop()


def test_concurrent_writers_keep_every_point_once(postgres):
    tracker = Tracker(postgres.uri("direct"))
    experiment = tracker.experiment("concurrent", "s3://bucket/sweeps/mlartifacts")
    # A direct database store keeps artifacts where the sweep says (a bucket beside its storage), not on a disk.
    assert tracker.artifact_location(experiment) == "s3://bucket/sweeps/mlartifacts/concurrent"
    runs = [tracker.create_run(experiment, f"trial-{i}", {"switchsweep.role": "trial"}) for i in range(4)]
    steps = range(1, 41)

    def write(run_id: str) -> None:
        mine = Tracker(postgres.uri("direct"))  # as trials do: a client of their own
        for step in steps:
            mine.log_metrics(run_id, {"loss": 1.0 / step, "lr": 0.1}, step)

    threads = [threading.Thread(target=write, args=(r,)) for r in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for run_id in runs:
        history = tracker.client.get_metric_history(run_id, "loss")
        assert sorted(m.step for m in history) == list(steps)  # none lost, none twice
        assert {m.step: m.value for m in history}[8] == pytest.approx(1 / 8)


def test_a_wrong_password_is_one_line_without_it(postgres):
    wrong = postgres.uri("refused").replace(postgres.password, "not-the-password")
    assert reachable(postgres.uri("refused")) == postgres.uri("refused")
    with pytest.raises(ConfigError) as e:
        reachable(wrong)
    said = str(e.value)
    assert len(said.splitlines()) == 1 and "not-the-password" not in said and postgres.password not in said
    assert said.startswith("sweep.tracking_uri=postgresql://***@127.0.0.1") and "password" in said


def test_a_database_whose_driver_is_not_installed_is_one_line():
    with pytest.raises(ConfigError) as e:
        reachable("mysql+nosuchdriver://u:pw5678@db.internal/mlflow")
    said = str(e.value)
    assert said.startswith("sweep.tracking_uri=mysql+nosuchdriver://***@db.internal/mlflow: cannot open")
    assert "\n" not in said and "pw5678" not in said
