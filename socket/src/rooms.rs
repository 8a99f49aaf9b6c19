//! Local members of each room: who on this node gets a room message read from `rtc.rooms`.

use crate::conn::Conn;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The members of one room on this node, by connection id.
type Members = HashMap<u64, Arc<Conn>>;

/// Room → members on this node.
#[derive(Default)]
pub struct Rooms {
    members: Mutex<HashMap<Box<str>, Members>>,
}

impl Rooms {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Members>> {
        self.members.lock().expect("rooms lock is never poisoned")
    }

    pub fn join(&self, room: &str, conn: &Arc<Conn>) {
        self.lock()
            .entry(room.into())
            .or_default()
            .insert(conn.id, conn.clone());
    }

    /// Takes `conn` out of every room in `rooms`.
    pub fn leave_all<'a>(&self, rooms: impl IntoIterator<Item = &'a str>, conn: &Conn) {
        let mut all = self.lock();
        for r in rooms {
            if let Some(m) = all.get_mut(r) {
                m.remove(&conn.id);
                if m.is_empty() {
                    all.remove(r);
                }
            }
        }
    }

    /// The local members of `room` (copied out, so frames are queued without the lock).
    pub fn members(&self, room: &str) -> Vec<Arc<Conn>> {
        self.lock()
            .get(room)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_join_and_leave_and_empty_rooms_go() {
        let rooms = Rooms::default();
        let (a, b) = (Arc::new(Conn::new("a", 10)), Arc::new(Conn::new("b", 10)));
        rooms.join("r", &a);
        rooms.join("r", &b);
        rooms.join("s", &a);
        assert_eq!(rooms.members("r").len(), 2);
        rooms.leave_all(["r", "s"], &a);
        assert_eq!(rooms.members("r").len(), 1);
        assert!(rooms.members("s").is_empty());
        assert!(rooms.lock().get("s").is_none(), "an empty room is removed");
    }
}
