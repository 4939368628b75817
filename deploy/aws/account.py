"""Once per AWS account (`make cluster-account`): the sweep bucket, the cluster's security group, the two
instance profiles and MLflow's database URI, from the names cluster.yaml gives. The bucket's name lives in one
place, cluster.yaml's SWITCHSWEEP_STORAGE line; the policies beside this file are templates (${BUCKET},
${CLUSTER}) rendered with it.

The bucket is made private (every public access blocked, objects encrypted at rest). The security group
(cluster.yaml's provider.security_group.GroupName), in the region's default VPC, lets SSH in from the
operator's range (`--ssh-from`, make's SSH_FROM) only and everything between the cluster's own nodes; Ray uses
a group that already has rules as it finds it. Each profile is a role that EC2 may assume with its policy
inline: switchsweep-head (launches and ends the cluster's GPU nodes, the bucket, MLflow's database URI) and
switchsweep-worker (the bucket only). The URI in ~/.switchsweep/mlflow-db goes into an encrypted SSM
parameter that only the head reads (mlflow_db.py). Run again, it changes nothing that is already right and
rewrites the policies, the parameter and the group's SSH range. `--print` renders the policies, touching nothing.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import sys
from pathlib import Path

import yaml
from mlflow_db import NONE, Refused, put

HERE = Path(__file__).resolve().parent
PLACEHOLDER = "my-bucket"  # cluster.yaml's shipped value
TRUST = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}
ROLES = ("head", "worker")


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
    group = (config["provider"].get("security_group") or {}).get("GroupName")
    if not group:
        raise Refused(f"{cluster_yaml}: provider.security_group.GroupName is missing: name the cluster's own group")
    return {
        "bucket": found.group(1),
        "cluster": config["cluster_name"],
        "region": config["provider"]["region"],
        "group": group,
    }


def ssh_range(text: str | None) -> str:
    """The operator's address range that may SSH into the nodes, e.g. 203.0.113.7/32."""
    why = "give SSH_FROM=<your public address>/32 (`curl -s https://checkip.amazonaws.com`), or your VPN's range"
    if not text:
        raise Refused(f"SSH_FROM is missing: {why}")
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise Refused(f"SSH_FROM={text} is not an address range: {why}") from None
    if network.prefixlen < 8:
        raise Refused(f"SSH_FROM={text} opens SSH to a large part of the internet: {why}")
    return str(network)


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


def make_security_group(ec2, names: dict[str, str], ssh_from: str) -> str:
    """The cluster's group in the default VPC: SSH from `ssh_from`, all traffic between its own members. An
    existing group keeps its intra-cluster rule; its SSH rules become exactly `ssh_from`."""
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise Refused(
            f"region {names['region']} has no default VPC: make the group {names['group']} in your VPC by hand "
            "(docs/cluster.md, 'Who can reach what'), and give each node type SubnetIds in that VPC"
        )
    vpc = vpcs[0]["VpcId"]
    found = ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": [names["group"]]}, {"Name": "vpc-id", "Values": [vpc]}]
    )["SecurityGroups"]
    if found:
        group, made = found[0], "is there"
        ssh = [p for p in group["IpPermissions"] if p.get("FromPort") == 22 and p.get("IpRanges")]
        if ssh:
            ec2.revoke_security_group_ingress(GroupId=group["GroupId"], IpPermissions=ssh)
    else:
        group_id = ec2.create_security_group(
            GroupName=names["group"], Description=f"switchsweep cluster {names['cluster']}", VpcId=vpc
        )["GroupId"]
        group, made = {"GroupId": group_id}, "made"
        ec2.authorize_security_group_ingress(
            GroupId=group_id,
            IpPermissions=[{"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group_id}]}],
        )
    ec2.authorize_security_group_ingress(
        GroupId=group["GroupId"],
        IpPermissions=[{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": ssh_from}]}],
    )
    return f"security group {names['group']} ({vpc}): {made}, SSH from {ssh_from} only, open within the cluster"


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
    parser.add_argument("--mlflow-db", type=Path, default=Path("~/.switchsweep/mlflow-db"), help="the URI's file")
    parser.add_argument("--ssh-from", help="the address range that may SSH into the nodes, e.g. 203.0.113.7/32")
    args = parser.parse_args(argv)
    try:
        names = cluster_names(args.cluster)
        rendered = policies(names)
        if args.print:
            print(json.dumps(rendered, indent=1))
            return 0
        ssh_from = ssh_range(args.ssh_from)
        if not args.mlflow_db.expanduser().is_file():
            raise Refused(
                f"{args.mlflow_db}: missing: put the PostgreSQL URI of MLflow's database in it (docs/cluster.md), or "
                f"create it empty to keep MLflow's runs on the head's disk ({NONE}), lost with the head"
            )
        import boto3
        import botocore.exceptions

        session = boto3.session.Session(region_name=names["region"])
        if session.get_credentials() is None:
            raise Refused("no AWS credentials here: `aws configure` (an administrator of the account), then run again")
        try:
            print(make_bucket(session.client("s3"), names))
            print(make_security_group(session.client("ec2"), names, ssh_from))
            for role in ROLES:
                print(make_profile(session.client("iam"), role, rendered[role]))
            print(put(session.client("ssm"), args.mlflow_db))
        except botocore.exceptions.ClientError as e:
            raise Refused(f"AWS refused: {e}") from None
    except Refused as e:
        print(f"cluster-account: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
