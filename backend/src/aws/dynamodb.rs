//! The store port over Amazon DynamoDB: one table keyed by `pk` (hash) and `sk` (range),
//! conditions as condition expressions, TTL on `expires_at`.

use super::errors::{classify, ErrorClass};
use async_trait::async_trait;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, CreateGlobalSecondaryIndexAction, GlobalSecondaryIndex,
    GlobalSecondaryIndexUpdate, KeySchemaElement, KeyType, Projection, ProjectionType,
    ReturnValuesOnConditionCheckFailure, ScalarAttributeType, TimeToLiveSpecification, TimeToLiveStatus,
};
use aws_sdk_dynamodb::Client;
use opsfleet_protocol::ports::{AttrValue, Attrs, Cond, IndexQuery, Item, Key, Store, StoreError, Update, INDEXES};
use std::collections::HashMap;

/// The attribute DynamoDB's TTL reads (Unix seconds).
pub const TTL_ATTRIBUTE: &str = "expires_at";

/// One DynamoDB table.
pub struct DynamoStore {
    client: Client,
    table: String,
}

fn error<E>(
    table: &str,
    operation: &'static str,
    err: &aws_sdk_dynamodb::error::SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>,
    key: Option<&Key>,
) -> StoreError
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + ConditionItem + std::error::Error + 'static,
{
    match classify(err) {
        ErrorClass::ConditionFailed => StoreError::ConditionFailed {
            pk: key.map(|k| k.pk.clone()).unwrap_or_default(),
            sk: key.map(|k| k.sk.clone()).unwrap_or_default(),
            current: err.as_service_error().and_then(ConditionItem::item).and_then(to_item).map(Box::new),
        },
        ErrorClass::Missing(_) => StoreError::NotFound { table: table.to_owned() },
        ErrorClass::Refused(message) => StoreError::Invalid { table: table.to_owned(), operation, message },
        ErrorClass::Retry(message) => StoreError::Unavailable { table: table.to_owned(), operation, message },
    }
}

/// The item a refused conditional write returns (`ReturnValuesOnConditionCheckFailure`).
trait ConditionItem {
    fn item(&self) -> Option<&HashMap<String, AttributeValue>> {
        None
    }
}

macro_rules! condition_item {
    ($($error:path),*) => {$(
        impl ConditionItem for $error {
            fn item(&self) -> Option<&HashMap<String, AttributeValue>> {
                match self {
                    Self::ConditionalCheckFailedException(e) => e.item.as_ref(),
                    _ => None,
                }
            }
        }
    )*};
}

use aws_sdk_dynamodb::operation as op;

condition_item!(op::put_item::PutItemError, op::update_item::UpdateItemError, op::delete_item::DeleteItemError);

macro_rules! no_condition_item {
    ($($error:path),*) => {$(impl ConditionItem for $error {})*};
}

no_condition_item!(
    op::get_item::GetItemError,
    op::query::QueryError,
    op::describe_table::DescribeTableError,
    op::create_table::CreateTableError,
    op::describe_time_to_live::DescribeTimeToLiveError,
    op::update_time_to_live::UpdateTimeToLiveError,
    op::update_table::UpdateTableError
);

fn to_av(value: &AttrValue) -> AttributeValue {
    match value {
        AttrValue::S(s) => AttributeValue::S(s.clone()),
        AttrValue::N(n) => AttributeValue::N(n.to_string()),
        AttrValue::Bool(b) => AttributeValue::Bool(*b),
    }
}

fn from_av(value: &AttributeValue) -> Option<AttrValue> {
    match value {
        AttributeValue::S(s) => Some(AttrValue::S(s.clone())),
        AttributeValue::N(n) => n.parse().ok().map(AttrValue::N),
        AttributeValue::Bool(b) => Some(AttrValue::Bool(*b)),
        _ => None,
    }
}

fn key_map(key: &Key) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("pk".to_owned(), AttributeValue::S(key.pk.clone())),
        ("sk".to_owned(), AttributeValue::S(key.sk.clone())),
    ])
}

fn to_item(map: &HashMap<String, AttributeValue>) -> Option<Item> {
    let pk = map.get("pk")?.as_s().ok()?.clone();
    let sk = map.get("sk")?.as_s().ok()?.clone();
    let attrs: Attrs = map
        .iter()
        .filter(|(k, _)| k.as_str() != "pk" && k.as_str() != "sk")
        .filter_map(|(k, v)| from_av(v).map(|v| (k.clone(), v)))
        .collect();
    Some(Item { key: Key { pk, sk }, attrs })
}

/// Builds expressions with `#nN` / `:vN` placeholders.
#[derive(Default)]
struct Expr {
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl Expr {
    fn name(&mut self, name: &str) -> String {
        let placeholder = format!("#n{}", self.names.len());
        if let Some((existing, _)) = self.names.iter().find(|(_, n)| n.as_str() == name) {
            return existing.clone();
        }
        self.names.insert(placeholder.clone(), name.to_owned());
        placeholder
    }

    fn value(&mut self, value: AttributeValue) -> String {
        let placeholder = format!(":v{}", self.values.len());
        self.values.insert(placeholder.clone(), value);
        placeholder
    }

    fn cond(&mut self, cond: &Cond) -> Option<String> {
        Some(match cond {
            Cond::Always => return None,
            Cond::NotExists => "attribute_not_exists(pk)".to_owned(),
            Cond::Exists => "attribute_exists(pk)".to_owned(),
            Cond::Has(name) => format!("attribute_exists({})", self.name(name)),
            Cond::Lacks(name) => format!("attribute_not_exists({})", self.name(name)),
            Cond::Eq(name, v) => format!("{} = {}", self.name(name), self.value(to_av(v))),
            // Always paired with `Lacks` (see `Cond::missing_or_not`), so a missing attribute
            // reads the same here and in the embedded store.
            Cond::Ne(name, v) => format!("{} <> {}", self.name(name), self.value(to_av(v))),
            Cond::Lt(name, v) => format!("{} < {}", self.name(name), self.value(to_av(v))),
            Cond::Le(name, v) => format!("{} <= {}", self.name(name), self.value(to_av(v))),
            Cond::And(all) => self.join(all, " AND ", "attribute_exists(pk) OR attribute_not_exists(pk)")?,
            Cond::Or(any) => self.join(any, " OR ", "attribute_exists(pk) AND attribute_not_exists(pk)")?,
        })
    }

    /// Joins conditions with `sep`, each in parentheses; one alone is itself (DynamoDB refuses
    /// redundant parentheses, such as `((a = :v))`).
    fn join(&mut self, conds: &[Cond], sep: &str, empty: &str) -> Option<String> {
        let parts: Vec<String> = conds
            .iter()
            .map(|c| self.cond(c).unwrap_or_else(|| "attribute_exists(pk) OR attribute_not_exists(pk)".to_owned()))
            .collect();
        Some(match parts.len() {
            0 => empty.to_owned(),
            1 => parts.into_iter().next().unwrap_or_default(),
            _ => parts.iter().map(|c| format!("({c})")).collect::<Vec<_>>().join(sep),
        })
    }

    fn update(&mut self, update: &Update) -> Option<String> {
        let mut clauses = Vec::new();
        let sets: Vec<String> =
            update.set.iter().map(|(n, v)| format!("{} = {}", self.name(n), self.value(to_av(v)))).collect();
        if !sets.is_empty() {
            clauses.push(format!("SET {}", sets.join(", ")));
        }
        let removes: Vec<String> = update.remove.iter().map(|n| self.name(n)).collect();
        if !removes.is_empty() {
            clauses.push(format!("REMOVE {}", removes.join(", ")));
        }
        let adds: Vec<String> = update
            .add
            .iter()
            .map(|(n, by)| format!("{} {}", self.name(n), self.value(AttributeValue::N(by.to_string()))))
            .collect();
        if !adds.is_empty() {
            clauses.push(format!("ADD {}", adds.join(", ")));
        }
        (!clauses.is_empty()).then(|| clauses.join(" "))
    }

    fn names(&self) -> Option<HashMap<String, String>> {
        (!self.names.is_empty()).then(|| self.names.clone())
    }

    fn values(&self) -> Option<HashMap<String, AttributeValue>> {
        (!self.values.is_empty()).then(|| self.values.clone())
    }
}

impl DynamoStore {
    /// Opens a table, checking that it exists.
    pub async fn open(client: Client, table: &str) -> Result<Self, StoreError> {
        client.describe_table().table_name(table).send().await.map_err(|e| error(table, "DescribeTable", &e, None))?;
        Ok(DynamoStore { client, table: table.to_owned() })
    }

    async fn get_item(&self, key: &Key, consistent: bool) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key_map(key)))
            .consistent_read(consistent)
            .send()
            .await
            .map_err(|e| error(&self.table, "GetItem", &e, Some(key)))?;
        Ok(out.item.as_ref().and_then(to_item))
    }

    async fn query(&self, pk: &str, sk_prefix: &str, consistent: bool) -> Result<Vec<Item>, StoreError> {
        let mut values = HashMap::from([(":pk".to_owned(), AttributeValue::S(pk.to_owned()))]);
        let key_condition = if sk_prefix.is_empty() {
            "pk = :pk".to_owned()
        } else {
            values.insert(":prefix".to_owned(), AttributeValue::S(sk_prefix.to_owned()));
            "pk = :pk AND begins_with(sk, :prefix)".to_owned()
        };
        let mut items = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression(&key_condition)
                .set_expression_attribute_values(Some(values.clone()))
                .consistent_read(consistent)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| error(&self.table, "Query", &e, None))?;
            items.extend(out.items.unwrap_or_default().iter().filter_map(to_item));
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => break,
            }
        }
        Ok(items)
    }
}

#[async_trait]
impl Store for DynamoStore {
    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError> {
        self.get_item(key, true).await
    }

    async fn peek(&self, key: &Key) -> Result<Option<Item>, StoreError> {
        self.get_item(key, false).await
    }

    async fn put(&self, item: Item, cond: Cond) -> Result<(), StoreError> {
        let mut expr = Expr::default();
        let condition = expr.cond(&cond);
        let mut map = key_map(&item.key);
        for (name, value) in &item.attrs {
            map.insert(name.clone(), to_av(value));
        }
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(map))
            .set_condition_expression(condition)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .set_expression_attribute_names(expr.names())
            .set_expression_attribute_values(expr.values())
            .send()
            .await
            .map_err(|e| error(&self.table, "PutItem", &e, Some(&item.key)))?;
        Ok(())
    }

    async fn update(&self, key: &Key, update: Update, cond: Cond) -> Result<Item, StoreError> {
        let mut expr = Expr::default();
        let condition = expr.cond(&cond);
        let update_expression = expr.update(&update);
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_map(key)))
            .set_update_expression(update_expression)
            .set_condition_expression(condition)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .set_expression_attribute_names(expr.names())
            .set_expression_attribute_values(expr.values())
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew)
            .send()
            .await
            .map_err(|e| error(&self.table, "UpdateItem", &e, Some(key)))?;
        Ok(out.attributes.as_ref().and_then(to_item).unwrap_or_else(|| Item { key: key.clone(), attrs: Attrs::new() }))
    }

    async fn delete(&self, key: &Key, cond: Cond) -> Result<(), StoreError> {
        let mut expr = Expr::default();
        let condition = expr.cond(&cond);
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key_map(key)))
            .set_condition_expression(condition)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .set_expression_attribute_names(expr.names())
            .set_expression_attribute_values(expr.values())
            .send()
            .await
            .map_err(|e| error(&self.table, "DeleteItem", &e, Some(key)))?;
        Ok(())
    }

    async fn query_prefix(&self, pk: &str, sk_prefix: &str) -> Result<Vec<Item>, StoreError> {
        self.query(pk, sk_prefix, true).await
    }

    async fn query_index(&self, query: &IndexQuery) -> Result<Vec<Key>, StoreError> {
        let mut names = HashMap::from([("#k".to_owned(), query.index.key.to_owned())]);
        let mut values = HashMap::from([(":k".to_owned(), AttributeValue::S(query.value.clone()))]);
        let mut condition = "#k = :k".to_owned();
        if let Some(since) = query.since {
            names.insert("#o".to_owned(), query.index.order.to_owned());
            values.insert(":o".to_owned(), AttributeValue::N(since.to_string()));
            condition.push_str(" AND #o >= :o");
        }
        let mut items = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        while items.len() < query.limit {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(query.index.name)
                .key_condition_expression(&condition)
                .set_expression_attribute_names(Some(names.clone()))
                .set_expression_attribute_values(Some(values.clone()))
                .scan_index_forward(false)
                .limit((query.limit - items.len()).min(1000) as i32)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| error(&self.table, "Query", &e, None))?;
            items.extend(out.items.unwrap_or_default().iter().filter_map(to_item).map(|item| item.key));
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => break,
            }
        }
        items.truncate(query.limit);
        Ok(items)
    }

    async fn peek_prefix(&self, pk: &str, sk_prefix: &str) -> Result<Vec<Item>, StoreError> {
        self.query(pk, sk_prefix, false).await
    }
}

/// Creates the table (on-demand capacity) with the ledger's [`INDEXES`] unless it exists,
/// adds an index an existing table lacks (one at a time, as DynamoDB takes them), and turns on
/// TTL on [`TTL_ATTRIBUTE`] unless it is on.
pub(super) async fn ensure_table(client: &Client, table: &str) -> Result<(), StoreError> {
    let invalid = |operation: &'static str, e: &dyn std::fmt::Display| StoreError::Invalid {
        table: table.to_owned(),
        operation,
        message: e.to_string(),
    };
    let attr = |name: &str, kind: ScalarAttributeType| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(kind)
            .build()
            .map_err(|e| invalid("CreateTable", &e))
    };
    let key = |name: &str, kind: KeyType| {
        KeySchemaElement::builder().attribute_name(name).key_type(kind).build().map_err(|e| invalid("CreateTable", &e))
    };
    let index = |i: &opsfleet_protocol::ports::Index| -> Result<GlobalSecondaryIndex, StoreError> {
        GlobalSecondaryIndex::builder()
            .index_name(i.name)
            .key_schema(key(i.key, KeyType::Hash)?)
            .key_schema(key(i.order, KeyType::Range)?)
            .projection(Projection::builder().projection_type(ProjectionType::KeysOnly).build())
            .build()
            .map_err(|e| invalid("CreateTable", &e))
    };
    let mut attributes = vec![attr("pk", ScalarAttributeType::S)?, attr("sk", ScalarAttributeType::S)?];
    for i in &INDEXES {
        attributes.push(attr(i.key, ScalarAttributeType::S)?);
    }
    attributes.push(attr(INDEXES[0].order, ScalarAttributeType::N)?);
    let mut create = client
        .create_table()
        .table_name(table)
        .set_attribute_definitions(Some(attributes.clone()))
        .key_schema(key("pk", KeyType::Hash)?)
        .key_schema(key("sk", KeyType::Range)?)
        .billing_mode(BillingMode::PayPerRequest);
    for i in &INDEXES {
        create = create.global_secondary_indexes(index(i)?);
    }
    if let Err(e) = create.send().await {
        let code = aws_sdk_dynamodb::error::ProvideErrorMetadata::code(&e).unwrap_or_default();
        if code != "ResourceInUseException" {
            return Err(error(table, "CreateTable", &e, None));
        }
    }
    // Wait for the table (and each index added) to become active.
    for i in INDEXES.iter() {
        let described = wait_active(client, table).await?;
        if described.iter().any(|name| name == i.name) {
            continue;
        }
        let update = GlobalSecondaryIndexUpdate::builder()
            .create(
                CreateGlobalSecondaryIndexAction::builder()
                    .index_name(i.name)
                    .key_schema(key(i.key, KeyType::Hash)?)
                    .key_schema(key(i.order, KeyType::Range)?)
                    .projection(Projection::builder().projection_type(ProjectionType::KeysOnly).build())
                    .build()
                    .map_err(|e| invalid("UpdateTable", &e))?,
            )
            .build();
        client
            .update_table()
            .table_name(table)
            .set_attribute_definitions(Some(attributes.clone()))
            .global_secondary_index_updates(update)
            .send()
            .await
            .map_err(|e| error(table, "UpdateTable", &e, None))?;
    }
    wait_active(client, table).await?;
    // The table may exist from an earlier run that stopped before this step: check TTL too.
    let current = client
        .describe_time_to_live()
        .table_name(table)
        .send()
        .await
        .map_err(|e| error(table, "DescribeTimeToLive", &e, None))?;
    let enabled = current.time_to_live_description.is_some_and(|d| {
        d.attribute_name.as_deref() == Some(TTL_ATTRIBUTE)
            && matches!(d.time_to_live_status, Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling))
    });
    if enabled {
        return Ok(());
    }
    let ttl = TimeToLiveSpecification::builder()
        .attribute_name(TTL_ATTRIBUTE)
        .enabled(true)
        .build()
        .map_err(|e| invalid("UpdateTimeToLive", &e))?;
    client
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(ttl)
        .send()
        .await
        .map_err(|e| error(table, "UpdateTimeToLive", &e, None))?;
    Ok(())
}

/// How long setup waits for a table and its indexes to become active: an index added to a
/// large table is backfilled first, which can take many minutes.
const ACTIVE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Waits until the table and its indexes are active; returns the names of its indexes.
async fn wait_active(client: &Client, table: &str) -> Result<Vec<String>, StoreError> {
    let started = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(250);
    let mut told = started;
    while started.elapsed() < ACTIVE_PATIENCE {
        let out = client
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|e| error(table, "DescribeTable", &e, None))?;
        let Some(t) = out.table else { break };
        let table_active = t.table_status.as_ref() == Some(&aws_sdk_dynamodb::types::TableStatus::Active);
        let indexes = t.global_secondary_indexes.unwrap_or_default();
        let indexes_active = indexes
            .iter()
            .all(|i| i.index_status.as_ref().is_none_or(|s| *s == aws_sdk_dynamodb::types::IndexStatus::Active));
        if table_active && indexes_active {
            return Ok(indexes.iter().filter_map(|i| i.index_name.clone()).collect());
        }
        if told.elapsed() >= std::time::Duration::from_secs(30) {
            told = std::time::Instant::now();
            tracing::info!(%table, waited_secs = started.elapsed().as_secs(), "Waiting for the table and its indexes to become active.");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_secs(5));
    }
    Err(StoreError::Unavailable {
        table: table.to_owned(),
        operation: "DescribeTable",
        message: format!(
            "the table or an index did not become active within {} minutes",
            ACTIVE_PATIENCE.as_secs() / 60
        ),
    })
}
