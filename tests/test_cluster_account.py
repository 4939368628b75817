"""`make cluster-account` (deploy/aws/account.py) against an AWS endpoint on 127.0.0.1 (moto's server: S3
and IAM): the bucket named once in cluster.yaml is made private and encrypted, the two instance profiles get
the policies rendered with that bucket and the cluster's name, and a second run changes nothing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from tests.support.s3 import S3
from tests.support.sweep_harness import free_port

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "deploy" / "aws" / "account.py"


def _account(cluster: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(SCRIPT), "--cluster", str(cluster), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


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


def test_the_bucket_and_profiles_are_made_once_and_a_second_run_changes_nothing(aws, tmp_path):
    cluster = _cluster_yaml(tmp_path, "lab-sweeps")
    env = {**os.environ, **aws.env}
    first = _account(cluster, env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [
        "bucket lab-sweeps (us-west-2): made, private, encrypted",
        "instance profile switchsweep-head: made, policy written",
        "instance profile switchsweep-worker: made, policy written",
    ]
    again = _account(cluster, env)
    assert again.returncode == 0 and again.stdout.count("is there") == 3, again.stdout + again.stderr
    kw = dict(endpoint_url=aws.endpoint, aws_access_key_id="testing", aws_secret_access_key="testing")
    s3, iam = boto3.client("s3", region_name="us-west-2", **kw), boto3.client("iam", region_name="us-east-1", **kw)
    assert s3.get_bucket_location(Bucket="lab-sweeps")["LocationConstraint"] == "us-west-2"
    block = s3.get_public_access_block(Bucket="lab-sweeps")["PublicAccessBlockConfiguration"]
    assert all(block.values()) and len(block) == 4
    rules = s3.get_bucket_encryption(Bucket="lab-sweeps")["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
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
    env.update(
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    done = _account(_cluster_yaml(tmp_path, "lab-sweeps"), env)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "no AWS credentials here" in lines[0], done.stderr
