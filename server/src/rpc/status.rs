//! The one place where kvd's errors become gRPC statuses, with etcd's codes
//! and strings (clients match on the strings). Anything unmapped is `Unknown`.

use tonic::{Code, Status};

use super::validate::ValidationError;
use crate::apply::ApplyError;
use crate::auth::AuthError;
use crate::etcdserver::ServerError;
use crate::mvcc::MvccError;

fn status(code: Code, msg: &str) -> Status {
    Status::new(code, msg)
}

pub fn validation(e: ValidationError) -> Status {
    let code = match e {
        ValidationError::EmptyKey
        | ValidationError::KeyNotFound
        | ValidationError::ValueProvided
        | ValidationError::LeaseProvided
        | ValidationError::TooManyOps
        | ValidationError::DuplicateKey
        | ValidationError::InvalidSortOption => Code::InvalidArgument,
    };
    status(code, &e.to_string())
}

pub fn mvcc(e: &MvccError) -> Status {
    match e {
        MvccError::Compacted => status(Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted"),
        MvccError::FutureRev => status(Code::OutOfRange, "etcdserver: mvcc: required revision is a future revision"),
        MvccError::Corrupt(_) | MvccError::Backend(_) => status(Code::Unknown, &e.to_string()),
    }
}

pub fn apply(e: &ApplyError) -> Status {
    match e {
        ApplyError::Mvcc(m) => mvcc(m),
        ApplyError::KeyNotFound => status(Code::InvalidArgument, "etcdserver: key not found"),
        ApplyError::LeaseNotFound => status(Code::NotFound, "etcdserver: requested lease not found"),
        ApplyError::LeaseExists => status(Code::FailedPrecondition, "etcdserver: lease already exists"),
        ApplyError::LeaseTtlTooLarge => status(Code::OutOfRange, "etcdserver: too large lease TTL"),
        ApplyError::NoSpace => status(Code::ResourceExhausted, "etcdserver: mvcc: database space exceeded"),
        ApplyError::NotCapable => status(Code::FailedPrecondition, "etcdserver: not capable"),
        ApplyError::Auth(a) => auth(a),
    }
}

pub fn auth(e: &AuthError) -> Status {
    use AuthError::*;
    let code = match e {
        RootUserNotExist | RootRoleNotExist | UserAlreadyExist | UserNotFound | RoleAlreadyExist | RoleNotFound
        | RoleNotGranted | PermissionNotGranted | AuthNotEnabled => Code::FailedPrecondition,
        UserEmpty | RoleEmpty | AuthFailed | PermissionNotGiven | InvalidAuthMgmt | AuthOldRevision => {
            Code::InvalidArgument
        }
        PermissionDenied => Code::PermissionDenied,
        InvalidAuthToken => Code::Unauthenticated,
    };
    status(code, &e.to_string())
}

/// Maps every server-layer error to etcd's status.
pub fn to_status(e: ServerError) -> Status {
    match &e {
        ServerError::TooManyRequests => status(Code::ResourceExhausted, "etcdserver: too many requests"),
        ServerError::RequestTooLarge => status(Code::InvalidArgument, "etcdserver: request is too large"),
        ServerError::Timeout => status(Code::Unavailable, "etcdserver: request timed out"),
        ServerError::Stopped => status(Code::Unavailable, "etcdserver: server stopped"),
        ServerError::NoLeader => status(Code::Unavailable, "etcdserver: no leader"),
        ServerError::NotLeader => status(Code::FailedPrecondition, "etcdserver: not leader"),
        ServerError::LeaderChanged => status(Code::Unavailable, "etcdserver: leader changed"),
        ServerError::NoSpace => status(Code::ResourceExhausted, "etcdserver: mvcc: database space exceeded"),
        ServerError::Apply(a) => apply(a),
        ServerError::Mvcc(m) => mvcc(m),
        ServerError::Auth(a) => auth(a),
        ServerError::MemberNotFound => status(Code::NotFound, &e.to_string()),
        ServerError::MemberIdExists
        | ServerError::PeerUrlExists
        | ServerError::NotEnoughStartedMembers
        | ServerError::NotLearner
        | ServerError::LearnerNotReady
        | ServerError::TooManyLearners
        | ServerError::NotSupportedForLearner
        | ServerError::BadLeaderTransferee => status(Code::FailedPrecondition, &e.to_string()),
        ServerError::InvalidMemberUrls => status(Code::InvalidArgument, &e.to_string()),
        // etcd returns these as plain errors, which gRPC sends as Unknown.
        ServerError::ElectionNotLeader
        | ServerError::ElectionNoLeader
        | ServerError::SessionExpired
        | ServerError::MissingLeaderKey => status(Code::Unknown, &e.to_string()),
        ServerError::Remote { code, message } => status(Code::from_i32(*code), message),
        ServerError::Internal(_) => status(Code::Unknown, &e.to_string()),
    }
}

impl From<ServerError> for Status {
    fn from(e: ServerError) -> Self {
        to_status(e)
    }
}

impl From<ValidationError> for Status {
    fn from(e: ValidationError) -> Self {
        validation(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_strings_match_etcd() {
        let s = to_status(ServerError::Mvcc(MvccError::Compacted));
        assert_eq!(
            (s.code(), s.message()),
            (Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted")
        );
        let s = to_status(ServerError::Apply(ApplyError::LeaseNotFound));
        assert_eq!((s.code(), s.message()), (Code::NotFound, "etcdserver: requested lease not found"));
        let s = validation(ValidationError::DuplicateKey);
        assert_eq!((s.code(), s.message()), (Code::InvalidArgument, "etcdserver: duplicate key given in txn request"));
        let s = to_status(ServerError::TooManyRequests);
        assert_eq!((s.code(), s.message()), (Code::ResourceExhausted, "etcdserver: too many requests"));
    }
}
