//! What the pools read of a message (the header's ID and the question, in
//! place) and the table of queries waiting for their replies.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;

use tokio::sync::oneshot;

use super::ProxyError;
use crate::request::{HEADER_LEN, Header, MAX_NAME, read_question};

/// The question a reply must repeat: the name lower-cased in wire form, the
/// type and the class.
#[derive(Clone, Copy)]
pub(super) struct Question {
    name: [u8; MAX_NAME],
    len: usize,
    qtype: u16,
    qclass: u16,
}

impl Question {
    /// The question of a query that can be sent: a header and exactly one
    /// readable question.
    pub(super) fn of_query(raw: &[u8]) -> Option<Self> {
        let header = Header::read(raw)?;
        if header.qdcount != 1 {
            return None;
        }
        let mut name = [0u8; MAX_NAME];
        let (len, qtype, qclass, _) = read_question(raw, &mut name)?;
        Some(Self {
            name,
            len,
            qtype,
            qclass,
        })
    }

    /// Whether `reply` answers this question: QR set, and exactly one
    /// question, the same (the name compared without case). A reply
    /// without a question is refused whatever its rcode: only the ID would
    /// tie it to the query, and whoever reads it next (the cache writing
    /// it for coalesced queries, a name rewrite) expects the question
    /// there. `reply` is known to hold a header.
    pub(super) fn answered_by(&self, reply: &[u8]) -> bool {
        let Some(h) = Header::read(reply) else {
            return false;
        };
        if !h.is_response() {
            return false;
        }
        match h.qdcount {
            1 => {
                let name_end = HEADER_LEN + self.len;
                let Some(name) = reply.get(HEADER_LEN..name_end) else {
                    return false;
                };
                // Length bytes are below 64 and lower-casing touches only
                // A-Z, so comparing whole wire names byte by byte is exact.
                let same_name = name
                    .iter()
                    .zip(&self.name[..self.len])
                    .all(|(a, b)| a.to_ascii_lowercase() == *b);
                let Some(fixed) = reply.get(name_end..name_end + 4) else {
                    return false;
                };
                same_name
                    && u16::from_be_bytes([fixed[0], fixed[1]]) == self.qtype
                    && u16::from_be_bytes([fixed[2], fixed[3]]) == self.qclass
            }
            _ => false,
        }
    }
}

/// Why a query got no reply from its socket or connection.
#[derive(Debug, Clone)]
pub(super) enum Failure {
    /// The peer closed the connection.
    Closed,
    /// The task reading the socket ended (its thread stopped).
    Stopped,
    /// A read or write failed.
    Io(io::ErrorKind, String),
}

impl From<&io::Error> for Failure {
    fn from(e: &io::Error) -> Self {
        Self::Io(e.kind(), e.to_string())
    }
}

impl From<Failure> for ProxyError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Closed => Self::Closed,
            Failure::Stopped => Self::Stopped,
            Failure::Io(kind, msg) => Self::Io(io::Error::new(kind, msg)),
        }
    }
}

/// What a waiting query receives: its reply, or why none will come.
pub(super) type Outcome = Result<Vec<u8>, Failure>;

struct Waiter {
    question: Question,
    /// Tells this waiter from a later one that got the same ID.
    token: u64,
    tx: oneshot::Sender<Outcome>,
}

/// Hashes a wire ID, which is random already: a multiply spreads its 16
/// bits over the word (the table reads both ends of the hash). SipHash
/// would cost more than the rest of a lookup, and an ID chosen by a remote
/// party only picks which waiter is checked, never whether the reply
/// matches.
#[derive(Default)]
pub(super) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u16(&mut self, id: u16) {
        self.0 = u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Queries in flight on one socket or connection, by wire ID.
#[derive(Default)]
pub(super) struct Waiters {
    map: HashMap<u16, Waiter, BuildHasherDefault<IdHasher>>,
    next_token: u64,
}

impl Waiters {
    /// Registers a query under a fresh random ID that no query in flight
    /// here uses. Returns the ID and the token to remove it with, or `None`
    /// when all 65536 IDs are taken.
    pub(super) fn insert(
        &mut self,
        question: Question,
        tx: oneshot::Sender<Outcome>,
    ) -> Option<(u16, u64)> {
        if self.map.len() > usize::from(u16::MAX) {
            return None;
        }
        let mut id: u16 = rand::random();
        let mut tries = 0;
        while self.map.contains_key(&id) {
            // Random tries first; then a walk from the last one, which ends
            // because an ID is free.
            tries += 1;
            id = if tries < 8 {
                rand::random()
            } else {
                id.wrapping_add(1)
            };
        }
        let token = self.next_token;
        self.next_token += 1;
        self.map.insert(
            id,
            Waiter {
                question,
                token,
                tx,
            },
        );
        Some((id, token))
    }

    /// Removes the query registered as `(id, token)`, if still there.
    /// Returns whether it was.
    pub(super) fn remove(&mut self, id: u16, token: u64) -> bool {
        match self.map.get(&id) {
            Some(w) if w.token == token => {
                self.map.remove(&id);
                true
            }
            _ => false,
        }
    }

    /// Hands `reply` to the query it answers. `false` when none matches
    /// (wrong ID, wrong question, not a response, too short): the caller
    /// counts it and drops it.
    pub(super) fn deliver(&mut self, reply: &[u8]) -> bool {
        let Some(h) = Header::read(reply) else {
            return false;
        };
        match self.map.get(&h.id) {
            Some(w) if w.question.answered_by(reply) => {}
            _ => return false,
        }
        if let Some(w) = self.map.remove(&h.id) {
            // The query may have given up meanwhile; nothing to do then.
            let _ = w.tx.send(Ok(reply.to_vec()));
        }
        true
    }

    /// Tells every waiting query that no reply will come.
    pub(super) fn fail_all(&mut self, why: &Failure) {
        for (_, w) in self.map.drain() {
            let _ = w.tx.send(Err(why.clone()));
        }
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
