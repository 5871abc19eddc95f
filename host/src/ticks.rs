//! A periodic wake-up as a stream, for `select`ing with other streams (the resync, the shard
//! assigner's sweep).

/// A stream yielding `()` every `period`, starting one period from now.
pub fn every(period: std::time::Duration) -> impl futures::Stream<Item = ()> + Send + 'static {
    futures::stream::unfold((), move |()| async move {
        tokio::time::sleep(period).await;
        Some(((), ()))
    })
}
