//! `EtcdClient` against in-process fake members that speak the etcd v3 API
//! (kvd-api's generated server traits): merging MemberList with each member's
//! Status, alarm mapping, endpoint fallback and error tolerance.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvd_api::etcdserverpb::cluster_server::{Cluster, ClusterServer};
use kvd_api::etcdserverpb::kv_server::{Kv, KvServer};
use kvd_api::etcdserverpb::maintenance_server::{Maintenance, MaintenanceServer};
use kvd_api::etcdserverpb::*;
use tonic::{Request, Response, Status};

use super::*;

/// A fake member: answers from fixed data and logs the changes asked of it.
pub(crate) struct Fake {
    id: u64,
    leader: u64,
    members: Vec<Member>,
    alarms: Vec<AlarmMember>,
    compacted: Mutex<i64>,
    pub(crate) calls: Mutex<Vec<String>>,
}

type R<T> = std::result::Result<Response<T>, Status>;

fn header(id: u64) -> Option<ResponseHeader> {
    Some(ResponseHeader { cluster_id: 1, member_id: id, revision: 42, raft_term: 2 })
}

impl Fake {
    fn log(&self, s: String) {
        self.calls.lock().expect("lock").push(s);
    }
}

#[tonic::async_trait]
impl Cluster for Fake {
    async fn member_add(&self, r: Request<MemberAddRequest>) -> R<MemberAddResponse> {
        let r = r.into_inner();
        self.log(format!("add {} learner={}", r.peer_ur_ls.join(","), r.is_learner));
        let member = Member { id: 0x99, peer_ur_ls: r.peer_ur_ls, is_learner: r.is_learner, ..Member::default() };
        Ok(Response::new(MemberAddResponse { header: header(self.id), member: Some(member), members: vec![] }))
    }
    async fn member_remove(&self, r: Request<MemberRemoveRequest>) -> R<MemberRemoveResponse> {
        self.log(format!("remove {:x}", r.into_inner().id));
        Ok(Response::new(MemberRemoveResponse { header: header(self.id), members: vec![] }))
    }
    async fn member_update(&self, _: Request<MemberUpdateRequest>) -> R<MemberUpdateResponse> {
        Err(Status::unimplemented("update"))
    }
    async fn member_list(&self, _: Request<MemberListRequest>) -> R<MemberListResponse> {
        Ok(Response::new(MemberListResponse { header: header(self.id), members: self.members.clone() }))
    }
    async fn member_promote(&self, _: Request<MemberPromoteRequest>) -> R<MemberPromoteResponse> {
        Err(Status::failed_precondition("etcdserver: can only promote a learner member which is in sync with leader"))
    }
}

#[tonic::async_trait]
impl Maintenance for Fake {
    async fn alarm(&self, r: Request<AlarmRequest>) -> R<AlarmResponse> {
        let r = r.into_inner();
        self.log(format!("alarm {} {:x} {}", r.action, r.member_id, r.alarm));
        Ok(Response::new(AlarmResponse { header: header(self.id), alarms: self.alarms.clone() }))
    }
    async fn status(&self, _: Request<StatusRequest>) -> R<StatusResponse> {
        Ok(Response::new(StatusResponse {
            header: header(self.id),
            leader: self.leader,
            raft_index: 100 + self.id,
            db_size: 1000,
            db_size_in_use: 600,
            ..StatusResponse::default()
        }))
    }
    async fn defragment(&self, _: Request<DefragmentRequest>) -> R<DefragmentResponse> {
        self.log("defrag".into());
        Ok(Response::new(DefragmentResponse { header: header(self.id) }))
    }
    async fn hash(&self, _: Request<HashRequest>) -> R<HashResponse> {
        Err(Status::unimplemented("hash"))
    }
    async fn hash_kv(&self, _: Request<HashKvRequest>) -> R<HashKvResponse> {
        Err(Status::unimplemented("hashkv"))
    }
    type SnapshotStream = futures::stream::Empty<std::result::Result<SnapshotResponse, Status>>;
    async fn snapshot(&self, _: Request<SnapshotRequest>) -> R<Self::SnapshotStream> {
        Err(Status::unimplemented("snapshot"))
    }
    async fn move_leader(&self, r: Request<MoveLeaderRequest>) -> R<MoveLeaderResponse> {
        self.log(format!("move {:x}", r.into_inner().target_id));
        Ok(Response::new(MoveLeaderResponse { header: header(self.id) }))
    }
    async fn downgrade(&self, _: Request<DowngradeRequest>) -> R<DowngradeResponse> {
        Err(Status::unimplemented("downgrade"))
    }
}

#[tonic::async_trait]
impl Kv for Fake {
    async fn range(&self, _: Request<RangeRequest>) -> R<RangeResponse> {
        Err(Status::unimplemented("range"))
    }
    type RangeStreamStream = futures::stream::Empty<std::result::Result<RangeStreamResponse, Status>>;
    async fn range_stream(&self, _: Request<RangeRequest>) -> R<Self::RangeStreamStream> {
        Err(Status::unimplemented("range stream"))
    }
    async fn put(&self, _: Request<PutRequest>) -> R<PutResponse> {
        Err(Status::unimplemented("put"))
    }
    async fn delete_range(&self, _: Request<DeleteRangeRequest>) -> R<DeleteRangeResponse> {
        Err(Status::unimplemented("delete"))
    }
    async fn txn(&self, _: Request<TxnRequest>) -> R<TxnResponse> {
        Err(Status::unimplemented("txn"))
    }
    async fn compact(&self, r: Request<CompactionRequest>) -> R<CompactionResponse> {
        let rev = r.into_inner().revision;
        let mut c = self.compacted.lock().expect("lock");
        if rev <= *c {
            return Err(Status::out_of_range("etcdserver: mvcc: required revision has been compacted"));
        }
        *c = rev;
        Ok(Response::new(CompactionResponse { header: header(self.id) }))
    }
}

pub(crate) fn member(o: u32, learner: bool) -> Member {
    Member {
        id: 0x10 + o as u64,
        name: format!("demo-{o}"),
        peer_ur_ls: vec![crate::naming::peer_url("demo", "ns", o, false)],
        client_ur_ls: vec![crate::naming::client_url("demo", "ns", o)],
        is_learner: learner,
    }
}

/// Serves a fake member; returns its endpoint and the shared state.
async fn serve(id: u64) -> (String, Arc<Fake>) {
    let members = vec![member(0, false), member(1, false), member(2, true)];
    let alarms = vec![AlarmMember { member_id: 0x11, alarm: AlarmType::Nospace as i32 }];
    serve_with(id, 0x10, members, alarms).await
}

/// Serves a fake member `id` that names `leader` and reports `members` and `alarms`.
pub(crate) async fn serve_with(
    id: u64,
    leader: u64,
    members: Vec<Member>,
    alarms: Vec<AlarmMember>,
) -> (String, Arc<Fake>) {
    let fake = Arc::new(Fake { id, leader, members, alarms, compacted: Mutex::new(5), calls: Mutex::default() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let router = tonic::transport::Server::builder()
        .add_service(ClusterServer::from_arc(fake.clone()))
        .add_service(MaintenanceServer::from_arc(fake.clone()))
        .add_service(KvServer::from_arc(fake.clone()));
    tokio::spawn(router.serve_with_incoming(incoming));
    (format!("http://{addr}"), fake)
}

/// An endpoint nothing listens on.
const DEAD: &str = "http://127.0.0.1:1";

#[tokio::test]
async fn view_merges_members_status_and_alarms() {
    let (a, _) = serve(0x10).await;
    let (b, _) = serve(0x11).await;
    let etcd = EtcdClient::new("demo", Duration::from_millis(500));
    let view = etcd.view(&[a, b, DEAD.to_string()]).await;
    let members = view.members.expect("members");
    assert_eq!(members.iter().map(|m| m.ordinal).collect::<Vec<_>>(), vec![Some(0), Some(1), Some(2)]);
    let h0 = members[0].health.as_ref().expect("member 0 answered");
    assert_eq!((h0.leader, h0.revision, h0.raft_index, h0.db_size_in_use), (0x10, 42, 116, 600));
    assert_eq!(members[1].health.as_ref().map(|h| h.raft_index), Some(117));
    assert!(members[2].health.is_none() && members[2].is_learner);
    assert_eq!(view.alarms, vec![AlarmObs { member_id: 0x11, kind: AlarmKind::Nospace }]);
    // Nobody answers at all.
    let none = etcd.view(&[DEAD.to_string()]).await;
    assert!(none.members.is_none());
}

#[tokio::test]
async fn calls_fall_back_across_endpoints() {
    let (a, fake) = serve(0x10).await;
    let etcd = EtcdClient::new("demo", Duration::from_millis(500));
    let eps = [DEAD.to_string(), a.clone()];
    let peer = crate::naming::peer_url("demo", "ns", 3, false);
    assert_eq!(etcd.add_learner(&eps, &peer).await.expect("add"), 0x99);
    etcd.remove(&eps, 0x12).await.expect("remove");
    etcd.compact(&eps, 10).await.expect("compact");
    etcd.compact(&eps, 3).await.expect("already compacted counts as done");
    etcd.disarm_nospace(&eps, 0x11).await.expect("disarm");
    etcd.move_leader(&a, 0x11).await.expect("move");
    etcd.defragment(&a).await.expect("defrag");
    let err = etcd.promote(&eps, 0x12).await.expect_err("not in sync");
    assert!(err.to_string().contains("in sync"), "{err}");
    let calls = fake.calls.lock().expect("lock").clone();
    assert_eq!(
        calls,
        vec![
            format!("add {peer} learner=true"),
            "remove 12".to_string(),
            "alarm 2 11 1".to_string(),
            "move 11".to_string(),
            "defrag".to_string(),
        ]
    );
    assert!(etcd.compact(&[DEAD.to_string()], 20).await.is_err());
}
