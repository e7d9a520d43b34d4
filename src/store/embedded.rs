//! The embedded store: redb tables under the data directory, protobuf
//! values. Every write commits with fsync before answering, except, beside
//! the embedded bus (`EmbeddedStore::deferring_sequencer_fsync`), the
//! sequencer's (`append_messages`, `apply_change`): those commit without
//! one and become durable at the next fsync, at the latest the next
//! [`Store::sync`], which the sequencer calls before it commits the bus
//! offsets of what it wrote (a crash before then replays the records onto
//! the store as it was at the last fsync: redb keeps commits in order, so
//! what survives is a prefix of each partition's records, and the replay
//! assigns the same seqs). Until then they are visible to readers like any
//! commit.
//!
//! redb calls block, so each method runs on tokio's blocking pool, except
//! reads of a few keys while no commit with fsync is in flight
//! (`EmbeddedStore::point_read`).

use super::{
    Appended, GroupChange, GroupChanged, Store, StoreError, UserRecord, apply_group_change,
    apply_message_change,
};
use crate::proto::{
    ChatMessage, Conversation, MemberCursor, MessageKind, ReceiptEvent, ReceiptKind, StoredUser,
    User,
};
use async_trait::async_trait;
use prost::Message;
use redb::{
    Database, Durability, MultimapTableDefinition, ReadableDatabase, ReadableTable, TableDefinition,
};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
const USER_BY_EMAIL: TableDefinition<&str, &str> = TableDefinition::new("user_by_email");
const USER_BY_NAME: TableDefinition<&str, &str> = TableDefinition::new("user_by_name");
const CONVERSATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("conversations");
const USER_CONVERSATIONS: MultimapTableDefinition<&str, &str> =
    MultimapTableDefinition::new("user_conversations");
const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
const MESSAGE_BY_CLIENT_ID: TableDefinition<(&str, &str), (&str, u64)> =
    TableDefinition::new("message_by_client_id");
/// (conversation, message id) → seq.
const MESSAGE_BY_ID: TableDefinition<(&str, &str), u64> = TableDefinition::new("message_by_id");
/// (conversation, user) → (delivered seq, read seq).
const CURSORS: TableDefinition<(&str, &str), (u64, u64)> = TableDefinition::new("cursors");

/// redb's page cache for the store. redb's default is 1 GiB per database,
/// which a busy server fills and keeps; recent history (what sync, history
/// and sequencing read) fits in far less, and the OS page cache holds the rest.
const CACHE_BYTES: usize = 128 * 1024 * 1024;

/// One write committing with fsync, counted from before it starts until
/// its closure ends (dropped with it, even when the caller gave up).
struct Fsyncing(Arc<AtomicUsize>);

impl Fsyncing {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count.clone())
    }
}

impl Drop for Fsyncing {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    /// Writes committing with fsync in flight (see [`Self::point_read`]).
    fsyncing: Arc<AtomicUsize>,
    /// Whether the sequencer's writes wait for [`Store::sync`] for their
    /// fsync (see the module docs); only beside a bus that can say when
    /// the replay after a crash is done ([`crate::bus::EventBus::uncommitted`]).
    deferred: bool,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EmbeddedStore")
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

impl EmbeddedStore {
    /// Opens (or creates) `store.redb` in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(unavailable)?;
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(dir.join("store.redb"))
            .map_err(unavailable)?;
        let txn = db.begin_write().map_err(unavailable)?;
        txn.open_table(USERS).map_err(unavailable)?;
        txn.open_table(USER_BY_EMAIL).map_err(unavailable)?;
        txn.open_table(USER_BY_NAME).map_err(unavailable)?;
        txn.open_table(CONVERSATIONS).map_err(unavailable)?;
        txn.open_multimap_table(USER_CONVERSATIONS)
            .map_err(unavailable)?;
        txn.open_table(MESSAGES).map_err(unavailable)?;
        txn.open_table(MESSAGE_BY_CLIENT_ID).map_err(unavailable)?;
        txn.open_table(MESSAGE_BY_ID).map_err(unavailable)?;
        txn.open_table(CURSORS).map_err(unavailable)?;
        txn.commit().map_err(unavailable)?;
        Ok(Self {
            db: Arc::new(db),
            fsyncing: Arc::default(),
            deferred: false,
        })
    }

    /// Lets the sequencer's writes wait for [`Store::sync`] for their fsync.
    /// Only beside a bus whose [`crate::bus::EventBus::uncommitted`]
    /// answers (the embedded one): chat-svc must be able to tell when the
    /// replay after a crash is done before it serves.
    pub fn deferring_sequencer_fsync(mut self) -> Self {
        self.deferred = true;
        self
    }

    /// The durability of a sequencer's write.
    fn sequencer_durability(&self) -> Durability {
        if self.deferred {
            Durability::None
        } else {
            Durability::Immediate
        }
    }

    /// Runs a point read (a few B-tree lookups by key in redb's cache, tens
    /// of microseconds) on the calling task rather than handing it to the
    /// blocking pool and back, two thread switches that cost more than the
    /// read. Not while a commit with fsync is in flight: such a commit
    /// writes its pages out holding the page-cache locks a read takes, and
    /// a [`Store::sync`] after 100 ms of deferred writes can take a hundred
    /// milliseconds that would stall a runtime worker (measured: p99 13 →
    /// 130 ms at 1,000 msg/s without this check). A commit that starts
    /// after the check still stalls the read for as long. A panic inside
    /// `f` unwinds the calling task, where on the blocking pool it became
    /// `Unavailable`: redb does not panic on a read short of a bug.
    async fn point_read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    {
        if self.fsyncing.load(Ordering::Acquire) == 0 {
            f(&self.db)
        } else {
            self.blocking(f).await
        }
    }

    /// Like [`Self::blocking`] for a write transaction: counted in
    /// `fsyncing` while it runs when it commits with fsync (`durable`), so
    /// point reads keep off the runtime's workers meanwhile.
    async fn writing<T, F>(&self, durable: bool, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    {
        let counted = durable.then(|| Fsyncing::new(&self.fsyncing));
        self.blocking(move |db| {
            let _counted = counted;
            f(db)
        })
        .await
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(unavailable)?
    }
}

fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M, StoreError> {
    M::decode(bytes).map_err(corrupt)
}

/// The message stored at `(conversation, seq)`, if any: the second step of
/// every lookup through an index (by client id, by message id).
fn message_at(
    messages: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    conversation: &str,
    seq: u64,
) -> Result<Option<ChatMessage>, StoreError> {
    match messages.get((conversation, seq)).map_err(unavailable)? {
        Some(raw) => Ok(Some(decode(raw.value())?)),
        None => Ok(None),
    }
}

/// The conversation as stored, without its members' cursors.
fn read_conversation_head(
    txn: &redb::ReadTransaction,
    id: &str,
) -> Result<Option<Conversation>, StoreError> {
    let conversations = txn.open_table(CONVERSATIONS).map_err(unavailable)?;
    match conversations.get(id).map_err(unavailable)? {
        Some(raw) => Ok(Some(Conversation {
            cursors: Vec::new(),
            ..decode(raw.value())?
        })),
        None => Ok(None),
    }
}

fn read_conversation(
    txn: &redb::ReadTransaction,
    id: &str,
) -> Result<Option<Conversation>, StoreError> {
    let Some(mut conversation) = read_conversation_head(txn, id)? else {
        return Ok(None);
    };
    let cursors = txn.open_table(CURSORS).map_err(unavailable)?;
    conversation.cursors = conversation
        .members
        .iter()
        .map(|m| {
            let (delivered_seq, read_seq) = cursors
                .get((id, m.as_str()))
                .map_err(unavailable)?
                .map(|v| v.value())
                .unwrap_or((0, 0));
            Ok(MemberCursor {
                user_id: m.clone(),
                delivered_seq,
                read_seq,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    Ok(Some(conversation))
}

/// Moves one cursor inside `txn`; answers the new position when it moved.
/// `last_seqs` keeps each conversation's last seq for the transaction, so
/// a run of receipts in a large group decodes its member list once.
fn advance_in(
    txn: &redb::WriteTransaction,
    r: &ReceiptEvent,
    last_seqs: &mut HashMap<String, u64>,
) -> Result<Option<u64>, StoreError> {
    let kind = r.kind();
    let last_seq = match last_seqs.get(&r.conversation_id) {
        Some(seq) => *seq,
        None => {
            let conversations = txn.open_table(CONVERSATIONS).map_err(unavailable)?;
            let Some(raw) = conversations
                .get(r.conversation_id.as_str())
                .map_err(unavailable)?
            else {
                return Err(StoreError::NoConversation(r.conversation_id.clone()));
            };
            let seq = decode::<Conversation>(raw.value())?.last_seq;
            last_seqs.insert(r.conversation_id.clone(), seq);
            seq
        }
    };
    let mut cursors = txn.open_table(CURSORS).map_err(unavailable)?;
    let key = (r.conversation_id.as_str(), r.user_id.as_str());
    let (delivered, read) = cursors
        .get(key)
        .map_err(unavailable)?
        .map(|v| v.value())
        .unwrap_or((0, 0));
    let target = r.up_to_seq.min(last_seq);
    let (moved_to, moved) = super::apply_receipt((delivered, read), kind, target);
    if moved_to != (delivered, read) {
        cursors.insert(key, moved_to).map_err(unavailable)?;
    }
    Ok(moved)
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn create_user(&self, record: &UserRecord) -> Result<(), StoreError> {
        let record = record.clone();
        self.writing(true, move |db| {
            let txn = db.begin_write().map_err(unavailable)?;
            {
                let mut by_name = txn.open_table(USER_BY_NAME).map_err(unavailable)?;
                let mut by_email = txn.open_table(USER_BY_EMAIL).map_err(unavailable)?;
                let name_key = record.user.username.to_lowercase();
                if by_name
                    .get(name_key.as_str())
                    .map_err(unavailable)?
                    .is_some()
                {
                    return Err(StoreError::Conflict("username"));
                }
                if by_email
                    .get(record.email.as_str())
                    .map_err(unavailable)?
                    .is_some()
                {
                    return Err(StoreError::Conflict("email"));
                }
                let id = record.user.id.as_str();
                by_name.insert(name_key.as_str(), id).map_err(unavailable)?;
                by_email
                    .insert(record.email.as_str(), id)
                    .map_err(unavailable)?;
                let stored = StoredUser {
                    user: Some(record.user.clone()),
                    email: record.email.clone(),
                    password_hash: record.password_hash.clone(),
                };
                txn.open_table(USERS)
                    .map_err(unavailable)?
                    .insert(id, stored.encode_to_vec().as_slice())
                    .map_err(unavailable)?;
            }
            txn.commit().map_err(unavailable)
        })
        .await
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError> {
        let email = email.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let by_email = txn.open_table(USER_BY_EMAIL).map_err(unavailable)?;
            let Some(id) = by_email.get(email.as_str()).map_err(unavailable)? else {
                return Ok(None);
            };
            let users = txn.open_table(USERS).map_err(unavailable)?;
            let Some(raw) = users.get(id.value()).map_err(unavailable)? else {
                return Ok(None);
            };
            let stored: StoredUser = decode(raw.value())?;
            Ok(stored.user.map(|user| UserRecord {
                user,
                email: stored.email,
                password_hash: stored.password_hash,
            }))
        })
        .await
    }

    async fn users_by_ids(&self, ids: &[String]) -> Result<Vec<User>, StoreError> {
        let ids = ids.to_vec();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let users = txn.open_table(USERS).map_err(unavailable)?;
            let mut out = Vec::with_capacity(ids.len());
            for id in &ids {
                if let Some(raw) = users.get(id.as_str()).map_err(unavailable)? {
                    let stored: StoredUser = decode(raw.value())?;
                    out.extend(stored.user);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn search_users(&self, query: &str, limit: usize) -> Result<Vec<User>, StoreError> {
        let query = query.to_lowercase();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let users = txn.open_table(USERS).map_err(unavailable)?;
            let mut out = Vec::new();
            for entry in users.iter().map_err(unavailable)? {
                let (_, raw) = entry.map_err(unavailable)?;
                let Some(user) = decode::<StoredUser>(raw.value())?.user else {
                    continue;
                };
                if user.username.to_lowercase().contains(&query)
                    || user.display_name.to_lowercase().contains(&query)
                {
                    out.push(user);
                }
            }
            out.sort_by(|a, b| a.username.cmp(&b.username));
            out.truncate(limit);
            Ok(out)
        })
        .await
    }

    async fn ensure_direct(
        &self,
        id: &str,
        a: &str,
        b: &str,
        now_ms: i64,
    ) -> Result<Conversation, StoreError> {
        let (id, a, b) = (id.to_owned(), a.to_owned(), b.to_owned());
        self.writing(true, move |db| {
            {
                let txn = db.begin_read().map_err(unavailable)?;
                if let Some(existing) = read_conversation(&txn, &id)? {
                    return Ok(existing);
                }
            }
            let txn = db.begin_write().map_err(unavailable)?;
            let mut members = vec![a, b];
            members.sort();
            members.dedup();
            {
                let mut conversations = txn.open_table(CONVERSATIONS).map_err(unavailable)?;
                // Two first messages may race; the write lock makes the
                // second see the first's conversation.
                if conversations
                    .get(id.as_str())
                    .map_err(unavailable)?
                    .is_none()
                {
                    let conversation = Conversation {
                        id: id.clone(),
                        kind: "direct".into(),
                        members: members.clone(),
                        created_at_ms: now_ms,
                        ..Default::default()
                    };
                    conversations
                        .insert(id.as_str(), conversation.encode_to_vec().as_slice())
                        .map_err(unavailable)?;
                    let mut by_user = txn
                        .open_multimap_table(USER_CONVERSATIONS)
                        .map_err(unavailable)?;
                    for m in &members {
                        by_user
                            .insert(m.as_str(), id.as_str())
                            .map_err(unavailable)?;
                    }
                }
            }
            txn.commit().map_err(unavailable)?;
            let txn = db.begin_read().map_err(unavailable)?;
            read_conversation(&txn, &id)?.ok_or(StoreError::NoConversation(id))
        })
        .await
    }

    async fn conversation(&self, id: &str) -> Result<Option<Conversation>, StoreError> {
        let id = id.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            read_conversation(&txn, &id)
        })
        .await
    }

    /// Without the member cursors the default reads (one lookup per
    /// member): every send and every sequenced batch asks for the head.
    async fn conversation_head(&self, id: &str) -> Result<Option<Conversation>, StoreError> {
        let id = id.to_owned();
        self.point_read(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            read_conversation_head(&txn, &id)
        })
        .await
    }

    async fn conversations_of(&self, user: &str) -> Result<Vec<Conversation>, StoreError> {
        let user = user.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let by_user = txn
                .open_multimap_table(USER_CONVERSATIONS)
                .map_err(unavailable)?;
            let mut out = Vec::new();
            for id in by_user.get(user.as_str()).map_err(unavailable)? {
                let id = id.map_err(unavailable)?;
                if let Some(c) = read_conversation(&txn, id.value())? {
                    out.push(c);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn contacts(&self, user: &str) -> Result<Vec<String>, StoreError> {
        let conversations = self.conversations_of(user).await?;
        let contacts: BTreeSet<String> = conversations
            .into_iter()
            .flat_map(|c| c.members)
            .filter(|m| m != user)
            .collect();
        Ok(contacts.into_iter().collect())
    }

    async fn create_group(&self, group: &Conversation) -> Result<(), StoreError> {
        let group = Conversation {
            cursors: Vec::new(),
            ..group.clone()
        };
        self.writing(true, move |db| {
            let txn = db.begin_write().map_err(unavailable)?;
            {
                let mut conversations = txn.open_table(CONVERSATIONS).map_err(unavailable)?;
                conversations
                    .insert(group.id.as_str(), group.encode_to_vec().as_slice())
                    .map_err(unavailable)?;
                let mut by_user = txn
                    .open_multimap_table(USER_CONVERSATIONS)
                    .map_err(unavailable)?;
                for m in &group.members {
                    by_user
                        .insert(m.as_str(), group.id.as_str())
                        .map_err(unavailable)?;
                }
            }
            txn.commit().map_err(unavailable)
        })
        .await
    }

    async fn update_group(
        &self,
        id: &str,
        actor: &str,
        change: &GroupChange,
        max_members: usize,
    ) -> Result<GroupChanged, StoreError> {
        let (id, actor, change) = (id.to_owned(), actor.to_owned(), change.clone());
        self.writing(true, move |db| {
            // One write transaction: changes to a group are serialized.
            let txn = db.begin_write().map_err(unavailable)?;
            let result = {
                let mut conversations = txn.open_table(CONVERSATIONS).map_err(unavailable)?;
                let current: Conversation =
                    match conversations.get(id.as_str()).map_err(unavailable)? {
                        Some(raw) => decode(raw.value())?,
                        None => return Err(StoreError::NoConversation(id)),
                    };
                match apply_group_change(&current, &actor, &change, max_members)? {
                    None => GroupChanged {
                        conversation: current,
                        removed: Vec::new(),
                        changed: false,
                    },
                    Some((next, removed)) => {
                        conversations
                            .insert(id.as_str(), next.encode_to_vec().as_slice())
                            .map_err(unavailable)?;
                        let mut by_user = txn
                            .open_multimap_table(USER_CONVERSATIONS)
                            .map_err(unavailable)?;
                        let added = next.members.iter().filter(|m| !current.members.contains(m));
                        for m in added {
                            by_user
                                .insert(m.as_str(), id.as_str())
                                .map_err(unavailable)?;
                        }
                        for m in &removed {
                            by_user
                                .remove(m.as_str(), id.as_str())
                                .map_err(unavailable)?;
                        }
                        GroupChanged {
                            conversation: next,
                            removed,
                            changed: true,
                        }
                    }
                }
            };
            txn.commit().map_err(unavailable)?;
            Ok(result)
        })
        .await
    }

    async fn is_member(&self, conversation: &str, user: &str) -> Result<bool, StoreError> {
        let (conversation, user) = (conversation.to_owned(), user.to_owned());
        self.blocking(move |db| {
            // The membership index is written in the same transaction as
            // the member list, so it is exact, and no list is decoded.
            let txn = db.begin_read().map_err(unavailable)?;
            let by_user = txn
                .open_multimap_table(USER_CONVERSATIONS)
                .map_err(unavailable)?;
            for id in by_user.get(user.as_str()).map_err(unavailable)? {
                if id.map_err(unavailable)?.value() == conversation {
                    return Ok(true);
                }
            }
            Ok(false)
        })
        .await
    }

    async fn message_by_id(
        &self,
        conversation: &str,
        id: &str,
    ) -> Result<Option<ChatMessage>, StoreError> {
        let (conversation, id) = (conversation.to_owned(), id.to_owned());
        self.point_read(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let by_id = txn.open_table(MESSAGE_BY_ID).map_err(unavailable)?;
            let Some(seq) = by_id
                .get((conversation.as_str(), id.as_str()))
                .map_err(unavailable)?
                .map(|v| v.value())
            else {
                return Ok(None);
            };
            let stored = txn.open_table(MESSAGES).map_err(unavailable)?;
            message_at(&stored, &conversation, seq)
        })
        .await
    }

    async fn apply_change(&self, change: &ChatMessage) -> Result<(), StoreError> {
        let change = change.clone();
        let durability = self.sequencer_durability();
        self.writing(!self.deferred, move |db| {
            let mut txn = db.begin_write().map_err(unavailable)?;
            txn.set_durability(durability).map_err(unavailable)?;
            {
                let mut stored = txn.open_table(MESSAGES).map_err(unavailable)?;
                let conversation = change.conversation_id.as_str();
                let mut target = message_at(&stored, conversation, change.target_seq)?
                    .ok_or_else(|| corrupt("a change targets a message that is not stored"))?;
                apply_message_change(&mut target, &change);
                stored
                    .insert(
                        (conversation, change.target_seq),
                        target.encode_to_vec().as_slice(),
                    )
                    .map_err(unavailable)?;
                if target.deleted {
                    for seq in &target.edit_seqs {
                        if let Some(mut edit) = message_at(&stored, conversation, *seq)? {
                            edit.body.clear();
                            stored
                                .insert((conversation, *seq), edit.encode_to_vec().as_slice())
                                .map_err(unavailable)?;
                        }
                    }
                }
            }
            txn.commit().map_err(unavailable)
        })
        .await
    }

    async fn append_messages(&self, messages: &[ChatMessage]) -> Result<Vec<Appended>, StoreError> {
        let messages = messages.to_vec();
        let durability = self.sequencer_durability();
        self.writing(!self.deferred, move |db| {
            let mut txn = db.begin_write().map_err(unavailable)?;
            // Durable at the next fsync when deferred (see the module docs).
            txn.set_durability(durability).map_err(unavailable)?;
            let mut out = Vec::with_capacity(messages.len());
            {
                let mut conversations = txn.open_table(CONVERSATIONS).map_err(unavailable)?;
                let mut stored = txn.open_table(MESSAGES).map_err(unavailable)?;
                let mut by_client = txn.open_table(MESSAGE_BY_CLIENT_ID).map_err(unavailable)?;
                let mut by_id = txn.open_table(MESSAGE_BY_ID).map_err(unavailable)?;
                let mut touched: HashMap<String, Conversation> = HashMap::new();
                for mut message in messages {
                    let existing = by_client
                        .get((message.from.as_str(), message.client_msg_id.as_str()))
                        .map_err(unavailable)?
                        .map(|v| {
                            let (c, s) = v.value();
                            (c.to_owned(), s)
                        });
                    if let Some((conversation, seq)) = existing {
                        let raw = stored
                            .get((conversation.as_str(), seq))
                            .map_err(unavailable)?
                            .ok_or_else(|| corrupt("client id index points nowhere"))?;
                        out.push(Appended {
                            message: decode(raw.value())?,
                            fresh: false,
                        });
                        continue;
                    }
                    let conversation = match touched.get_mut(&message.conversation_id) {
                        Some(c) => c,
                        None => {
                            let raw = conversations
                                .get(message.conversation_id.as_str())
                                .map_err(unavailable)?
                                .ok_or_else(|| {
                                    StoreError::NoConversation(message.conversation_id.clone())
                                })?;
                            let c: Conversation = decode(raw.value())?;
                            drop(raw);
                            touched.entry(message.conversation_id.clone()).or_insert(c)
                        }
                    };
                    conversation.last_seq += 1;
                    message.seq = conversation.last_seq;
                    stored
                        .insert(
                            (message.conversation_id.as_str(), message.seq),
                            message.encode_to_vec().as_slice(),
                        )
                        .map_err(unavailable)?;
                    by_client
                        .insert(
                            (message.from.as_str(), message.client_msg_id.as_str()),
                            (message.conversation_id.as_str(), message.seq),
                        )
                        .map_err(unavailable)?;
                    by_id
                        .insert(
                            (message.conversation_id.as_str(), message.id.as_str()),
                            message.seq,
                        )
                        .map_err(unavailable)?;
                    out.push(Appended {
                        message,
                        fresh: true,
                    });
                }
                for (id, c) in touched {
                    conversations
                        .insert(id.as_str(), c.encode_to_vec().as_slice())
                        .map_err(unavailable)?;
                }
            }
            txn.commit().map_err(unavailable)?;
            Ok(out)
        })
        .await
    }

    async fn message_by_client_id(
        &self,
        sender: &str,
        client_msg_id: &str,
    ) -> Result<Option<ChatMessage>, StoreError> {
        let (sender, client_msg_id) = (sender.to_owned(), client_msg_id.to_owned());
        self.point_read(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let by_client = txn.open_table(MESSAGE_BY_CLIENT_ID).map_err(unavailable)?;
            let Some(at) = by_client
                .get((sender.as_str(), client_msg_id.as_str()))
                .map_err(unavailable)?
            else {
                return Ok(None);
            };
            let (conversation, seq) = at.value();
            let stored = txn.open_table(MESSAGES).map_err(unavailable)?;
            message_at(&stored, conversation, seq)
        })
        .await
    }

    async fn messages_after(
        &self,
        conversation: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let conversation = conversation.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let stored = txn.open_table(MESSAGES).map_err(unavailable)?;
            let start = after_seq.saturating_add(1);
            let mut out = Vec::new();
            for entry in stored
                .range((conversation.as_str(), start)..=(conversation.as_str(), u64::MAX))
                .map_err(unavailable)?
                .take(limit)
            {
                let (_, raw) = entry.map_err(unavailable)?;
                out.push(decode(raw.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn messages_before(
        &self,
        conversation: &str,
        before_seq: u64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let conversation = conversation.to_owned();
        let end = if before_seq == 0 {
            u64::MAX
        } else {
            before_seq
        };
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let stored = txn.open_table(MESSAGES).map_err(unavailable)?;
            let mut out = Vec::new();
            for entry in stored
                .range((conversation.as_str(), 1)..(conversation.as_str(), end))
                .map_err(unavailable)?
                .rev()
                .take(limit)
            {
                let (_, raw) = entry.map_err(unavailable)?;
                out.push(decode(raw.value())?);
            }
            out.reverse();
            Ok(out)
        })
        .await
    }

    async fn search_messages(
        &self,
        conversations: &[String],
        query: &str,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let conversations = conversations.to_vec();
        let query = query.to_lowercase();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let stored = txn.open_table(MESSAGES).map_err(unavailable)?;
            let mut out: Vec<ChatMessage> = Vec::new();
            for conversation in &conversations {
                for entry in stored
                    .range((conversation.as_str(), 1)..=(conversation.as_str(), u64::MAX))
                    .map_err(unavailable)?
                {
                    let (_, raw) = entry.map_err(unavailable)?;
                    let message: ChatMessage = decode(raw.value())?;
                    if message.kind == MessageKind::Message as i32
                        && !message.deleted
                        && message.body.to_lowercase().contains(&query)
                    {
                        out.push(message);
                    }
                }
            }
            out.sort_by_key(|m| std::cmp::Reverse((m.sent_at_ms, m.seq)));
            out.truncate(limit);
            Ok(out)
        })
        .await
    }

    async fn advance_cursor(
        &self,
        conversation: &str,
        user: &str,
        kind: ReceiptKind,
        up_to_seq: u64,
    ) -> Result<Option<u64>, StoreError> {
        let receipt = ReceiptEvent {
            conversation_id: conversation.to_owned(),
            user_id: user.to_owned(),
            kind: kind as i32,
            up_to_seq,
            at_ms: 0,
        };
        self.writing(true, move |db| {
            let txn = db.begin_write().map_err(unavailable)?;
            let moved = advance_in(&txn, &receipt, &mut HashMap::new())?;
            txn.commit().map_err(unavailable)?;
            Ok(moved)
        })
        .await
    }

    async fn advance_cursors(
        &self,
        receipts: &[ReceiptEvent],
    ) -> Result<Vec<Option<u64>>, StoreError> {
        let receipts = receipts.to_vec();
        self.writing(true, move |db| {
            // One transaction, one fsync, for the whole run.
            let txn = db.begin_write().map_err(unavailable)?;
            let mut out = Vec::with_capacity(receipts.len());
            let mut last_seqs = HashMap::new();
            for r in &receipts {
                out.push(match advance_in(&txn, r, &mut last_seqs) {
                    Ok(moved) => moved,
                    Err(StoreError::NoConversation(_) | StoreError::Corrupt(_)) => None,
                    Err(e) => return Err(e),
                });
            }
            txn.commit().map_err(unavailable)?;
            Ok(out)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.blocking(|db| db.begin_read().map(|_| ()).map_err(unavailable))
            .await
    }

    fn rolls_back_on_crash(&self) -> bool {
        self.deferred
    }

    /// An empty commit with fsync: redb then persists every commit before
    /// it (its `Durability::None` contract).
    async fn sync(&self) -> Result<(), StoreError> {
        self.writing(true, |db| {
            let txn = db.begin_write().map_err(unavailable)?;
            txn.commit().map_err(unavailable)
        })
        .await
    }
}
