"""Deploys a CloudFormation template on the emulator with boto3, as an operator's pipeline
would: `deploy STACK TEMPLATE [KEY=VALUE...]` creates the stack, waits for it, and prints one
JSON object: its status, reason, outputs and resources (logical id -> type, physical id).
The endpoint, region and credentials come from the environment, as for the SDK."""

import json
import sys
import time

import boto3


def deploy(stack, template, parameters):
    cfn = boto3.client("cloudformation")
    with open(template, encoding="utf-8") as f:
        body = f.read()
    cfn.create_stack(
        StackName=stack,
        TemplateBody=body,
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters],
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"],
    )
    deadline = time.time() + 120
    while True:
        found = cfn.describe_stacks(StackName=stack)["Stacks"][0]
        if not found["StackStatus"].endswith("_IN_PROGRESS") or time.time() > deadline:
            break
        time.sleep(0.5)
    resources = cfn.describe_stack_resources(StackName=stack)["StackResources"]
    print(json.dumps({
        "status": found["StackStatus"],
        "reason": found.get("StackStatusReason", ""),
        "outputs": {o["OutputKey"]: o["OutputValue"] for o in found.get("Outputs", [])},
        "resources": {r.get("LogicalResourceId", str(i)): [r.get("ResourceType", ""), r.get("PhysicalResourceId", "")]
                      for i, r in enumerate(resources)},
    }))


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "deploy":
        deploy(sys.argv[2], sys.argv[3], [p.split("=", 1) for p in sys.argv[4:]])
    else:
        sys.exit("usage: cfn_client.py deploy STACK TEMPLATE [KEY=VALUE...]")
