//! A queue that several workers share and take from in batches (the ledger's committers, the
//! idempotency claimer): a worker waits for one item, then takes whatever else is already waiting,
//! never waiting for more, so batches are one item under no load and grow by themselves under load.

use std::sync::Arc;
use tokio::sync::{Mutex, mpsc};

/// The receiving end, shared by the workers.
pub(crate) type Shared<T> = Arc<Mutex<mpsc::UnboundedReceiver<T>>>;

/// Waits for one item, then takes what is already waiting, up to `max` in all; `None` once the
/// queue is closed.
pub(crate) async fn take_batch<T>(receiver: &Shared<T>, max: usize) -> Option<Vec<T>> {
    let mut receiver = receiver.lock().await;
    let first = receiver.recv().await?;
    let mut batch = vec![first];
    while batch.len() < max {
        match receiver.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
    Some(batch)
}
