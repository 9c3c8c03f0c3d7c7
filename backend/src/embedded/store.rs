//! An in-process table with DynamoDB's conditional-write semantics.

use async_trait::async_trait;
use opsfleet_protocol::ports::{Attrs, Cond, IndexQuery, Item, Key, Store, StoreError, Update};
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// One in-process table. Every call is atomic: a condition is checked and the write applied
/// under one lock, as DynamoDB does per item.
pub struct EmbeddedStore {
    table: String,
    items: Mutex<BTreeMap<Key, Attrs>>,
}

impl EmbeddedStore {
    pub(super) fn new(table: &str) -> Self {
        EmbeddedStore { table: table.to_owned(), items: Mutex::new(BTreeMap::new()) }
    }

    fn items(&self) -> MutexGuard<'_, BTreeMap<Key, Attrs>> {
        self.items.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }
}

fn failed(key: &Key, current: Option<Item>) -> StoreError {
    StoreError::ConditionFailed { pk: key.pk.clone(), sk: key.sk.clone(), current: current.map(Box::new) }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError> {
        Ok(self.items().get(key).map(|attrs| Item { key: key.clone(), attrs: attrs.clone() }))
    }

    async fn put(&self, item: Item, cond: Cond) -> Result<(), StoreError> {
        let mut items = self.items();
        let current = items.get(&item.key).map(|attrs| Item { key: item.key.clone(), attrs: attrs.clone() });
        if !cond.holds(current.as_ref()) {
            return Err(failed(&item.key, current));
        }
        items.insert(item.key, item.attrs);
        Ok(())
    }

    async fn update(&self, key: &Key, update: Update, cond: Cond) -> Result<Item, StoreError> {
        let mut items = self.items();
        let current = items.get(key).map(|attrs| Item { key: key.clone(), attrs: attrs.clone() });
        if !cond.holds(current.as_ref()) {
            return Err(failed(key, current));
        }
        let mut attrs = current.map(|i| i.attrs).unwrap_or_default();
        update.apply(&mut attrs);
        items.insert(key.clone(), attrs.clone());
        Ok(Item { key: key.clone(), attrs })
    }

    async fn delete(&self, key: &Key, cond: Cond) -> Result<(), StoreError> {
        let mut items = self.items();
        let current = items.get(key).map(|attrs| Item { key: key.clone(), attrs: attrs.clone() });
        if !cond.holds(current.as_ref()) {
            return Err(failed(key, current));
        }
        items.remove(key);
        Ok(())
    }

    async fn query_index(&self, query: &IndexQuery) -> Result<Vec<Key>, StoreError> {
        let items = self.items();
        let mut found: Vec<(i64, Key)> = items
            .iter()
            .filter(|(_, attrs)| attrs.get(query.index.key).and_then(|v| v.as_str()) == Some(query.value.as_str()))
            .filter_map(|(k, attrs)| {
                let order = attrs.get(query.index.order).and_then(|v| v.as_i64())?;
                (query.since.is_none_or(|s| order >= s)).then(|| (order, k.clone()))
            })
            .collect();
        found.sort_by_key(|(order, _)| std::cmp::Reverse(*order));
        Ok(found.into_iter().take(query.limit).map(|(_, key)| key).collect())
    }

    async fn query_prefix(&self, pk: &str, sk_prefix: &str) -> Result<Vec<Item>, StoreError> {
        let items = self.items();
        let start = Key::new(pk, sk_prefix);
        Ok(items
            .range(start..)
            .take_while(|(k, _)| k.pk == pk && k.sk.starts_with(sk_prefix))
            .map(|(k, attrs)| Item { key: k.clone(), attrs: attrs.clone() })
            .collect())
    }
}
