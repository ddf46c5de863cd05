//! Wire-format checks: field numbers, oneof tags and gRPC paths must match etcd v3
//! byte-for-byte, or etcd clients cannot talk to kvd.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use kvd_api::etcdserverpb::{
    self, Compare, InternalRaftRequest, PutRequest, RangeRequest, RequestHeader, RequestOp, WatchCreateRequest,
    WatchRequest, WatchResponse, compare, request_op, watch_request,
};
use kvd_api::{mvccpb, v3electionpb, v3lockpb};
use prost::Message;
use tonic::codegen::http;
use tonic::server::NamedService;

#[test]
fn range_request_field_numbers() {
    let req = RangeRequest { key: b"a".to_vec(), limit: 5, ..Default::default() };
    // key = 1 (LEN) -> 0x0a; limit = 3 (VARINT) -> 0x18.
    assert_eq!(req.encode_to_vec(), [0x0a, 0x01, b'a', 0x18, 0x05]);

    let req = RangeRequest {
        range_end: vec![0],
        revision: 7,
        sort_order: etcdserverpb::range_request::SortOrder::Descend as i32,
        sort_target: etcdserverpb::range_request::SortTarget::Mod as i32,
        serializable: true,
        keys_only: true,
        count_only: true,
        max_create_revision: 1,
        ..Default::default()
    };
    assert_eq!(
        req.encode_to_vec(),
        [
            0x12, 0x01, 0x00, // range_end = 2
            0x20, 0x07, // revision = 4
            0x28, 0x02, // sort_order = 5, DESCEND
            0x30, 0x03, // sort_target = 6, MOD
            0x38, 0x01, // serializable = 7
            0x40, 0x01, // keys_only = 8
            0x48, 0x01, // count_only = 9
            0x68, 0x01, // max_create_revision = 13
        ]
    );
}

#[test]
fn put_request_field_numbers() {
    let req = PutRequest {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        lease: 7,
        prev_kv: true,
        ignore_value: true,
        ignore_lease: true,
    };
    assert_eq!(
        req.encode_to_vec(),
        [
            0x0a, 0x01, b'k', // key = 1
            0x12, 0x01, b'v', // value = 2
            0x18, 0x07, // lease = 3
            0x20, 0x01, // prev_kv = 4
            0x28, 0x01, // ignore_value = 5
            0x30, 0x01, // ignore_lease = 6
        ]
    );
    assert_eq!(PutRequest::decode(&req.encode_to_vec()[..]).unwrap(), req);
}

#[test]
fn oneofs_and_high_field_numbers() {
    // Compare: value lives in the target_union oneof at 7, range_end at 64.
    let cmp = Compare {
        result: compare::CompareResult::NotEqual as i32,
        target: compare::CompareTarget::Value as i32,
        key: b"k".to_vec(),
        range_end: b"z".to_vec(),
        target_union: Some(compare::TargetUnion::Value(b"x".to_vec())),
    };
    assert_eq!(
        cmp.encode_to_vec(),
        [
            0x08, 0x03, // result = 1, NOT_EQUAL
            0x10, 0x03, // target = 2, VALUE
            0x1a, 0x01, b'k', // key = 3
            0x3a, 0x01, b'x', // value = 7
            0x82, 0x04, 0x01, b'z', // range_end = 64
        ]
    );

    // RequestOp.request_put is field 2.
    let op = RequestOp { request: Some(request_op::Request::RequestPut(PutRequest::default())) };
    assert_eq!(op.encode_to_vec(), [0x12, 0x00]);

    // WatchRequest.create_request = 1; WatchCreateRequest.watch_id = 7.
    let w = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
            watch_id: 1,
            ..Default::default()
        })),
    };
    assert_eq!(w.encode_to_vec(), [0x0a, 0x02, 0x38, 0x01]);

    // WatchResponse.events = 11; Event.type = 1 (DELETE = 1).
    let resp = WatchResponse {
        events: vec![mvccpb::Event { r#type: mvccpb::event::EventType::Delete as i32, ..Default::default() }],
        ..Default::default()
    };
    assert_eq!(resp.encode_to_vec(), [0x5a, 0x02, 0x08, 0x01]);

    // InternalRaftRequest.header = 100, auth_enable = 1000.
    let irr = InternalRaftRequest {
        header: Some(RequestHeader::default()),
        auth_enable: Some(Default::default()),
        ..Default::default()
    };
    let bytes = irr.encode_to_vec();
    assert!(bytes.windows(3).any(|w| w == [0xa2, 0x06, 0x00]), "{bytes:02x?}");
    assert!(bytes.windows(3).any(|w| w == [0xc2, 0x3e, 0x00]), "{bytes:02x?}");
}

#[test]
fn service_names() {
    use etcdserverpb::*;
    assert_eq!(kv_server::SERVICE_NAME, "etcdserverpb.KV");
    assert_eq!(<kv_server::KvServer<()> as NamedService>::NAME, "etcdserverpb.KV");
    assert_eq!(watch_server::SERVICE_NAME, "etcdserverpb.Watch");
    assert_eq!(lease_server::SERVICE_NAME, "etcdserverpb.Lease");
    assert_eq!(cluster_server::SERVICE_NAME, "etcdserverpb.Cluster");
    assert_eq!(maintenance_server::SERVICE_NAME, "etcdserverpb.Maintenance");
    assert_eq!(auth_server::SERVICE_NAME, "etcdserverpb.Auth");
    assert_eq!(v3electionpb::election_server::SERVICE_NAME, "v3electionpb.Election");
    assert_eq!(v3lockpb::lock_server::SERVICE_NAME, "v3lockpb.Lock");
}

/// A transport that records the request path and fails the call.
#[derive(Clone, Default)]
struct PathRecorder(Arc<Mutex<Vec<String>>>);

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for PathRecorder {
    type Response = http::Response<tonic::body::Body>;
    type Error = tonic::codegen::StdError;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        self.0.lock().unwrap().push(req.uri().path().to_owned());
        std::future::ready(Err("recorded".into()))
    }
}

#[tokio::test]
async fn client_method_paths() {
    let rec = PathRecorder::default();
    let origin: http::Uri = "http://localhost".parse().unwrap();

    let mut kv = etcdserverpb::kv_client::KvClient::with_origin(rec.clone(), origin.clone());
    let _ = kv.range(RangeRequest::default()).await;
    let _ = kv.txn(etcdserverpb::TxnRequest::default()).await;
    let mut mt = etcdserverpb::maintenance_client::MaintenanceClient::with_origin(rec.clone(), origin.clone());
    let _ = mt.hash_kv(etcdserverpb::HashKvRequest::default()).await;
    let _ = mt.snapshot(etcdserverpb::SnapshotRequest::default()).await;
    let mut lease = etcdserverpb::lease_client::LeaseClient::with_origin(rec.clone(), origin.clone());
    let _ = lease.lease_keep_alive(tokio_stream_once(etcdserverpb::LeaseKeepAliveRequest::default())).await;
    let mut lock = v3lockpb::lock_client::LockClient::with_origin(rec.clone(), origin);
    let _ = lock.lock(v3lockpb::LockRequest::default()).await;

    assert_eq!(
        *rec.0.lock().unwrap(),
        [
            "/etcdserverpb.KV/Range",
            "/etcdserverpb.KV/Txn",
            "/etcdserverpb.Maintenance/HashKV",
            "/etcdserverpb.Maintenance/Snapshot",
            "/etcdserverpb.Lease/LeaseKeepAlive",
            "/v3lockpb.Lock/Lock",
        ]
    );
}

fn tokio_stream_once<T: Send + 'static>(
    item: T,
) -> impl tonic::codegen::tokio_stream::Stream<Item = T> + Send + 'static {
    tonic::codegen::tokio_stream::iter([item])
}

#[test]
fn file_descriptor_set_is_complete() {
    let fds = prost_types::FileDescriptorSet::decode(kvd_api::FILE_DESCRIPTOR_SET).unwrap();
    let mut services: Vec<String> =
        fds.file.iter().flat_map(|f| f.service.iter().map(move |s| format!("{}.{}", f.package(), s.name()))).collect();
    services.sort();
    assert_eq!(
        services,
        [
            "etcdserverpb.Auth",
            "etcdserverpb.Cluster",
            "etcdserverpb.KV",
            "etcdserverpb.Lease",
            "etcdserverpb.Maintenance",
            "etcdserverpb.Watch",
            "kvdpeerpb.Peer",
            "v3electionpb.Election",
            "v3lockpb.Lock",
        ]
    );
}
