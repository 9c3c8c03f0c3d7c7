"""A real SQS client (boto3) for the end-to-end tests: it sends bodies to a queue and drains
queues, as an operator's tooling or AWS itself would. The endpoint, region and credentials
come from the environment (AWS_ENDPOINT_URL and friends), as for the SDK."""

import json
import sys
import time

import boto3


def client():
    return boto3.client("sqs")


def url(sqs, name):
    return sqs.get_queue_url(QueueName=name)["QueueUrl"]


def send(name, bodies):
    sqs = client()
    queue = url(sqs, name)
    for body in bodies:
        sqs.send_message(QueueUrl=queue, MessageBody=body)


def drain(name, seconds):
    """Receives and deletes every message until the queue stays empty for `seconds`,
    printing one JSON object per message."""
    sqs = client()
    queue = url(sqs, name)
    quiet_until = time.time() + seconds
    while time.time() < quiet_until:
        out = sqs.receive_message(
            QueueUrl=queue,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=1,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        messages = out.get("Messages", [])
        if not messages:
            continue
        quiet_until = time.time() + seconds
        for m in messages:
            attrs = m.get("Attributes", {})
            print(json.dumps({
                "body": m["Body"],
                "group_id": attrs.get("MessageGroupId"),
                "dedup_id": attrs.get("MessageDeduplicationId"),
                "attributes": {k: v.get("StringValue") for k, v in m.get("MessageAttributes", {}).items()},
            }), flush=True)
        sqs.delete_message_batch(
            QueueUrl=queue,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
        )


def main():
    command, name = sys.argv[1], sys.argv[2]
    if command == "send-files":
        send(name, [open(path).read() for path in sys.argv[3:]])
    elif command == "send-bodies":
        send(name, sys.argv[3:])
    elif command == "drain":
        drain(name, float(sys.argv[3]))
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main()
