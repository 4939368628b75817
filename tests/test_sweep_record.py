"""The sweep's record: the one place that decides how a trial ended and whether a sweep runs."""

import json
import os
import signal
import subprocess
import sys

import pytest
from optuna.trial import TrialState

from switchsweep.platform.errors import ConfigError
from switchsweep.platform.sweep_dir import STATE_FILE
from switchsweep.platform.sweep_record import (
    INTERRUPTED,
    RUNNING,
    DriverLock,
    SweepRecord,
    TrialEnd,
    sweep_status,
    sweeps,
)
from switchsweep.platform.tracking import Tracker, default_tracking_uri
from switchsweep.sweeps.failures import fail_again, fail_trial, failure_reason, repeated_failure


def test_a_trial_is_finished_only_when_it_trained_every_step():
    assert TrialEnd.of(100, 100) is TrialEnd.FINISHED
    assert TrialEnd.of(120, 100) is TrialEnd.FINISHED
    assert TrialEnd.of(99, 100) is TrialEnd.STOPPED  # ASHA's stop, or max_t short of train.steps
    assert TrialEnd.of(100, 100, failed=True) is TrialEnd.FAILED
    assert [e.over for e in TrialEnd] == [False, True, True, True]


def test_a_configuration_ends_as_its_worst_seed():
    F, R, S, X = TrialEnd.FINISHED, TrialEnd.RUNNING, TrialEnd.STOPPED, TrialEnd.FAILED
    assert TrialEnd.of_group([F, F]) is F
    assert TrialEnd.of_group([F, S]) is S
    assert TrialEnd.of_group([S, R, F]) is R  # not comparable yet
    assert TrialEnd.of_group([R, X, S]) is X


def test_each_end_maps_once_to_mlflow_and_optuna():
    assert {e: e.mlflow_status for e in TrialEnd} == {
        TrialEnd.RUNNING: "RUNNING",
        TrialEnd.FINISHED: "FINISHED",
        TrialEnd.STOPPED: "KILLED",
        TrialEnd.FAILED: "FAILED",
    }
    assert [TrialState[e.optuna_state] for e in TrialEnd] == [
        TrialState.RUNNING,
        TrialState.COMPLETE,
        TrialState.PRUNED,
        TrialState.FAIL,
    ]
    assert all(TrialEnd.from_mlflow(e.mlflow_status) is e for e in TrialEnd)
    assert TrialEnd.from_mlflow("SCHEDULED") is TrialEnd.RUNNING


def test_trial_transitions_are_saved_at_once_and_read_back(tmp_path):
    record = SweepRecord(tmp_path, sweep_id="s-1", name="design_space", overrides=["model.size=tiny"])
    record.save()
    record.trial_started("a")
    record.trial_reported("a", step=4, loop_s=1.5, attempt=None, wall_s=2.0, timings={"t_fit_start": 10.0})
    record.trial_started("b")
    record.trial_reported("b", step=2, loop_s=1.0, attempt=None, wall_s=None, timings={})
    record.trial_started("c")
    assert record.trial_ended("a", train_steps=4, failure=None, wall_s=3.0).status is TrialEnd.FINISHED
    assert record.trial_ended("b", train_steps=4, failure=None, wall_s=None).status is TrialEnd.STOPPED
    assert record.trial_ended("a", train_steps=4, failure="late", wall_s=None) is None  # recorded once
    again = SweepRecord.load(tmp_path)
    a = again.trials["a"]
    assert (a.status, a.step, a.loop_s, a.wall_s, a.overhead_s) == (TrialEnd.FINISHED, 4, 1.5, 3.0, 1.5)
    assert a.timings["t_fit_start"] == 10.0 and a.timings["t_trial_start"] <= a.timings["t_trial_end"]
    assert again.trial_started("a") is None  # over: a restored Tune's restart of it is not a new attempt
    assert sorted(again.trials_over()) == ["a", "b"] and again.ends()["c"] is TrialEnd.RUNNING
    # What is written is flat JSON: the phase timings beside the entry's own fields.
    raw = json.loads((tmp_path / STATE_FILE).read_text())
    assert raw["trials"]["a"]["status"] == "finished" and raw["trials"]["a"]["t_fit_start"] == 10.0
    assert raw["overrides"] == ["model.size=tiny"] and raw["status"] == RUNNING


def test_a_restarted_trial_counts_its_attempts_and_carries_a_failure_it_would_repeat(tmp_path):
    record = SweepRecord(tmp_path, sweep_id="s-1")
    record.trial_started("a")
    record.trial_started("a")  # Tune restarted it (its process died)
    assert SweepRecord.load(tmp_path).trials["a"].attempt == 2
    record.trial_will_fail_again("a", "TrainingError: non-finite loss")
    record.trial_started("a")  # a restart that only fails again: not an attempt
    entry = SweepRecord.load(tmp_path).trials["a"]
    assert entry.reason == "TrainingError: non-finite loss" and entry.status is TrialEnd.RUNNING
    assert entry.attempt == 2
    assert record.trial_ended("a", 10, failure=entry.reason, wall_s=None).status is TrialEnd.FAILED
    assert SweepRecord.load(tmp_path).failed() == {"a": "TrainingError: non-finite loss"}


def test_the_one_failure_path_tags_the_run_and_raises_what_the_driver_reads(tmp_path):
    tracker = Tracker(default_tracking_uri(tmp_path))
    run_id = tracker.create_run(tracker.experiment("e", tmp_path / "art"), "r", {})
    with pytest.raises(RuntimeError) as raised:
        fail_trial(tracker, run_id, "TrainingError: non-finite loss (nan) at step 3", "last line\n", 2)
    text = f"Traceback ...\nRuntimeError: {raised.value}\n"
    assert repeated_failure(text) == failure_reason(text) == "TrainingError: non-finite loss (nan) at step 3"
    assert repeated_failure("ActorDiedError: the actor died") is None
    with pytest.raises(RuntimeError) as again:
        fail_again("TrainingError: non-finite loss (nan) at step 3")
    assert str(again.value) == str(raised.value)
    tags = tracker.tags(run_id)
    assert tags["switchsweep.failure"] == "TrainingError: non-finite loss (nan) at step 3"
    assert tags["switchsweep.attempts"] == "2"


def test_the_record_says_running_only_while_a_driver_holds_the_lock(tmp_path):
    SweepRecord(tmp_path, created=1.0).save()
    assert sweep_status(tmp_path) == INTERRUPTED  # a driver that died
    lock = DriverLock(tmp_path)
    lock.acquire()
    try:
        assert sweep_status(tmp_path) == RUNNING
        with pytest.raises(ConfigError, match=rf"sweep {tmp_path.name} is being run by driver pid {os.getpid()} on "):
            DriverLock(tmp_path).acquire()
    finally:
        lock.release()
    assert sweep_status(tmp_path) == INTERRUPTED


def test_a_killed_driver_leaves_no_lock(tmp_path):
    SweepRecord(tmp_path).save()
    code = (
        "import sys, time; from switchsweep.platform.sweep_record import DriverLock; "
        f"lock = DriverLock({str(tmp_path)!r}); lock.acquire(); print('held', flush=True); time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    assert sweep_status(tmp_path) == RUNNING
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    assert sweep_status(tmp_path) == INTERRUPTED
    lock = DriverLock(tmp_path)
    lock.acquire()  # a resuming driver takes it over
    lock.release()


def test_sweeps_are_listed_oldest_first(tmp_path):
    for name, created in (("b", 2.0), ("a", 3.0), ("c", 1.0)):
        (tmp_path / name).mkdir()
        SweepRecord(tmp_path / name, sweep_id=name, created=created).save()
    (tmp_path / "not-a-sweep").mkdir()
    assert [p.name for p in sweeps(tmp_path)] == ["c", "b", "a"]


def test_an_end_is_mirrored_before_it_is_saved(tmp_path):
    record = SweepRecord(tmp_path, sweep_id="s-1")
    record.trial_started("a")
    record.trial_reported("a", step=10, loop_s=1.0, attempt=None, wall_s=None, timings={})

    def driver_dies(entry):  # after computing the end, before MLflow has it
        assert entry.status is TrialEnd.FINISHED and SweepRecord.load(tmp_path).trials["a"].status is TrialEnd.RUNNING
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        SweepRecord.load(tmp_path).trial_ended("a", 10, failure=None, wall_s=2.0, mirror=driver_dies)
    seen = []
    again = SweepRecord.load(tmp_path)  # the resumed driver records it again, mirror included
    assert again.trials["a"].status is TrialEnd.RUNNING
    again.trial_ended("a", 10, failure=None, wall_s=2.0, mirror=seen.append)
    assert [e.status for e in seen] == [TrialEnd.FINISHED] and SweepRecord.load(tmp_path).trials["a"].over


@pytest.mark.parametrize("text", ["{not json", '{"trials": {"a": {"status": "lost"}}}', "[1, 2]"])
def test_a_damaged_record_is_one_line_and_names_the_file(tmp_path, capsys, text):
    from switchsweep.cli import main

    folder = tmp_path / "sweeps" / "design_space" / "design_space-1"
    folder.mkdir(parents=True)
    (folder / STATE_FILE).write_text(text)
    assert main(["sweep", "--resume", f"sweep.root={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{folder / STATE_FILE}: not a readable sweep record" in err[0], err


@pytest.mark.parametrize("uri", [False, True], ids=["shared-folder", "uri"])
def test_every_save_keeps_the_sweeps_state_in_its_storage_and_a_new_machine_resumes_from_it(tmp_path, uri):
    from switchsweep.config.compose import load_sweep_config
    from switchsweep.sweeps.locate import find_sweep

    bucket = tmp_path / "bucket"
    base = bucket.as_uri() if uri else str(bucket)
    first = tmp_path / "head-1" / "runs" / "sweeps" / "design_space" / "s1"
    first.mkdir(parents=True)
    stored = f"{base}/design_space/s1"
    record = SweepRecord(first, sweep_id="s1", name="design_space", storage=stored)
    (first / "optuna.journal").write_text('{"op_code": 0}\n')  # the searcher's and ASHA's state, as they stand
    (first / "asha.pkl").write_bytes(b"rungs")
    record.trial_started("t1")
    record.trial_reported("t1", step=10, loop_s=1.0, attempt=1, wall_s=None, timings={})
    kept = bucket / "design_space" / "s1"
    assert json.loads((kept / STATE_FILE).read_text())["trials"]["t1"]["step"] == 10  # at every transition
    assert (kept / "optuna.journal").read_text() == '{"op_code": 0}\n' and (kept / "asha.pkl").read_bytes() == b"rungs"
    record.trial_ended("t1", train_steps=10, failure=None, wall_s=2.0)
    SweepRecord(
        first.parent / "s0",
        sweep_id="s0",
        name="design_space",
        created=0.0,
        status="finished",
        storage=f"{base}/design_space/s0",
    ).save()

    # The first head's disk is gone: a new one with an empty home finds the unfinished sweep in the storage.
    new_root = tmp_path / "head-2" / "runs"
    job = load_sweep_config([f"sweep.root={new_root}", f"sweep.ray.storage_path={base}"])
    found = find_sweep(job, finished=False)
    assert found == new_root.resolve() / "sweeps" / "design_space" / "s1"
    resumed = SweepRecord.load(found)
    assert resumed.trials["t1"].status is TrialEnd.FINISHED and resumed.storage == stored
    assert (found / "optuna.journal").read_text() == '{"op_code": 0}\n' and (
        found / "asha.pkl"
    ).read_bytes() == b"rungs"
    assert sweep_status(found) == INTERRUPTED  # its old driver holds no lock here
    # By id too, and --extend's search finds the finished one; a sweep kept nowhere is one line.
    assert find_sweep(job, finished=True).name == "s0"
    with pytest.raises(ConfigError, match="sweep.id=nope: no such sweep"):
        find_sweep(load_sweep_config([f"sweep.root={new_root}", f"sweep.ray.storage_path={base}", "sweep.id=nope"]))


def test_a_sweep_kept_in_its_own_folder_is_not_copied(tmp_path):
    folder = tmp_path / "runs" / "sweeps" / "design_space" / "s1"
    folder.mkdir(parents=True)
    SweepRecord(folder, sweep_id="s1", storage=str(folder)).save()  # the default storage: the sweep's own folder
    assert sorted(p.name for p in folder.iterdir()) == [STATE_FILE]
