"""`make cluster-account` (deploy/aws/account.py) against an AWS endpoint on 127.0.0.1 (moto's server: S3
and IAM): the bucket named once in cluster.yaml is made private and encrypted, the two instance profiles get
the policies rendered with that bucket and the cluster's name, and a second run changes nothing."""

import io
import json
import os
import re
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import boto3
import pytest

from tests.support.s3 import S3
from tests.support.sweep_harness import free_port

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "deploy" / "aws"))  # the scripts, run in this process as `python SCRIPT` runs them
import account  # noqa: E402
import mlflow_db  # noqa: E402


def _script(main, env: dict, *args: str) -> subprocess.CompletedProcess:
    """`main(args)` with `env` as the whole environment; its exit code and what it printed."""
    out, err, saved = io.StringIO(), io.StringIO(), dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            code = main(list(args))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def _account(cluster: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return _script(account.main, env, "--cluster", str(cluster), *args)


def _db(env: dict, *args: str) -> subprocess.CompletedProcess:
    return _script(mlflow_db.main, env, *args)


def _cluster_yaml(tmp_path, bucket: str) -> Path:
    text = (REPO / "cluster.yaml").read_text().replace("s3://my-bucket/", f"s3://{bucket}/")
    (tmp_path / "cluster.yaml").write_text(text)
    return tmp_path / "cluster.yaml"


@pytest.fixture(scope="module")
def aws():
    endpoint = S3(free_port()).start()
    yield endpoint
    endpoint.stop()


def test_the_shipped_placeholder_bucket_is_refused_in_one_line():
    done = _account(REPO / "cluster.yaml", dict(os.environ), "--print")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "the bucket is still my-bucket" in lines[0], done.stderr


def test_the_policies_name_the_bucket_of_cluster_yaml_and_scope_the_nodes_to_its_cluster(tmp_path):
    done = _account(_cluster_yaml(tmp_path, "lab-sweeps"), dict(os.environ), "--print")
    assert done.returncode == 0, done.stderr
    assert "${" not in done.stdout
    head, worker = (json.loads(done.stdout)[r]["Statement"] for r in ("head", "worker"))
    for statements in (head, worker):
        buckets = {st["Resource"] for st in statements if st["Sid"] in ("TheSweepBucketOnly", "ItsObjects")}
        assert buckets == {"arn:aws:s3:::lab-sweeps", "arn:aws:s3:::lab-sweeps/*"}
    by_sid = {st["Sid"]: st for st in head}
    ending = by_sid["ChangeAndEndThisClustersNodesOnly"]
    assert "ec2:TerminateInstances" in ending["Action"]
    assert ending["Condition"] == {"StringEquals": {"ec2:ResourceTag/ray-cluster-name": "switchsweep"}}
    launch = by_sid["LaunchOnlyTaggedNodesThatRequireImdsV2"]["Condition"]["StringEquals"]
    assert launch == {"aws:RequestTag/ray-cluster-name": "switchsweep", "ec2:MetadataHttpTokens": "required"}


def test_the_bucket_profiles_and_database_uri_are_made_once_and_a_second_run_changes_nothing(aws, tmp_path):
    cluster = _cluster_yaml(tmp_path, "lab-sweeps")
    env = {**os.environ, **aws.env, "HOME": str(tmp_path)}
    missing = _account(cluster, env, "--ssh-from", "203.0.113.7")  # no ~/.switchsweep/mlflow-db: one line

    assert missing.returncode == 2 and "mlflow-db: missing" in missing.stderr and not missing.stdout
    (tmp_path / ".switchsweep").mkdir()
    (tmp_path / ".switchsweep" / "mlflow-db").write_text("postgresql://mlflow:s3cret@db.internal:5432/mlflow\n")
    first = _account(cluster, env, "--ssh-from", "203.0.113.7")
    assert first.returncode == 0, first.stderr
    (vpc,) = re.findall(r"\((vpc-\w+)\)", first.stdout)
    assert first.stdout.splitlines() == [
        "bucket lab-sweeps (us-west-2): made, private, encrypted",
        f"security group switchsweep-cluster ({vpc}): made, SSH from 203.0.113.7/32 only, open within the cluster",
        "instance profile switchsweep-head: made, policy written",
        "instance profile switchsweep-worker: made, policy written",
        "MLflow's database: a URI in SSM parameter /switchsweep/mlflow-db (encrypted)",
    ]
    assert "s3cret" not in first.stdout + first.stderr
    again = _account(cluster, env, "--ssh-from", "198.51.100.0/24")  # the operator moved: SSH from there only
    assert again.returncode == 0 and again.stdout.count("is there") == 4, again.stdout + again.stderr
    # What the head's setup reads (its region given here: on EC2, the instance's own).
    got = _db({**env, "AWS_DEFAULT_REGION": "us-west-2"}, "get")
    assert got.returncode == 0 and got.stdout == "postgresql://mlflow:s3cret@db.internal:5432/mlflow\n", got.stderr
    ssm = boto3.client(
        "ssm",
        region_name="us-west-2",
        endpoint_url=aws.endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    assert ssm.get_parameter(Name="/switchsweep/mlflow-db")["Parameter"]["Type"] == "SecureString"
    kw = dict(endpoint_url=aws.endpoint, aws_access_key_id="testing", aws_secret_access_key="testing")
    s3, iam = boto3.client("s3", region_name="us-west-2", **kw), boto3.client("iam", region_name="us-east-1", **kw)
    assert s3.get_bucket_location(Bucket="lab-sweeps")["LocationConstraint"] == "us-west-2"
    block = s3.get_public_access_block(Bucket="lab-sweeps")["PublicAccessBlockConfiguration"]
    assert all(block.values()) and len(block) == 4
    rules = s3.get_bucket_encryption(Bucket="lab-sweeps")["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    ec2 = boto3.client("ec2", region_name="us-west-2", **kw)
    (group,) = ec2.describe_security_groups(GroupNames=["switchsweep-cluster"])["SecurityGroups"]
    rules = {(p["IpProtocol"], p.get("FromPort")): p for p in group["IpPermissions"]}
    assert set(rules) == {("-1", None), ("tcp", 22)}
    assert [r["CidrIp"] for r in rules["tcp", 22]["IpRanges"]] == ["198.51.100.0/24"]
    assert [g["GroupId"] for g in rules["-1", None]["UserIdGroupPairs"]] == [group["GroupId"]]
    assert not rules["-1", None].get("IpRanges")
    rendered = json.loads(_account(cluster, env, "--print").stdout)
    for role in ("head", "worker"):
        name = f"switchsweep-{role}"
        profile = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]
        assert [r["RoleName"] for r in profile["Roles"]] == [name]
        policy = iam.get_role_policy(RoleName=name, PolicyName="switchsweep")["PolicyDocument"]
        assert (json.loads(policy) if isinstance(policy, str) else policy) == rendered[role]
        trust = iam.get_role(RoleName=name)["Role"]["AssumeRolePolicyDocument"]
        assert trust["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}


def test_no_credentials_is_one_line_before_anything_is_made(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    (tmp_path / "mlflow-db").write_text("")
    env.update(
        HOME=str(tmp_path),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    done = _account(
        _cluster_yaml(tmp_path, "lab-sweeps"), env, "--mlflow-db", str(tmp_path / "mlflow-db"), "--ssh-from", "10.0.0.1"
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "no AWS credentials here" in lines[0], done.stderr


@pytest.mark.parametrize(
    "given, words",
    [
        ("", "SSH_FROM is missing"),
        ("my-laptop", "SSH_FROM=my-laptop is not an address range"),
        ("0.0.0.0/0", "SSH_FROM=0.0.0.0/0 opens SSH to a large part of the internet"),
    ],
)
def test_ssh_from_anywhere_or_nowhere_is_one_line(tmp_path, given, words):
    done = _account(_cluster_yaml(tmp_path, "lab-sweeps"), dict(os.environ), "--ssh-from", given)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and words in lines[0] and "checkip" in lines[0], done.stderr


def test_cluster_up_asks_for_mlflows_database_before_anything_starts(aws, tmp_path):
    venv = Path(sys.executable).parent.parent
    env = {**aws.env, "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    cluster = tmp_path / "cluster.yaml"  # a region where no test put the parameter
    cluster.write_text((REPO / "cluster.yaml").read_text().replace("region: us-west-2", "region: eu-north-1"))
    done = subprocess.run(
        # -o: the environment counts as installed (as it is once `make test` runs): nothing to rebuild first
        ["make", "-s", f"VENV={venv}", "-o", f"{venv}/.installed-stamp", f"CLUSTER={cluster}", "cluster-up"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    said, *rest = done.stderr.splitlines()  # one line of ours, then make's own "*** Error 2"
    assert done.returncode == 2 and all(line.startswith("make: ***") for line in rest), done.stderr
    assert said == "mlflow-db: no SSM parameter /switchsweep/mlflow-db: run `make cluster-account` on your machine"
    assert not (tmp_path / ".ray").exists()  # no token made, no launcher run


def test_an_empty_uri_file_keeps_mlflow_on_the_heads_disk(aws, tmp_path):
    env = {**os.environ, **aws.env, "AWS_DEFAULT_REGION": "ap-south-1"}
    (tmp_path / "empty").write_text("")
    put = _db(env, "put", "--file", str(tmp_path / "empty"))
    assert put.returncode == 0 and "none (the head disk)" in put.stdout, put.stderr
    got = _db(env, "get")
    assert got.returncode == 0 and got.stdout == "\n"
