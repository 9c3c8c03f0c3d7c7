//! What the DynamoDB action tests share: tables made by the test and their backups, read
//! straight from the emulator.

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ProvisionedThroughput, ScalarAttributeType, Tag,
};

/// A provisioned table of `read`/`write` units with these tags, made by the test; its ARN.
pub async fn table(
    dynamodb: &aws_sdk_dynamodb::Client,
    name: &str,
    units: (i64, i64),
    tags: &[(&str, &str)],
) -> String {
    let key = |b: KeySchemaElement| b;
    let mut request = dynamodb
        .create_table()
        .table_name(name)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("attr"),
        )
        .key_schema(key(KeySchemaElement::builder().attribute_name("pk").key_type(KeyType::Hash).build().expect("key")))
        .billing_mode(BillingMode::Provisioned)
        .provisioned_throughput(
            ProvisionedThroughput::builder()
                .read_capacity_units(units.0)
                .write_capacity_units(units.1)
                .build()
                .expect("units"),
        );
    for (k, v) in tags {
        request = request.tags(Tag::builder().key(*k).value(*v).build().expect("tag"));
    }
    let out = request.send().await.expect("create table");
    out.table_description().and_then(|t| t.table_arn()).expect("arn").to_owned()
}

/// The names of a table's user backups, as the emulator lists them (no layer between).
pub async fn backup_names(dynamodb: &aws_sdk_dynamodb::Client, table: &str) -> Vec<String> {
    let out = dynamodb.list_backups().table_name(table).send().await.expect("list backups");
    let mut names: Vec<String> =
        out.backup_summaries().iter().filter_map(|b| b.backup_name()).map(str::to_owned).collect();
    names.sort();
    names
}

/// A table's billing mode and provisioned units.
pub async fn capacity(dynamodb: &aws_sdk_dynamodb::Client, table: &str) -> (String, i64, i64) {
    let out = dynamodb.describe_table().table_name(table).send().await.expect("describe table");
    let t = out.table().expect("table");
    let mode = t.billing_mode_summary().and_then(|b| b.billing_mode()).map(|m| m.as_str().to_owned());
    let units = t.provisioned_throughput();
    (
        mode.unwrap_or_else(|| "PROVISIONED".into()),
        units.and_then(|u| u.read_capacity_units()).unwrap_or(0),
        units.and_then(|u| u.write_capacity_units()).unwrap_or(0),
    )
}
