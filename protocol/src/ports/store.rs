//! The store port: DynamoDB items under a (partition key, sort key), conditional writes and
//! queries by sort-key prefix.

use async_trait::async_trait;
use std::collections::BTreeMap;

/// An item's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// The partition key (`pk`).
    pub pk: String,
    /// The sort key (`sk`).
    pub sk: String,
}

impl Key {
    /// A key from its two parts.
    pub fn new(pk: impl Into<String>, sk: impl Into<String>) -> Self {
        Key { pk: pk.into(), sk: sk.into() }
    }
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum AttrValue {
    /// A string.
    S(String),
    /// An integer.
    N(i64),
    /// A boolean.
    Bool(bool),
}

impl AttrValue {
    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            AttrValue::S(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is one.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            AttrValue::N(n) => Some(*n),
            _ => None,
        }
    }
}

impl From<&str> for AttrValue {
    fn from(s: &str) -> Self {
        AttrValue::S(s.to_owned())
    }
}

impl From<String> for AttrValue {
    fn from(s: String) -> Self {
        AttrValue::S(s)
    }
}

impl From<i64> for AttrValue {
    fn from(n: i64) -> Self {
        AttrValue::N(n)
    }
}

impl From<bool> for AttrValue {
    fn from(b: bool) -> Self {
        AttrValue::Bool(b)
    }
}

/// Attributes of an item, by name (the key attributes `pk` and `sk` excluded).
pub type Attrs = BTreeMap<String, AttrValue>;

/// One item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The key.
    pub key: Key,
    /// The other attributes.
    pub attrs: Attrs,
}

impl Item {
    /// A string attribute.
    pub fn str(&self, name: &str) -> Option<&str> {
        self.attrs.get(name).and_then(AttrValue::as_str)
    }

    /// An integer attribute.
    pub fn int(&self, name: &str) -> Option<i64> {
        self.attrs.get(name).and_then(AttrValue::as_i64)
    }
}

/// A condition on the current item, evaluated atomically with the write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cond {
    /// No condition.
    Always,
    /// The item does not exist.
    NotExists,
    /// The item exists.
    Exists,
    /// The attribute exists.
    Has(String),
    /// The attribute does not exist.
    Lacks(String),
    /// The attribute equals the value.
    Eq(String, AttrValue),
    /// The attribute exists and differs from the value. Use it only next to [`Cond::Lacks`]
    /// of the same attribute ([`Cond::missing_or_not`]): DynamoDB's `<>` on a missing
    /// attribute is not this.
    Ne(String, AttrValue),
    /// The attribute is less than the value.
    Lt(String, AttrValue),
    /// The attribute is less than or equal to the value.
    Le(String, AttrValue),
    /// All of the conditions hold.
    And(Vec<Cond>),
    /// Any of the conditions holds.
    Or(Vec<Cond>),
}

impl Cond {
    /// `name = value`.
    pub fn eq(name: &str, value: impl Into<AttrValue>) -> Self {
        Cond::Eq(name.to_owned(), value.into())
    }

    /// The attribute is missing or differs from the value.
    pub fn missing_or_not(name: &str, value: impl Into<AttrValue>) -> Self {
        Cond::Or(vec![Cond::Lacks(name.to_owned()), Cond::Ne(name.to_owned(), value.into())])
    }

    /// `name < value`.
    pub fn lt(name: &str, value: impl Into<AttrValue>) -> Self {
        Cond::Lt(name.to_owned(), value.into())
    }

    /// Evaluates the condition against an item (or its absence). The embedded store uses this;
    /// DynamoDB evaluates the same condition server-side. Comparisons between values of
    /// different types are false, as in DynamoDB.
    pub fn holds(&self, item: Option<&Item>) -> bool {
        let attr = |name: &str| item.and_then(|i| i.attrs.get(name));
        match self {
            Cond::Always => true,
            Cond::NotExists => item.is_none(),
            Cond::Exists => item.is_some(),
            Cond::Has(name) => attr(name).is_some(),
            Cond::Lacks(name) => attr(name).is_none(),
            Cond::Eq(name, v) => attr(name) == Some(v),
            Cond::Ne(name, v) => attr(name).is_some_and(|a| a != v),
            Cond::Lt(name, v) => attr(name).is_some_and(|a| same_type(a, v) && a < v),
            Cond::Le(name, v) => attr(name).is_some_and(|a| same_type(a, v) && a <= v),
            Cond::And(all) => all.iter().all(|c| c.holds(item)),
            Cond::Or(any) => any.iter().any(|c| c.holds(item)),
        }
    }
}

fn same_type(a: &AttrValue, b: &AttrValue) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

/// An update of an item: attributes to set, to remove, and numbers to add to (missing numbers
/// count as zero). An update of a missing item creates it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Update {
    /// Attributes to set.
    pub set: Attrs,
    /// Attributes to remove.
    pub remove: Vec<String>,
    /// Numbers to add to.
    pub add: BTreeMap<String, i64>,
}

impl Update {
    /// Sets an attribute.
    pub fn set(mut self, name: &str, value: impl Into<AttrValue>) -> Self {
        self.set.insert(name.to_owned(), value.into());
        self
    }

    /// Removes an attribute.
    pub fn remove(mut self, name: &str) -> Self {
        self.remove.push(name.to_owned());
        self
    }

    /// Adds to a number.
    pub fn add(mut self, name: &str, by: i64) -> Self {
        *self.add.entry(name.to_owned()).or_default() += by;
        self
    }

    /// Applies the update to an item's attributes (the embedded store's semantics, which are
    /// DynamoDB's).
    pub fn apply(&self, attrs: &mut Attrs) {
        for (name, value) in &self.set {
            attrs.insert(name.clone(), value.clone());
        }
        for name in &self.remove {
            attrs.remove(name);
        }
        for (name, by) in &self.add {
            let current = attrs.get(name).and_then(AttrValue::as_i64).unwrap_or(0);
            attrs.insert(name.clone(), AttrValue::N(current + by));
        }
    }
}

/// Why a store call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The write's condition did not hold: an expected outcome (lock held, status moved on).
    #[error("condition failed on {pk}/{sk}")]
    ConditionFailed {
        /// The item's partition key.
        pk: String,
        /// The item's sort key.
        sk: String,
        /// The item as it was when the condition failed, where the store returns it (DynamoDB
        /// does with `ReturnValuesOnConditionCheckFailure`), so that a refused writer learns
        /// why without another read.
        current: Option<Box<Item>>,
    },
    /// The table does not exist.
    #[error("table {table} does not exist (run `opsfleet setup`)")]
    NotFound {
        /// The table name.
        table: String,
    },
    /// The request was refused as invalid.
    #[error("table {table}: {operation} refused: {message}")]
    Invalid {
        /// The table name.
        table: String,
        /// The operation.
        operation: &'static str,
        /// The service's message.
        message: String,
    },
    /// Transport failure, throttling or a server error; retry later.
    #[error("table {table}: {operation} failed: {message}")]
    Unavailable {
        /// The table name.
        table: String,
        /// The operation.
        operation: &'static str,
        /// What happened.
        message: String,
    },
}

impl StoreError {
    /// Whether trying again later may succeed (transport, throttling, a server error).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
}

/// A secondary index of the table: items by one string attribute, ordered by a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Index {
    /// The index's name.
    pub name: &'static str,
    /// Its partition key attribute (a string).
    pub key: &'static str,
    /// Its sort key attribute (a number).
    pub order: &'static str,
}

/// A query of a secondary index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexQuery {
    /// The index.
    pub index: Index,
    /// The value of its partition key.
    pub value: String,
    /// The least value of its sort key.
    pub since: Option<i64>,
    /// The most items.
    pub limit: usize,
}

/// One table.
#[async_trait]
pub trait Store: Send + Sync {
    /// Reads an item (strongly consistent).
    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError>;

    /// Reads an item eventually consistently: half the cost of [`Store::get`], and may miss a
    /// write of the last second. For polling, where a stale answer only delays.
    async fn peek(&self, key: &Key) -> Result<Option<Item>, StoreError> {
        self.get(key).await
    }

    /// Writes a whole item if the condition holds.
    async fn put(&self, item: Item, cond: Cond) -> Result<(), StoreError>;

    /// Updates (or creates) an item if the condition holds; returns the item after the update.
    async fn update(&self, key: &Key, update: Update, cond: Cond) -> Result<Item, StoreError>;

    /// Deletes an item if the condition holds (deleting a missing item with `Always` is fine).
    async fn delete(&self, key: &Key, cond: Cond) -> Result<(), StoreError>;

    /// Every item under the partition key whose sort key starts with the prefix, in sort-key
    /// order.
    async fn query_prefix(&self, pk: &str, sk_prefix: &str) -> Result<Vec<Item>, StoreError>;

    /// The keys of the items of a secondary index whose `key` attribute equals `value`, newest
    /// first by the index's `order` attribute (a number), at least `since` when given, at most
    /// `limit` of them (eventually consistent, as indexes are; read the items themselves for
    /// their current attributes).
    async fn query_index(&self, index: &IndexQuery) -> Result<Vec<Key>, StoreError>;

    /// As [`Store::query_prefix`], eventually consistent (half the cost, may be a moment old).
    async fn peek_prefix(&self, pk: &str, sk_prefix: &str) -> Result<Vec<Item>, StoreError> {
        self.query_prefix(pk, sk_prefix).await
    }
}
