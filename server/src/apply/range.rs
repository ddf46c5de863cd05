//! Range as etcd answers it: limit (+1 to learn `more`), revision filters,
//! sort, keys_only and count_only, over any read view.

use std::cmp::Ordering;

use kvd_api::etcdserverpb::range_request::{SortOrder, SortTarget};
use kvd_api::etcdserverpb::{RangeRequest, RangeResponse, ResponseHeader};
use kvd_api::mvccpb::KeyValue;

use super::view::View;
use crate::mvcc::{MvccError, RangeEnd, RangeOptions};

fn default_ordering(target: SortTarget, order: SortOrder) -> bool {
    order == SortOrder::None || (target == SortTarget::Key && order == SortOrder::Ascend)
}

fn has_revision_filters(r: &RangeRequest) -> bool {
    r.min_mod_revision != 0 || r.max_mod_revision != 0 || r.min_create_revision != 0 || r.max_create_revision != 0
}

/// Checks a range's revision against the view, as etcd does before a txn runs.
pub fn check_range(view: &dyn View, r: &RangeRequest) -> Result<(), MvccError> {
    if r.revision == 0 {
        return Ok(());
    }
    if r.revision > view.rev() {
        return Err(MvccError::FutureRev);
    }
    if r.revision < view.compact_rev() {
        return Err(MvccError::Compacted);
    }
    Ok(())
}

/// Executes a validated RangeRequest against `view`.
pub fn execute_range(view: &dyn View, r: &RangeRequest) -> Result<RangeResponse, MvccError> {
    let target = SortTarget::try_from(r.sort_target).unwrap_or(SortTarget::Key);
    let order = SortOrder::try_from(r.sort_order).unwrap_or(SortOrder::None);
    let mut limit = r.limit;
    if !default_ordering(target, order) || has_revision_filters(r) {
        limit = 0;
    }
    if limit > 0 && limit < i64::MAX {
        limit += 1;
    }
    let opts = RangeOptions { limit: limit.max(0) as usize, rev: r.revision, count_only: r.count_only };
    let rr = view.range(&r.key, RangeEnd::from_request(&r.range_end), opts)?;
    let mut kvs = rr.kvs;
    if r.max_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision <= r.max_mod_revision);
    }
    if r.min_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision >= r.min_mod_revision);
    }
    if r.max_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision <= r.max_create_revision);
    }
    if r.min_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision >= r.min_create_revision);
    }
    sort(&mut kvs, target, order);
    let mut more = false;
    if r.limit > 0 && kvs.len() > r.limit as usize {
        kvs.truncate(r.limit as usize);
        more = true;
    }
    if r.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    Ok(RangeResponse {
        header: Some(ResponseHeader { revision: rr.rev, ..Default::default() }),
        kvs,
        more,
        count: rr.count as i64,
    })
}

fn sort(kvs: &mut [KeyValue], target: SortTarget, order: SortOrder) {
    let order = if target != SortTarget::Key && order == SortOrder::None { SortOrder::Ascend } else { order };
    if default_ordering(target, order) {
        return;
    }
    let cmp = |a: &KeyValue, b: &KeyValue| -> Ordering {
        match target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        }
    };
    // Stable, so ties keep key order (etcd's sort is unstable; any tie order is valid).
    match order {
        SortOrder::Descend => kvs.sort_by(|a, b| cmp(b, a)),
        _ => kvs.sort_by(cmp),
    }
}
