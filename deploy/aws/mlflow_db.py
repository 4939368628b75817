"""MLflow's database URI for the cluster, kept where only the head reads it: an encrypted SSM parameter
(SecureString), which the head's instance profile may read and the GPU nodes' may not.

  put   (your machine, `make cluster-account`): store ~/.switchsweep/mlflow-db's URI (an empty file: none,
        MLflow keeps its runs on the head's disk)
  check (your machine, `make cluster-up`): the parameter is there
  get   (the head's setup): print the URI, or nothing for none

The URI is never printed on your machine, and on the head goes only to a file of mode 600 (the setup's).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PARAMETER = "/switchsweep/mlflow-db"
NONE = "none"  # SSM holds no empty string: MLflow's runs on the head's disk


class Refused(Exception):
    """One line for the operator: what is wrong and what to do."""


def _ssm(region: str | None):
    import boto3

    session = boto3.session.Session(region_name=region)
    if session.region_name is None:  # on an EC2 node: its own region, from the instance metadata (IMDSv2)
        from botocore.utils import InstanceMetadataRegionFetcher

        session = boto3.session.Session(region_name=InstanceMetadataRegionFetcher().retrieve_region())
    if session.get_credentials() is None:
        raise Refused("no AWS credentials here: `aws configure` on your machine; the head's instance profile on it")
    return session.client("ssm")


def _region(cluster: Path | None) -> str | None:
    """The region of `cluster`'s provider, if it names one (default: the environment's, or this node's)."""
    if cluster is None:
        return None
    import yaml

    try:
        return (yaml.safe_load(cluster.read_text()).get("provider") or {}).get("region")
    except (OSError, yaml.YAMLError, AttributeError) as e:
        raise Refused(f"--cluster {cluster}: not a readable launcher config ({type(e).__name__})") from None


def _missing(error: Exception) -> bool:
    return getattr(error, "response", {}).get("Error", {}).get("Code") == "ParameterNotFound"


def put(ssm, source: Path) -> str:
    try:
        uri = source.expanduser().read_text().strip()
    except OSError:
        raise Refused(
            f"{source}: missing: put the PostgreSQL URI of MLflow's database in it (docs/cluster.md), or create it "
            "empty to keep MLflow's runs on the head's disk, lost with the head"
        ) from None
    ssm.put_parameter(Name=PARAMETER, Value=uri or NONE, Type="SecureString", Overwrite=True)
    return f"MLflow's database: {'a URI' if uri else 'none (the head disk)'} in SSM parameter {PARAMETER} (encrypted)"


def get(ssm) -> str:
    try:
        value = ssm.get_parameter(Name=PARAMETER, WithDecryption=True)["Parameter"]["Value"]
    except Exception as e:  # noqa: BLE001 - botocore's ClientError
        if _missing(e):
            raise Refused(f"no SSM parameter {PARAMETER}: run `make cluster-account` on your machine") from None
        raise Refused(f"SSM parameter {PARAMETER} cannot be read ({type(e).__name__}): the head's profile") from None
    return "" if value == NONE else value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("put", "check", "get"))
    parser.add_argument("--file", type=Path, default=Path("~/.switchsweep/mlflow-db"), help="put: the URI's file")
    parser.add_argument("--cluster", type=Path, help="the launcher config whose provider names the region")
    args = parser.parse_args(argv)
    try:
        ssm = _ssm(_region(args.cluster))
        if args.action == "put":
            print(put(ssm, args.file))
        elif args.action == "check":
            get(ssm)
        else:
            print(get(ssm))
    except Refused as e:
        print(f"mlflow-db: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
