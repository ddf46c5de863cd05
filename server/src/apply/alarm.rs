//! The alarm store: active alarms per member, changed only by applied Alarm
//! requests and persisted in the backend's alarm table with the entry.

use std::collections::BTreeSet;

use bytes::Bytes;
use kvd_api::etcdserverpb::alarm_request::AlarmAction;
use kvd_api::etcdserverpb::{AlarmMember, AlarmRequest, AlarmResponse, AlarmType, ResponseHeader};
use parking_lot::Mutex;

use crate::backend::{Backend, BackendError, Table};
use crate::metrics;

#[derive(Default)]
pub struct AlarmStore {
    active: Mutex<BTreeSet<(u64, i32)>>,
    /// Backend writes produced by the last `apply`, taken by the applier.
    pending: Mutex<Vec<(Vec<u8>, Option<Bytes>)>>,
}

fn key(member: u64, alarm: i32) -> Vec<u8> {
    let mut k = member.to_be_bytes().to_vec();
    k.extend_from_slice(&alarm.to_be_bytes());
    k
}

pub fn alarm_name(t: i32) -> &'static str {
    match AlarmType::try_from(t) {
        Ok(AlarmType::Nospace) => "NOSPACE",
        Ok(AlarmType::Corrupt) => "CORRUPT",
        _ => "NONE",
    }
}

impl AlarmStore {
    /// Loads the persisted alarms.
    pub fn load(be: &Backend) -> Result<Self, BackendError> {
        let mut set = BTreeSet::new();
        be.scan_committed(Table::Alarm, &[], None, |k, _| {
            if k.len() == 12 {
                let m = u64::from_be_bytes(k[0..8].try_into().expect("8 bytes"));
                let t = i32::from_be_bytes(k[8..12].try_into().expect("4 bytes"));
                set.insert((m, t));
            }
            true
        })?;
        let s = Self { active: Mutex::new(set), pending: Mutex::default() };
        s.publish();
        Ok(s)
    }

    /// Re-reads the alarms after the backend's content was replaced.
    pub fn reload(&self, be: &Backend) -> Result<(), BackendError> {
        let fresh = Self::load(be)?;
        *self.active.lock() = std::mem::take(&mut *fresh.active.lock());
        self.pending.lock().clear();
        self.publish();
        Ok(())
    }

    /// True when any member has raised an alarm of type `t`.
    pub fn active(&self, t: AlarmType) -> bool {
        self.active.lock().iter().any(|(_, a)| *a == t as i32)
    }

    /// All active alarms.
    pub fn list(&self) -> Vec<AlarmMember> {
        self.active.lock().iter().map(|&(member_id, alarm)| AlarmMember { member_id, alarm }).collect()
    }

    /// Applies an Alarm request (GET, ACTIVATE, DEACTIVATE) as etcd does.
    pub fn apply(&self, r: &AlarmRequest) -> AlarmResponse {
        let mut resp = AlarmResponse { header: Some(ResponseHeader::default()), alarms: Vec::new() };
        let m = AlarmMember { member_id: r.member_id, alarm: r.alarm };
        match AlarmAction::try_from(r.action) {
            Ok(AlarmAction::Get) => {
                resp.alarms = self
                    .list()
                    .into_iter()
                    .filter(|a| r.alarm == AlarmType::None as i32 || a.alarm == r.alarm)
                    .collect();
            }
            Ok(AlarmAction::Activate) if r.alarm != AlarmType::None as i32 => {
                // Raising an alarm that is already active answers with it, as etcd does.
                if self.active.lock().insert((r.member_id, r.alarm)) {
                    self.pending.lock().push((key(r.member_id, r.alarm), Some(Bytes::new())));
                    tracing::warn!(member_id = %format!("{:x}", r.member_id), alarm = alarm_name(r.alarm), "alarm raised");
                }
                resp.alarms.push(m);
            }
            Ok(AlarmAction::Deactivate) if self.active.lock().remove(&(r.member_id, r.alarm)) => {
                self.pending.lock().push((key(r.member_id, r.alarm), None));
                tracing::info!(member_id = %format!("{:x}", r.member_id), alarm = alarm_name(r.alarm), "alarm disarmed");
                resp.alarms.push(m);
            }
            _ => {}
        }
        self.publish();
        resp
    }

    pub fn pending_writes(&self) -> Vec<(Vec<u8>, Option<Bytes>)> {
        std::mem::take(&mut *self.pending.lock())
    }

    fn publish(&self) {
        let fam = &metrics::get().alarms;
        fam.clear();
        for (m, t) in self.active.lock().iter() {
            fam.get_or_create(&metrics::AlarmLabels { server_id: format!("{m:x}"), alarm_type: alarm_name(*t) }).set(1);
        }
    }
}
