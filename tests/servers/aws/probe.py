"""Judges an access key with AWS's own client (boto3), independently of Ebb's
connector: may it perform ACTION? Exit 0: allowed; 3: refused (access denied, or
the key does not authenticate); anything else: the probe could not tell.
Usage: probe.py ENDPOINT ACTION, with the key in AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY."""
import sys

import boto3
from botocore.exceptions import ClientError

endpoint, action = sys.argv[1], sys.argv[2]
calls = {
    "s3:ListAllMyBuckets": ("s3", lambda c: c.list_buckets()),
    "iam:ListUsers": ("iam", lambda c: c.list_users()),
    "iam:ListRoles": ("iam", lambda c: c.list_roles()),
    "sts:GetCallerIdentity": ("sts", lambda c: c.get_caller_identity()),
}
if action not in calls:
    print(f"the probe cannot try {action}", file=sys.stderr)
    sys.exit(2)
service, call = calls[action]
client = boto3.client(service, endpoint_url=endpoint, region_name="us-east-1")
try:
    call(client)
except ClientError as e:
    code = e.response.get("Error", {}).get("Code", "")
    status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in ("AccessDenied", "InvalidClientTokenId", "SignatureDoesNotMatch") or status == 403:
        print(f"refused: {code or status}")
        sys.exit(3)
    raise
print("allowed")
