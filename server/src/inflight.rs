//! Waiting for the answers on a long call that carries many requests (the
//! peer protocol's `AppendStream` and `ForwardStream`): each answer must
//! come before the deadline of the oldest request still unanswered, and
//! while none is on the way the wait has no limit (HTTP/2 pings find a dead
//! connection meanwhile).

use std::future::Future;

use tokio::sync::Notify;
use tokio::time::Instant;

/// `fut`, unless the deadline that `oldest` gives (the oldest request's on
/// the way) passes first: then None. While `oldest` gives none, waits
/// without limit, and asks again whenever `more` is notified (a request
/// went out, whose deadline now counts).
pub async fn within_oldest_deadline<F: Future>(
    oldest: impl Fn() -> Option<Instant>,
    more: &Notify,
    fut: F,
) -> Option<F::Output> {
    tokio::pin!(fut);
    loop {
        match oldest() {
            Some(deadline) => return tokio::time::timeout_at(deadline, &mut fut).await.ok(),
            None => tokio::select! {
                out = &mut fut => return Some(out),
                () = more.notified() => {}
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn with_nothing_on_the_way_it_waits_without_limit() {
        let more = Notify::new();
        let slow = tokio::time::sleep(Duration::from_millis(300));
        assert_eq!(
            within_oldest_deadline(|| None, &more, async {
                slow.await;
                7
            })
            .await,
            Some(7)
        );
    }

    #[tokio::test]
    async fn a_request_that_goes_out_meanwhile_brings_its_deadline() {
        let more = Notify::new();
        let deadline = parking_lot::Mutex::new(None);
        let start = Instant::now();
        let wait = within_oldest_deadline(|| *deadline.lock(), &more, std::future::pending::<()>());
        let send = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            *deadline.lock() = Some(Instant::now() + Duration::from_millis(200));
            more.notify_one();
        };
        let both = tokio::time::timeout(Duration::from_secs(5), async { tokio::join!(wait, send) }).await;
        let (out, ()) = both.expect("the wait ignored the deadline that came with the request");
        assert_eq!(out, None);
        assert!(start.elapsed() >= Duration::from_millis(300), "ended before the deadline: {:?}", start.elapsed());
    }
}
