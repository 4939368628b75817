"""Once per AWS account (`make cluster-account`): the sweep bucket and the two instance profiles of
cluster.yaml, from the names cluster.yaml gives. The bucket's name lives in one place, cluster.yaml's
SWITCHSWEEP_STORAGE line; the policies beside this file are templates (${BUCKET}, ${CLUSTER}) rendered with it.

The bucket is made private (every public access blocked, objects encrypted at rest); each profile is a role
that EC2 may assume with its policy inline: switchsweep-head (launches and ends the cluster's GPU nodes,
the bucket) and switchsweep-worker (the bucket only). Run again, it changes nothing that is already right
and rewrites the policies (a changed template takes effect). `--print` renders the policies and touches
nothing.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
PLACEHOLDER = "my-bucket"  # cluster.yaml's shipped value
TRUST = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}
ROLES = ("head", "worker")


class Refused(Exception):
    """One line for the operator: what is wrong and what to do."""


def cluster_names(cluster_yaml: Path) -> dict[str, str]:
    """The bucket, cluster name and region that `cluster_yaml` gives."""
    try:
        config = yaml.safe_load(cluster_yaml.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise Refused(f"--cluster {cluster_yaml}: not a readable YAML file ({type(e).__name__})") from None
    lines = [c for c in config.get("head_setup_commands", []) if "SWITCHSWEEP_STORAGE=" in c]
    found = re.search(r"SWITCHSWEEP_STORAGE=s3://([a-z0-9.-]+)", lines[0]) if lines else None
    if found is None:
        raise Refused(f"{cluster_yaml}: no SWITCHSWEEP_STORAGE=s3://BUCKET/... line in head_setup_commands")
    if found.group(1) == PLACEHOLDER:
        raise Refused(
            f"{cluster_yaml}: the bucket is still {PLACEHOLDER}: put your bucket's name in its SWITCHSWEEP_STORAGE "
            "line (marked EDIT); bucket names are global, pick one nobody has"
        )
    return {"bucket": found.group(1), "cluster": config["cluster_name"], "region": config["provider"]["region"]}


def policies(names: dict[str, str]) -> dict[str, dict]:
    """Each role's policy: its template with the bucket and the cluster name put in."""
    rendered = {}
    for role in ROLES:
        text = (HERE / f"{role}-policy.json").read_text()
        rendered[role] = json.loads(text.replace("${BUCKET}", names["bucket"]).replace("${CLUSTER}", names["cluster"]))
    return rendered


def _missing(error: Exception) -> bool:
    code = getattr(error, "response", {}).get("Error", {}).get("Code", "")
    return code in ("NoSuchEntity", "404", "NoSuchBucket", "NotFound")


def make_bucket(s3, names: dict[str, str]) -> str:
    bucket, region = names["bucket"], names["region"]
    try:
        s3.head_bucket(Bucket=bucket)
        made = "is there"
    except Exception as e:  # noqa: BLE001 - botocore's ClientError: missing, or someone else's
        if not _missing(e):
            raise Refused(f"bucket {bucket}: {e} (a name another account has? pick another)") from None
        where = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
        s3.create_bucket(Bucket=bucket, **where)
        made = "made"
    s3.put_public_access_block(
        Bucket=bucket,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )
    s3.put_bucket_encryption(
        Bucket=bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )
    return f"bucket {bucket} ({region}): {made}, private, encrypted"


def make_profile(iam, role: str, policy: dict) -> str:
    name = f"switchsweep-{role}"
    try:
        iam.get_role(RoleName=name)
        made = "is there"
    except Exception as e:  # noqa: BLE001
        if not _missing(e):
            raise
        iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(TRUST))
        made = "made"
    iam.put_role_policy(RoleName=name, PolicyName="switchsweep", PolicyDocument=json.dumps(policy))
    try:
        roles = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Roles"]
    except Exception as e:  # noqa: BLE001
        if not _missing(e):
            raise
        iam.create_instance_profile(InstanceProfileName=name)
        roles = []
    if name not in [r["RoleName"] for r in roles]:
        iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    return f"instance profile {name}: {made}, policy written"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cluster", default="cluster.yaml", type=Path, help="the launcher config to read names from")
    parser.add_argument("--print", action="store_true", help="print the rendered policies; touch nothing")
    args = parser.parse_args(argv)
    try:
        names = cluster_names(args.cluster)
        rendered = policies(names)
        if args.print:
            print(json.dumps(rendered, indent=1))
            return 0
        import boto3
        import botocore.exceptions

        session = boto3.session.Session(region_name=names["region"])
        if session.get_credentials() is None:
            raise Refused("no AWS credentials here: `aws configure` (an administrator of the account), then run again")
        try:
            print(make_bucket(session.client("s3"), names))
            for role in ROLES:
                print(make_profile(session.client("iam"), role, rendered[role]))
        except botocore.exceptions.ClientError as e:
            raise Refused(f"AWS refused: {e}") from None
    except Refused as e:
        print(f"cluster-account: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
