//! The in-process broker's queue: unbounded, many senders and many receivers (a group's
//! members share one), closed for good when its last receiver goes.
//!
//! One lock around a `VecDeque`, held for a push or a pop and nothing else; the length
//! and the closed flag are mirrored in atomics so the publisher's capacity check takes
//! no lock. A push wakes one waiting receiver; a receiver that goes away while messages
//! wait passes its wake-up on, so nothing is stranded behind a receiver that left.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use futures_util::Stream;

struct Shared<T> {
    state: Mutex<State<T>>,
    /// `state.items.len()`, readable without the lock.
    len: AtomicUsize,
    /// Set when the last receiver went; never cleared.
    closed: AtomicBool,
}

struct State<T> {
    items: VecDeque<T>,
    /// Receivers waiting for an item, by receiver id.
    waiting: Vec<(u64, Waker)>,
    senders: usize,
    receivers: usize,
    next_id: u64,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A new queue: its sending and its receiving end.
pub(super) fn unbounded<T>() -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            waiting: Vec::new(),
            senders: 1,
            receivers: 1,
            next_id: 1,
        }),
        len: AtomicUsize::new(0),
        closed: AtomicBool::new(false),
    });
    (
        Sender {
            shared: Arc::clone(&shared),
        },
        Receiver { shared, id: 0 },
    )
}

/// The sending end. Cloning adds a sender.
pub(super) struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Sender<T> {
    /// Appends `item`, waking a waiting receiver; gives it back when the queue is closed.
    // (always: called once per publish, and a call copies the message once more)
    #[inline(always)]
    pub(super) fn try_send(&self, item: T) -> Result<(), T> {
        let waker = {
            let mut state = self.shared.lock();
            if state.receivers == 0 {
                return Err(item);
            }
            state.items.push_back(item);
            self.shared.len.store(state.items.len(), Ordering::Relaxed);
            state.waiting.pop().map(|(_, waker)| waker)
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Items waiting (a snapshot).
    pub(super) fn len(&self) -> usize {
        self.shared.len.load(Ordering::Relaxed)
    }

    /// Whether every receiver has gone (sends fail from then on).
    pub(super) fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Sender {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let wakers = {
            let mut state = self.shared.lock();
            state.senders -= 1;
            if state.senders > 0 {
                return;
            }
            // the last sender: receivers waiting on an empty queue see its end
            std::mem::take(&mut state.waiting)
        };
        for (_, waker) in wakers {
            waker.wake();
        }
    }
}

/// The receiving end: a stream of the items, ending when the queue is empty and every
/// sender has gone. Cloning adds a receiver that competes for the same items.
pub(super) struct Receiver<T> {
    shared: Arc<Shared<T>>,
    id: u64,
}

impl<T> Receiver<T> {
    /// A handle that does not keep the queue open, from which a receiver can be made
    /// again while another one still keeps it open.
    pub(super) fn downgrade(&self) -> WeakReceiver<T> {
        WeakReceiver {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> Stream for Receiver<T> {
    type Item = T;

    #[inline]
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let this = self.get_mut();
        let mut state = this.shared.lock();
        if let Some(item) = state.items.pop_front() {
            this.shared.len.store(state.items.len(), Ordering::Relaxed);
            return Poll::Ready(Some(item));
        }
        if state.senders == 0 {
            return Poll::Ready(None);
        }
        let id = this.id;
        match state.waiting.iter_mut().find(|(waiting, _)| *waiting == id) {
            Some((_, waker)) => waker.clone_from(cx.waker()),
            None => state.waiting.push((id, cx.waker().clone())),
        }
        Poll::Pending
    }
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        let mut state = self.shared.lock();
        state.receivers += 1;
        let id = state.next_id;
        state.next_id += 1;
        Receiver {
            shared: Arc::clone(&self.shared),
            id,
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let (waker, dropped) = {
            let mut state = self.shared.lock();
            state.receivers -= 1;
            let id = self.id;
            state.waiting.retain(|(waiting, _)| *waiting != id);
            if state.receivers == 0 {
                // closed for good: what waits goes (outside the lock: an item's drop
                // may requeue elsewhere)
                self.shared.closed.store(true, Ordering::Release);
                self.shared.len.store(0, Ordering::Relaxed);
                (None, std::mem::take(&mut state.items))
            } else if state.items.is_empty() {
                (None, VecDeque::new())
            } else {
                // it may have been woken for these: another receiver takes them
                (state.waiting.pop().map(|(_, waker)| waker), VecDeque::new())
            }
        };
        drop(dropped);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// See [`Receiver::downgrade`].
pub(super) struct WeakReceiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> WeakReceiver<T> {
    /// A new receiver, unless the queue has closed.
    pub(super) fn upgrade(&self) -> Option<Receiver<T>> {
        let mut state = self.shared.lock();
        if state.receivers == 0 {
            return None;
        }
        state.receivers += 1;
        let id = state.next_id;
        state.next_id += 1;
        Some(Receiver {
            shared: Arc::clone(&self.shared),
            id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn items_come_out_in_order_and_the_stream_ends_with_the_last_sender() {
        let (tx, mut rx) = unbounded();
        let second = tx.clone();
        for i in 0..3 {
            assert!(tx.try_send(i).is_ok());
        }
        assert_eq!(tx.len(), 3);
        drop(tx);
        assert!(second.try_send(3).is_ok());
        drop(second);
        assert_eq!(rx.by_ref().collect::<Vec<_>>().await, [0, 1, 2, 3]);
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_a_send() {
        let (tx, mut rx) = unbounded();
        let waiting = tokio::spawn(async move { rx.next().await });
        tokio::task::yield_now().await;
        assert!(tx.try_send(7).is_ok());
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await;
        assert!(matches!(got, Ok(Ok(Some(7)))), "{got:?}");
    }

    #[tokio::test]
    async fn competing_receivers_share_the_items_and_one_leaving_strands_nothing() {
        let (tx, first) = unbounded();
        let second = first.clone();
        let weak = first.downgrade();
        let mut second = second;
        // both wait; the first leaves without taking what it may have been woken for
        let waiting = tokio::spawn(async move { second.next().await });
        tokio::task::yield_now().await;
        let mut first = first;
        let noop = std::task::Waker::noop();
        assert!(
            Pin::new(&mut first)
                .poll_next(&mut Context::from_waker(noop))
                .is_pending()
        );
        assert!(tx.try_send(1).is_ok());
        drop(first);
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await;
        assert!(matches!(got, Ok(Ok(Some(1)))), "{got:?}");
        // every receiver gone: closed for good, sends refused, no receiver made again
        assert!(tx.is_closed());
        assert_eq!(tx.try_send(2), Err(2));
        assert!(weak.upgrade().is_none());
    }

    #[test]
    fn a_weak_receiver_makes_another_while_the_queue_is_open() {
        let (tx, rx) = unbounded::<u32>();
        let weak = rx.downgrade();
        let again = weak.upgrade();
        assert!(again.is_some());
        drop(rx);
        assert!(!tx.is_closed());
        drop(again);
        assert!(tx.is_closed());
    }
}
