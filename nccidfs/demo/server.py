"""The embedded demo: an S3 server on 127.0.0.1 (moto) seeded with the synthetic warehouse.

The demo mounts it through exactly the code that mounts the real bucket; only the endpoint differs.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from nccidfs.config import DEFAULT_BUCKET, DEFAULT_PREFIX, DEFAULT_REGION, S3Config
from nccidfs.demo.warehouse import DemoObject, generate_warehouse

log = logging.getLogger(__name__)

DEMO_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "nccidfs-demo", "AWS_SECRET_ACCESS_KEY": "nccidfs-demo"}


def seed_bucket(client: Any, bucket: str, objects: Iterable[DemoObject], region: str = DEFAULT_REGION) -> int:
    """Create ``bucket`` and upload ``objects``; returns how many were uploaded."""
    client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
    count = 0
    for obj in objects:
        client.put_object(Bucket=bucket, Key=obj.key, Body=obj.body)
        count += 1
    return count


class DemoServer:
    """A moto S3 server on a free loopback port, holding the demo warehouse while the context is open."""

    def __init__(self, bucket: str = DEFAULT_BUCKET, prefix: str = DEFAULT_PREFIX) -> None:
        from moto.server import ThreadedMotoServer

        self.bucket = bucket
        self.prefix = prefix
        self.object_count = 0
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.endpoint_url = ""

    def __enter__(self) -> DemoServer:
        import boto3

        # No AWS account is needed: moto accepts any key, and these keep a user's real ones out of it.
        os.environ.update(DEMO_CREDENTIALS)
        os.environ.pop("AWS_PROFILE", None)
        os.environ.pop("AWS_SESSION_TOKEN", None)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        client = boto3.client("s3", endpoint_url=self.endpoint_url, region_name=DEFAULT_REGION)
        self.object_count = seed_bucket(client, self.bucket, generate_warehouse(prefix=self.prefix))
        log.info("demo warehouse: %d objects at %s", self.object_count, self.endpoint_url)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._server.stop()

    def s3_config(self) -> S3Config:
        return S3Config(bucket=self.bucket, prefix=self.prefix, region=DEFAULT_REGION,
                        endpoint_url=self.endpoint_url)

    def welcome(self, mountpoint: Path) -> str:
        """What the demo prints once mounted: where things are, and lines to paste into a terminal."""
        key, secret = DEMO_CREDENTIALS["AWS_ACCESS_KEY_ID"], DEMO_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]
        url = f"s3://{self.bucket}/{self.prefix}"
        return "\n".join((
            f"nccidfs demo: {self.object_count} objects in {url} served by S3 at {self.endpoint_url}",
            f"nccidfs demo: mounted at {mountpoint} (Ctrl-C to unmount and stop)",
            "In another terminal:",
            f"  find {mountpoint} -type f | head",
            f"  dcmdump $(find {mountpoint}/ct -name '*.dcm' | head -1) | head -40",
            f"  AWS_ACCESS_KEY_ID={key} AWS_SECRET_ACCESS_KEY={secret} aws --region {DEFAULT_REGION} "
            f"--endpoint-url {self.endpoint_url} s3 ls {url}",
            f"  {shlex.quote(sys.executable)} "  # this interpreter has boto3; a bare python3 may not
            f"-c 'import boto3; s3 = boto3.client(\"s3\", endpoint_url=\"{self.endpoint_url}\", "
            f"region_name=\"{DEFAULT_REGION}\", aws_access_key_id=\"{key}\", aws_secret_access_key=\"{secret}\"); "
            f"print([p[\"Prefix\"] for p in s3.list_objects_v2(Bucket=\"{self.bucket}\", Prefix=\"{self.prefix}\", "
            f"Delimiter=\"/\")[\"CommonPrefixes\"]])'",
        ))
