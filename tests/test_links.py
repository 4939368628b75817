"""The MLflow links the CLI prints."""

from switchsweep.platform.tracking import runs_page


def test_the_printed_link_opens_an_experiments_runs_in_the_model_training_view():
    assert (
        runs_page("http://127.0.0.1:5000", "7")
        == "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"
    )
    assert runs_page("http://mlflow.internal:5000/", "12") == (
        "http://mlflow.internal:5000/#/experiments/12/runs?workflowType=machine_learning"
    )
    assert (
        runs_page("http://127.0.0.1:5000", None) == "http://127.0.0.1:5000/#/experiments?workflowType=machine_learning"
    )
