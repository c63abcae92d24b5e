"""Creates the IAM user and roles of the IAM-enforcing STS used by the tests.

moto enforces IAM after INITIAL_NO_AUTH_ACTION_COUNT requests; this script
makes exactly SETUP_ACTIONS of them, then prints shell exports for the
operator's access key.

The user `operator` may assume roles named `allowed-*` and nothing else;
`allowed-reader` and `denied-reader` both trust it, so the only thing that
denies the second is the user's own policy.
"""

import json
import sys

import boto3

SETUP_ACTIONS = 5
ACCOUNT = "123456789012"


def main(endpoint: str) -> None:
    iam = boto3.client(
        "iam",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="setup",
        aws_secret_access_key="setup",
    )
    iam.create_user(UserName="operator")
    iam.put_user_policy(
        UserName="operator",
        PolicyName="assume-allowed-roles",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": "sts:AssumeRole",
                        "Resource": f"arn:aws:iam::{ACCOUNT}:role/allowed-*",
                    }
                ],
            }
        ),
    )
    key = iam.create_access_key(UserName="operator")["AccessKey"]
    trust = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:user/operator"},
                    "Action": "sts:AssumeRole",
                }
            ],
        }
    )
    for role in ("allowed-reader", "denied-reader"):
        iam.create_role(RoleName=role, AssumeRolePolicyDocument=trust)
    print(f"export ARO_IAM_ENDPOINT={endpoint}")
    print(f"export ARO_IAM_ACCESS_KEY_ID={key['AccessKeyId']}")
    print(f"export ARO_IAM_SECRET_ACCESS_KEY={key['SecretAccessKey']}")


if __name__ == "__main__":
    main(sys.argv[1])
