"""Prepares a fresh moto server for Ebb's aws-iam connector: creates the `ebb-admin`
IAM user the connector is lent (allowed exactly the IAM actions the connector needs,
on users under /ebb/), gives it an access key, then turns authentication on. Prints
the key as JSON. Usage: admin.py http://127.0.0.1:PORT"""
import json
import sys
import urllib.request

import boto3

endpoint = sys.argv[1]
# Before authentication is on, moto accepts any key.
iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                   aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
iam.create_user(UserName="ebb-admin")
policy = {
    "Version": "2012-10-17",
    "Statement": [{
        "Effect": "Allow",
        "Action": [
            "iam:CreateUser", "iam:DeleteUser", "iam:GetUser", "iam:TagUser",
            "iam:PutUserPolicy", "iam:DeleteUserPolicy", "iam:GetUserPolicy",
            "iam:ListUserPolicies", "iam:ListAttachedUserPolicies", "iam:DetachUserPolicy",
            "iam:CreateAccessKey", "iam:DeleteAccessKey", "iam:ListAccessKeys",
            # For `inventory` (users under /ebb/) and, where minting is allowed, for
            # finding what a grant minted: users, keys, console passwords, policies.
            "iam:ListUsers", "iam:GetLoginProfile", "iam:ListPolicies",
        ],
        # On AWS this would be "arn:aws:iam::*:user/ebb/*"; moto checks IAM actions
        # against the resource "*", so a path-scoped statement denies everything.
        "Resource": "*",
    }],
}
iam.put_user_policy(UserName="ebb-admin", PolicyName="ebb-connector",
                    PolicyDocument=json.dumps(policy))
key = iam.create_access_key(UserName="ebb-admin")["AccessKey"]
request = urllib.request.Request(endpoint + "/moto-api/reset-auth", data=b"0",
                                 headers={"Content-Type": "text/plain"})
urllib.request.urlopen(request).read()
print(json.dumps({"access_key_id": key["AccessKeyId"],
                  "secret_access_key": key["SecretAccessKey"]}))
