//! Sessions: each connected socket's id, state, rooms and bounded outbox, and the
//! registry that sends and broadcasts reach them through. A push never waits: a slow
//! client only ever fills its own outbox.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use axum::http::{HeaderMap, Uri};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::stats::Counters;
use axum::extract::ws::Message as Outgoing;

/// What a full outbox does with one more frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SlowConsumer {
    /// Drop the oldest queued frame (counted): a slow client misses messages, keeps its
    /// session.
    #[default]
    DropOldest,
    /// Close the session (1008): a client that cannot keep up is cut off.
    Close,
}

/// A session's id, unique for the server's life.
pub type SessionId = u64;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Frames waiting for one socket.
pub(crate) struct Outbox {
    frames: Mutex<VecDeque<Outgoing>>,
    capacity: usize,
    policy: SlowConsumer,
    /// Why the session must close, once it must (a [`Closing`] as its number; 0: open).
    closing: AtomicU8,
    pub(crate) ready: Notify,
}

impl Outbox {
    pub(crate) fn new(capacity: usize, policy: SlowConsumer) -> Self {
        Outbox {
            frames: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            policy,
            closing: AtomicU8::new(0),
            ready: Notify::new(),
        }
    }

    /// Queues `frame`; `false` when the session is closing (it was not queued).
    pub(crate) fn push(&self, frame: Outgoing, counters: &Counters) -> bool {
        // a session closing in order still writes what is queued before its Close
        if matches!(self.closing(), Some(Closing::TooSlow | Closing::Ended)) {
            return false;
        }
        {
            let mut frames = lock(&self.frames);
            if frames.len() >= self.capacity {
                match self.policy {
                    SlowConsumer::DropOldest => {
                        frames.pop_front();
                        counters.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    SlowConsumer::Close => {
                        drop(frames);
                        if self.close(Closing::TooSlow) {
                            counters.slow_closed.fetch_add(1, Ordering::Relaxed);
                        }
                        return false;
                    }
                }
            }
            frames.push_back(frame);
        }
        self.ready.notify_one();
        true
    }

    /// Every queued frame, oldest first.
    pub(crate) fn take(&self) -> VecDeque<Outgoing> {
        std::mem::take(&mut *lock(&self.frames))
    }

    /// Marks the session as closing and wakes its task; whether this changed the reason.
    /// The first reason stays, except that `TooSlow` (close at once) overrides an orderly
    /// close, and `Ended` is final.
    pub(crate) fn close(&self, why: Closing) -> bool {
        let changed = self
            .closing
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                match (now, why) {
                    (4, _) => None,
                    (_, Closing::Ended) => Some(why as u8),
                    (0, _) => Some(why as u8),
                    (1 | 3, Closing::TooSlow) => Some(why as u8),
                    _ => None,
                }
            })
            .is_ok();
        self.ready.notify_one();
        changed
    }

    /// Why the session must close, once it must.
    pub(crate) fn closing(&self) -> Option<Closing> {
        match self.closing.load(Ordering::Acquire) {
            1 => Some(Closing::Asked),
            2 => Some(Closing::TooSlow),
            3 => Some(Closing::Shutdown),
            4 => Some(Closing::Ended),
            _ => None,
        }
    }
}

/// Why a session closes from the server's side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Closing {
    /// `Session::close` / `WsServer::close`: after what is queued (1000).
    Asked = 1,
    /// Its outbox overflowed under `SlowConsumer::Close`: at once (1008).
    TooSlow = 2,
    /// Shutdown: after what is queued (1001).
    Shutdown = 3,
    /// The session is over: nothing more is queued.
    Ended = 4,
}

/// What a session knows of the request that opened it.
#[derive(Debug, Clone)]
pub struct UpgradeRequest {
    /// The request's URI (path and query).
    pub uri: Uri,
    /// The request's headers (`Origin`, `Cookie`, `Authorization`, ...).
    pub headers: HeaderMap,
}

impl UpgradeRequest {
    /// The value of query parameter `name` (percent-decoded), if present.
    pub fn query(&self, name: &str) -> Option<String> {
        let query = self.uri.query()?;
        query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key) == name).then(|| percent_decode(value))
        })
    }

    /// The value of header `name`, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The value of cookie `name`, if the request carries it.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .get_all(axum::http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                let (key, value) = pair.trim().split_once('=')?;
                (key == name).then_some(value)
            })
    }
}

/// `+` as space, `%XX` as its byte; malformed escapes kept as they are.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'+' => out.push(b' '),
            b'%' if at + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[at + 1..at + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(byte) => {
                        out.push(byte);
                        at += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        at += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One connected socket, as the registry holds it.
pub(crate) struct SessionShared<S> {
    pub(crate) id: SessionId,
    pub(crate) request: UpgradeRequest,
    pub(crate) state: RwLock<S>,
    pub(crate) outbox: Outbox,
    pub(crate) rooms: Mutex<HashSet<Arc<str>>>,
}

/// Every open session and every room.
pub(crate) struct Registry<S> {
    sessions: RwLock<HashMap<SessionId, Arc<SessionShared<S>>>>,
    rooms: Mutex<HashMap<Arc<str>, HashSet<SessionId>>>,
    next: AtomicU64,
}

impl<S> Default for Registry<S> {
    fn default() -> Self {
        Registry {
            sessions: RwLock::default(),
            rooms: Mutex::default(),
            next: AtomicU64::new(1),
        }
    }
}

impl<S> Registry<S> {
    pub(crate) fn next_id(&self) -> SessionId {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn insert(&self, session: Arc<SessionShared<S>>) {
        self.sessions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(session.id, session);
    }

    /// Removes `id` from the registry and from every room it had joined.
    pub(crate) fn remove(&self, id: SessionId) -> Option<Arc<SessionShared<S>>> {
        let session = self
            .sessions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id)?;
        self.remove_from_rooms(id, &session);
        Some(session)
    }

    pub(crate) fn get(&self, id: SessionId) -> Option<Arc<SessionShared<S>>> {
        self.sessions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned()
    }

    pub(crate) fn len(&self) -> usize {
        self.sessions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Calls `each` with every open session (under the registry's read lock: `each`
    /// must not wait).
    pub(crate) fn for_each(&self, mut each: impl FnMut(&Arc<SessionShared<S>>)) {
        for session in self
            .sessions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
        {
            each(session);
        }
    }

    pub(crate) fn join(&self, id: SessionId, room: &str) -> bool {
        let Some(session) = self.get(id) else {
            return false;
        };
        let room: Arc<str> = Arc::from(room);
        lock(&session.rooms).insert(Arc::clone(&room));
        lock(&self.rooms)
            .entry(Arc::clone(&room))
            .or_default()
            .insert(id);
        // a session that left meanwhile takes its rooms with it (this one included: its
        // own list may have been emptied before the insert above)
        if self.get(id).is_none() {
            self.remove_from_rooms(id, &session);
            let mut rooms = lock(&self.rooms);
            if let Some(members) = rooms.get_mut(&room) {
                members.remove(&id);
                if members.is_empty() {
                    rooms.remove(&room);
                }
            }
            return false;
        }
        true
    }

    /// Takes `session` out of every room it had joined.
    fn remove_from_rooms(&self, id: SessionId, session: &SessionShared<S>) {
        let joined: Vec<Arc<str>> = lock(&session.rooms).drain().collect();
        let mut rooms = lock(&self.rooms);
        for room in joined {
            if let Some(members) = rooms.get_mut(&room) {
                members.remove(&id);
                if members.is_empty() {
                    rooms.remove(&room);
                }
            }
        }
    }

    pub(crate) fn leave(&self, id: SessionId, room: &str) -> bool {
        let Some(session) = self.get(id) else {
            return false;
        };
        let was_in = lock(&session.rooms).remove(room);
        let mut rooms = lock(&self.rooms);
        if let Some(members) = rooms.get_mut(room) {
            members.remove(&id);
            if members.is_empty() {
                rooms.remove(room);
            }
        }
        was_in
    }

    /// The sessions in `room` now.
    pub(crate) fn members(&self, room: &str) -> Vec<Arc<SessionShared<S>>> {
        let ids: Vec<SessionId> = lock(&self.rooms)
            .get(room)
            .map(|members| members.iter().copied().collect())
            .unwrap_or_default();
        ids.into_iter().filter_map(|id| self.get(id)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters() -> Counters {
        Counters::default()
    }

    #[test]
    fn a_full_outbox_drops_its_oldest_or_closes() {
        let counters = counters();
        let outbox = Outbox::new(2, SlowConsumer::DropOldest);
        for n in 0..5 {
            assert!(outbox.push(Outgoing::text(n.to_string()), &counters));
        }
        let kept: Vec<_> = outbox.take().into_iter().collect();
        assert_eq!(kept, [Outgoing::text("3"), Outgoing::text("4")]);
        assert_eq!(counters.dropped.load(Ordering::Relaxed), 3);

        let closing = Outbox::new(2, SlowConsumer::Close);
        assert!(closing.push(Outgoing::text("a"), &counters));
        assert!(closing.push(Outgoing::text("b"), &counters));
        assert!(!closing.push(Outgoing::text("c"), &counters));
        assert_eq!(closing.closing(), Some(Closing::TooSlow));
        assert!(!closing.push(Outgoing::text("d"), &counters));
        assert_eq!(counters.slow_closed.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn query_and_cookies_are_read_from_the_request() {
        let mut headers = HeaderMap::new();
        headers.insert("cookie", "a=1; token=s3cr%20t".parse().unwrap());
        let request = UpgradeRequest {
            uri: "/ws?room=lobby%201&name=J+D&flag&bad=%zz".parse().unwrap(),
            headers,
        };
        assert_eq!(request.query("room").as_deref(), Some("lobby 1"));
        assert_eq!(request.query("name").as_deref(), Some("J D"));
        assert_eq!(request.query("flag").as_deref(), Some(""));
        assert_eq!(request.query("bad").as_deref(), Some("%zz"));
        assert_eq!(request.query("missing"), None);
        assert_eq!(request.cookie("token"), Some("s3cr%20t"));
        assert_eq!(request.cookie("a"), Some("1"));
        assert_eq!(request.cookie("b"), None);
    }

    #[test]
    fn rooms_forget_a_session_that_leaves() {
        let registry = Registry::<()>::default();
        let id = registry.next_id();
        registry.insert(Arc::new(SessionShared {
            id,
            request: UpgradeRequest {
                uri: Uri::from_static("/"),
                headers: HeaderMap::new(),
            },
            state: RwLock::new(()),
            outbox: Outbox::new(4, SlowConsumer::DropOldest),
            rooms: Mutex::default(),
        }));
        assert!(registry.join(id, "lobby"));
        assert_eq!(registry.members("lobby").len(), 1);
        assert!(registry.leave(id, "lobby"));
        assert!(registry.members("lobby").is_empty());
        assert!(registry.join(id, "lobby"));
        registry.remove(id);
        assert!(registry.members("lobby").is_empty());
        assert!(!registry.join(id, "lobby"));
    }
}
