//! The agent's error type: API calls, file system work, the `ip` commands,
//! and pod specs it cannot run.

/// Everything that can go wrong while acting on a pod, a volume or the node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{cmd}` failed: {stderr}")]
    Command { cmd: String, stderr: String },
    /// Not yet possible (a claim not bound yet); retried on the next tick.
    #[error("waiting: {0}")]
    NotReady(String),
    /// The pod asks for something the agent cannot do; `reason` is the
    /// kubelet's waiting reason (e.g. `CreateContainerConfigError`).
    #[error("{reason}: {message}")]
    Spec { reason: &'static str, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `map_err` helper for io errors: `.map_err(io("creating x"))`.
pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// A spec error with the kubelet reason `CreateContainerConfigError`.
pub fn config(message: impl Into<String>) -> Error {
    Error::Spec { reason: "CreateContainerConfigError", message: message.into() }
}
