//! The store on MongoDB (and MongoDB-wire servers such as FerretDB 1.x, so
//! only plain CRUD, unique indexes and `$max`/`$setOnInsert`/`$set`
//! updates are used: no transactions, no change streams, no aggregation).
//!
//! Every hot-path read is a point lookup by `_id`. FerretDB 1.x on SQLite
//! pushes only `{_id: <string>}` filters down to SQL and scans the whole
//! collection for anything else (secondary indexes enforce uniqueness but
//! are not used by queries), so the documents are keyed for the reads:
//!
//! - `messages`: `_id` = `<conversation>:<seq, 20 digits>`, so a page of
//!   history is a set of lookups of consecutive seqs (seq is dense). Unique
//!   indexes on `id`, `(conversation_id, seq)` and `(from, client_msg_id)`.
//! - `message_keys`: `_id` = `<from>|<client_msg_id>` → conversation and
//!   seq: the dedupe lookup of a send and of a replayed bus record; and
//!   `_id` = `id:<message id>` → conversation and seq, the lookup of the
//!   message an edit, deletion or reaction names (written after the
//!   message, so a lost one falls back to a scan and is written back).
//! - `conversations` carry a `version`, raised by every group change and
//!   matched by it (compare-and-set), since there are no transactions.
//! - `conversations`: kind, name and members (written only under the
//!   group lock); `seqs`: `_id` = conversation → `last_seq` (written only by
//!   the partition owner, after the append; see [`behind`]); `member_slots` and
//!   `member_of`: the conversations a user is in (see [`memberships`]: no
//!   document there has two concurrent writers); `cursors`: `_id` =
//!   `<conversation>` → `d.<user>` and `r.<user>`, the delivered and read
//!   seqs of every member, so a run of a group's receipts is one write.
//! - `users` (unique `username_lower`, unique `email`) and `user_keys`:
//!   `_id` = `email:<email>` → user id, the login lookup.
//!
//! Without transactions, multi-document writes are ordered so that a crash
//! between two of them leaves a state the next attempt completes: a
//! message's client key is written before the message (a replay finds the
//! seq it reserved and writes the message there), the message before its
//! id key and `last_seq` (both written after the append answers, by
//! [`behind`]: every read of a last seq probes past `last_seq`, and a
//! missing id key falls back to a scan), memberships before the
//! conversation, and a missing login key falls back to a scan and is
//! written back.

use super::{
    Appended, GroupChange, GroupChanged, Store, StoreError, UserRecord, apply_group_change,
    apply_message_change,
};
use crate::proto::{
    ChatMessage, Conversation, MemberCursor, MessageKind, Reaction, ReceiptEvent, ReceiptKind, User,
};
use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt, stream};
use mongodb::bson::{Bson, Document, doc};
use mongodb::options::{Acknowledgment, IndexOptions, ReturnDocument, WriteConcern};
use mongodb::{Client, Collection, Database, IndexModel};
use std::collections::{BTreeSet, HashMap};

mod behind;
mod held;
mod memberships;

/// Point lookups in flight at once for one call (the driver's pool holds
/// ten connections by default).
const LOOKUPS_IN_FLIGHT: usize = 16;

#[derive(Clone, Debug)]
pub struct MongoStore {
    db: Database,
    /// Last seqs of the conversations this process appended to.
    held: held::HeldSeqs,
    /// The id keys and `last_seq` raises appends left to be written.
    behind: behind::Behind,
}

fn unavailable(e: mongodb::error::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Applies `update` to the document `_id` = `id` of `documents`,
/// inserting it if missing. Two upserts of a missing document race to
/// insert it; MongoDB retries the loser itself, FerretDB answers it with a
/// duplicate key. The second try finds the winner's document and updates it.
async fn upsert_in(
    documents: &Collection<Document>,
    id: &str,
    update: Document,
) -> Result<(), mongodb::error::Error> {
    let attempt = || {
        documents
            .update_one(doc! {"_id": id}, update.clone())
            .upsert(true)
    };
    match attempt().await {
        Err(e) if is_duplicate(&e) => attempt().await.map(|_| ()),
        other => other.map(|_| ()),
    }
}

/// MongoDB's duplicate key error (`E11000`), which FerretDB answers too
/// (<https://www.mongodb.com/docs/manual/reference/error-codes/>).
const DUPLICATE_KEY: i32 = 11000;

/// Whether a write was refused by a unique index, by the server's error
/// code (a single write's, any of a bulk insert's, or a command's), not by
/// the message's text.
fn is_duplicate(e: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, InsertManyError, WriteFailure};
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
        ErrorKind::InsertMany(InsertManyError {
            write_errors: Some(errors),
            ..
        }) => errors.iter().any(|w| w.code == DUPLICATE_KEY),
        ErrorKind::Command(c) => c.code == DUPLICATE_KEY,
        _ => false,
    }
}

/// A write that lost a race with another writer of the same keys (a
/// rebalance overlap): the caller retries and then finds what was stored.
fn concurrent(e: mongodb::error::Error) -> StoreError {
    if is_duplicate(&e) {
        StoreError::Unavailable(format!("concurrent append: {e}"))
    } else {
        unavailable(e)
    }
}

/// [`concurrent`], naming the document an ordered insert stopped at, so a
/// refused append says which message and seq clashed.
fn conflict_in(e: mongodb::error::Error, docs: &[Document]) -> StoreError {
    use mongodb::error::{ErrorKind, InsertManyError};
    let at = match e.kind.as_ref() {
        ErrorKind::InsertMany(InsertManyError {
            write_errors: Some(errors),
            ..
        }) => errors.first().and_then(|w| docs.get(w.index)),
        _ => None,
    };
    match (concurrent(e), at) {
        (StoreError::Unavailable(m), Some(d)) => StoreError::Unavailable(format!(
            "{m}; at _id {:?} (id {:?}, from {:?}, client_msg_id {:?})",
            d.get_str("_id").unwrap_or_default(),
            d.get_str("id").unwrap_or_default(),
            d.get_str("from").unwrap_or_default(),
            d.get_str("client_msg_id").unwrap_or_default(),
        )),
        (other, _) => other,
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_owned())
}

fn get_str(d: &Document, key: &str) -> Result<String, StoreError> {
    d.get_str(key)
        .map(str::to_owned)
        .map_err(|_| corrupt(&format!("field {key} missing or not a string")))
}

/// Integers may come back as i32 or i64 depending on the server.
/// A seq or count as stored: drivers and servers may widen or narrow it.
fn bson_u64(v: &Bson) -> Option<u64> {
    match v {
        Bson::Int64(v) => u64::try_from(*v).ok(),
        Bson::Int32(v) => u64::try_from(*v).ok(),
        Bson::Double(v) if *v >= 0.0 => Some(*v as u64),
        _ => None,
    }
}

fn get_u64(d: &Document, key: &str) -> u64 {
    d.get(key).and_then(bson_u64).unwrap_or(0)
}

fn get_i64(d: &Document, key: &str) -> i64 {
    match d.get(key) {
        Some(Bson::Int64(v)) => *v,
        Some(Bson::Int32(v)) => i64::from(*v),
        Some(Bson::Double(v)) => *v as i64,
        _ => 0,
    }
}

fn seq_bson(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// `_id` of a message: zero-padded so that `_id` order is seq order.
fn message_key(conversation: &str, seq: u64) -> String {
    format!("{conversation}:{seq:020}")
}

/// `_id` of a message's dedupe key. User ids never contain `|`, so the
/// first one separates the parts whatever the client id holds.
fn client_key(from: &str, client_msg_id: &str) -> String {
    format!("{from}|{client_msg_id}")
}

fn id_key(message_id: &str) -> String {
    format!("id:{message_id}")
}

/// True when a bulk insert failed only because some documents were already
/// there (keys written by an earlier, interrupted attempt).
fn only_duplicates(e: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, InsertManyError};
    match e.kind.as_ref() {
        ErrorKind::InsertMany(InsertManyError {
            write_errors: Some(errors),
            write_concern_error: None,
            ..
        }) => errors.iter().all(|w| w.code == DUPLICATE_KEY),
        _ => is_duplicate(e),
    }
}

fn email_key(email: &str) -> String {
    format!("email:{email}")
}

fn user_from(d: &Document) -> Result<User, StoreError> {
    Ok(User {
        id: get_str(d, "_id")?,
        username: get_str(d, "username")?,
        display_name: get_str(d, "display_name")?,
        created_at_ms: get_i64(d, "created_at"),
    })
}

fn user_record_from(d: &Document) -> Result<UserRecord, StoreError> {
    Ok(UserRecord {
        user: user_from(d)?,
        email: get_str(d, "email")?,
        password_hash: get_str(d, "password_hash")?,
    })
}

/// A message document; the fields of changes and of a message's later
/// state are written only when set, so a plain message stays small.
fn message_doc(m: &ChatMessage) -> Document {
    let mut d = doc! {
        "_id": message_key(&m.conversation_id, m.seq),
        "id": &m.id,
        "conversation_id": &m.conversation_id,
        "seq": seq_bson(m.seq),
        "from": &m.from,
        "body": &m.body,
        "sent_at": m.sent_at_ms,
        "client_msg_id": &m.client_msg_id,
    };
    if m.kind != MessageKind::Message as i32 {
        d.insert("kind", m.kind);
        d.insert("target_id", &m.target_id);
        d.insert("target_seq", seq_bson(m.target_seq));
        d.insert("emoji", &m.emoji);
        d.insert("on", m.on);
    }
    if m.edited_at_ms != 0 {
        d.insert("edited_at", m.edited_at_ms);
    }
    if m.deleted {
        d.insert("deleted", true);
    }
    if !m.edit_seqs.is_empty() {
        let seqs: Vec<i64> = m.edit_seqs.iter().map(|s| seq_bson(*s)).collect();
        d.insert("edit_seqs", seqs);
    }
    if !m.reactions.is_empty() {
        let reactions: Vec<Document> = m
            .reactions
            .iter()
            .map(|r| doc! {"emoji": &r.emoji, "user_id": &r.user_id})
            .collect();
        d.insert("reactions", reactions);
    }
    d
}

fn message_from(d: &Document) -> Result<ChatMessage, StoreError> {
    let reactions = match d.get_array("reactions") {
        Ok(list) => list
            .iter()
            .filter_map(|r| r.as_document())
            .map(|r| {
                Ok(Reaction {
                    emoji: get_str(r, "emoji")?,
                    user_id: get_str(r, "user_id")?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?,
        Err(_) => Vec::new(),
    };
    Ok(ChatMessage {
        id: get_str(d, "id")?,
        conversation_id: get_str(d, "conversation_id")?,
        seq: get_u64(d, "seq"),
        from: get_str(d, "from")?,
        body: get_str(d, "body")?,
        sent_at_ms: get_i64(d, "sent_at"),
        client_msg_id: get_str(d, "client_msg_id")?,
        kind: i32::try_from(get_i64(d, "kind")).unwrap_or(0),
        target_id: d.get_str("target_id").unwrap_or_default().to_owned(),
        target_seq: get_u64(d, "target_seq"),
        emoji: d.get_str("emoji").unwrap_or_default().to_owned(),
        on: d.get_bool("on").unwrap_or(false),
        edited_at_ms: get_i64(d, "edited_at"),
        deleted: d.get_bool("deleted").unwrap_or(false),
        reactions,
        edit_seqs: match d.get_array("edit_seqs") {
            Ok(list) => list.iter().filter_map(bson_u64).collect(),
            Err(_) => Vec::new(),
        },
    })
}

fn conversation_from(d: &Document) -> Result<Conversation, StoreError> {
    let members = d
        .get_array("members")
        .map_err(|_| corrupt("conversation without members"))?
        .iter()
        .filter_map(|m| m.as_str().map(str::to_owned))
        .collect();
    Ok(Conversation {
        id: get_str(d, "_id")?,
        kind: get_str(d, "kind")?,
        name: d.get_str("name").unwrap_or_default().to_owned(),
        members,
        last_seq: get_u64(d, "last_seq"),
        created_at_ms: get_i64(d, "created_at"),
        cursors: Vec::new(),
    })
}

/// Escapes a user's search text for use inside a regular expression.
fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\^$.|?*+()[]{}/-".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl MongoStore {
    /// Connects to `url` and uses `database` (the URL's, or the given
    /// default); creates the indexes. Fails if the server does not answer.
    pub async fn connect(url: &str, database: Option<&str>) -> Result<Self, StoreError> {
        let mut options = mongodb::options::ClientOptions::parse(url)
            .await
            .map_err(unavailable)?;
        options.app_name = Some("parley".into());
        options.server_selection_timeout = Some(std::time::Duration::from_secs(5));
        options.connect_timeout = Some(std::time::Duration::from_secs(3));
        // An acknowledged write must survive a failover and a crash: held
        // seqs (see [`held`]) and the sequencer's offset commits trust it.
        // Majority is MongoDB's default since 5.0 for a replica set, but a
        // cluster-wide default or the URL can lower it; stated here, it
        // cannot be (the URL's `w` or `journal` still win if given).
        if options.write_concern.is_none() {
            options.write_concern = Some(
                WriteConcern::builder()
                    .w(Acknowledgment::Majority)
                    .journal(true)
                    .build(),
            );
        }
        let name = database
            .map(str::to_owned)
            .or_else(|| options.default_database.clone())
            .unwrap_or_else(|| "parley".to_owned());
        let client = Client::with_options(options).map_err(unavailable)?;
        let db = client.database(&name);
        let store = Self {
            behind: behind::Behind::start(db.clone()),
            db,
            held: held::HeldSeqs::default(),
        };
        store.ping().await?;
        store.create_indexes().await?;
        Ok(store)
    }

    /// The unique indexes are the integrity guarantees; no query relies on
    /// a secondary index (see the module documentation).
    async fn create_indexes(&self) -> Result<(), StoreError> {
        let indexes: [(&str, Document); 5] = [
            ("users", doc! {"username_lower": 1}),
            ("users", doc! {"email": 1}),
            ("messages", doc! {"id": 1}),
            ("messages", doc! {"conversation_id": 1, "seq": 1}),
            ("messages", doc! {"from": 1, "client_msg_id": 1}),
        ];
        for (collection, keys) in indexes {
            let model = IndexModel::builder()
                .keys(keys)
                .options(IndexOptions::builder().unique(true).build())
                .build();
            self.coll(collection)
                .create_index(model)
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    fn coll(&self, name: &str) -> Collection<Document> {
        self.db.collection(name)
    }

    /// [`upsert_in`] the collection named `collection`.
    async fn upsert_by_id(
        &self,
        collection: &str,
        id: &str,
        update: Document,
    ) -> Result<(), StoreError> {
        upsert_in(&self.coll(collection), id, update)
            .await
            .map_err(unavailable)
    }

    /// The message `id` of `conversation` as its `id:` key names it:
    /// `Some(answer)` when the key decides (the message, or `None` when the
    /// key is another conversation's), `None` when there is no key or it
    /// does not name this message (it is then looked for otherwise).
    async fn message_by_id_key(
        &self,
        conversation: &str,
        id: &str,
    ) -> Result<Option<Option<ChatMessage>>, StoreError> {
        let Some(k) = self.by_id("message_keys", &id_key(id)).await? else {
            return Ok(None);
        };
        if get_str(&k, "conversation_id")? != conversation {
            return Ok(Some(None));
        }
        let key = message_key(conversation, get_u64(&k, "seq"));
        match self.by_id("messages", &key).await? {
            Some(d) if d.get_str("id") == Ok(id) => message_from(&d).map(|m| Some(Some(m))),
            _ => Ok(None),
        }
    }

    async fn by_id(&self, collection: &str, id: &str) -> Result<Option<Document>, StoreError> {
        self.coll(collection)
            .find_one(doc! {"_id": id})
            .await
            .map_err(unavailable)
    }

    /// A filtered, sorted, limited find: for the searches, which scan on
    /// FerretDB whatever their shape.
    async fn find_sorted(
        &self,
        collection: &str,
        filter: Document,
        sort: Document,
        limit: usize,
    ) -> Result<Vec<Document>, StoreError> {
        self.coll(collection)
            .find(filter)
            .sort(sort)
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await
            .map_err(unavailable)?
            .try_collect()
            .await
            .map_err(unavailable)
    }

    /// Point lookups of many `_id`s, a few in flight at once; the answers
    /// are in the order of `ids`. (`$in` is not pushed down by FerretDB.)
    async fn by_ids(
        &self,
        collection: &str,
        ids: Vec<String>,
    ) -> Result<Vec<Option<Document>>, StoreError> {
        stream::iter(ids)
            .map(|id| async move { self.by_id(collection, &id).await })
            .buffered(LOOKUPS_IN_FLIGHT)
            .try_collect()
            .await
    }

    /// Conversations with their members' cursors: one `cursors` document
    /// per conversation.
    async fn with_cursors(&self, docs: Vec<Document>) -> Result<Vec<Conversation>, StoreError> {
        let mut conversations = docs
            .iter()
            .map(conversation_from)
            .collect::<Result<Vec<_>, _>>()?;
        let ids = conversations.iter().map(|c| c.id.clone()).collect();
        let rows = self.by_ids("cursors", ids).await?;
        for (c, row) in conversations.iter_mut().zip(rows) {
            let position = |field: &str, user: &str| {
                row.as_ref()
                    .and_then(|r| r.get_document(field).ok())
                    .map_or(0, |d| get_u64(d, user))
            };
            c.cursors = c
                .members
                .iter()
                .map(|m| MemberCursor {
                    user_id: m.clone(),
                    delivered_seq: position("d", m),
                    read_seq: position("r", m),
                })
                .collect();
        }
        Ok(conversations)
    }

    /// The conversation documents `user` is a member of.
    async fn conversation_docs_of(&self, user: &str) -> Result<Vec<Document>, StoreError> {
        let ids = self.membership_ids(user).await?;
        // A membership written by a create that crashed before the
        // conversation points nowhere: skipped.
        Ok(self
            .conversation_docs(ids)
            .await?
            .into_iter()
            .flatten()
            .filter(|d| {
                d.get_array("members")
                    .is_ok_and(|ms| ms.iter().any(|m| m.as_str() == Some(user)))
            })
            .collect())
    }

    /// The messages with `first <= seq <= last`, oldest first.
    async fn messages_between(
        &self,
        conversation: &str,
        first: u64,
        last: u64,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        if first > last {
            return Ok(Vec::new());
        }
        let keys = (first..=last)
            .map(|s| message_key(conversation, s))
            .collect();
        self.by_ids("messages", keys)
            .await?
            .iter()
            .flatten()
            .map(message_from)
            .collect()
    }

    /// Each conversation's last seq: `seqs`' `last_seq` (or this process's
    /// held one, if higher), then probed past in `messages`, since the
    /// raise is written after the append answers (see [`behind`]) and a
    /// crash can lose it. `None` before its first message (or when there is
    /// no such conversation). One extra lookup per conversation when
    /// `last_seq` is current; a gallop, then a bisection, when it is not.
    async fn last_seqs(&self, ids: Vec<String>) -> Result<Vec<Option<u64>>, StoreError> {
        let recorded: Vec<Option<u64>> = self
            .by_ids("seqs", ids.clone())
            .await?
            .iter()
            .zip(&ids)
            // `None` orders below any seq, so `max` keeps whichever is known.
            .map(|(s, id)| {
                s.as_ref()
                    .map(|s| get_u64(s, "last_seq"))
                    .max(self.held.get(id))
            })
            .collect();
        let next = self
            .by_ids(
                "messages",
                ids.iter()
                    .zip(&recorded)
                    .map(|(id, seq)| message_key(id, seq.unwrap_or(0) + 1))
                    .collect(),
            )
            .await?;
        let mut out = Vec::with_capacity(ids.len());
        for ((id, seq), next) in ids.iter().zip(recorded).zip(next) {
            out.push(match next {
                None => seq,
                Some(_) => Some(self.last_stored_from(id, seq.unwrap_or(0) + 1).await?),
            });
        }
        Ok(out)
    }

    /// The highest seq stored in `conversation`, given that `stored` is:
    /// doubles the step until a seq is missing, then bisects (the stored
    /// seqs are a prefix, see [`behind`]).
    async fn last_stored_from(&self, conversation: &str, stored: u64) -> Result<u64, StoreError> {
        let exists = |seq: u64| async move {
            Ok::<_, StoreError>(
                self.by_id("messages", &message_key(conversation, seq))
                    .await?
                    .is_some(),
            )
        };
        let (mut lo, mut step) = (stored, 1_u64);
        let mut hi = loop {
            let probe = lo.saturating_add(step);
            if !exists(probe).await? {
                break probe;
            }
            lo = probe;
            step = step.saturating_mul(2);
        };
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if exists(mid).await? {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// Conversation documents with their `last_seq` put in from `seqs`.
    async fn conversation_docs(
        &self,
        ids: Vec<String>,
    ) -> Result<Vec<Option<Document>>, StoreError> {
        let (mut docs, seqs) = futures::try_join!(
            self.by_ids("conversations", ids.clone()),
            self.last_seqs(ids)
        )?;
        for (d, seq) in docs.iter_mut().zip(seqs) {
            if let Some(d) = d.as_mut() {
                d.insert("last_seq", seq_bson(seq.unwrap_or(0)));
            }
        }
        Ok(docs)
    }

    async fn conversation_doc(&self, id: &str) -> Result<Option<Document>, StoreError> {
        Ok(self
            .conversation_docs(vec![id.to_owned()])
            .await?
            .pop()
            .flatten())
    }
}

impl MongoStore {
    /// Appends a batch on the guess that none of its keys is stored, which
    /// holds for all but resends and replays: plans every message as new,
    /// then inserts the keys, whose unique `_id` checks the guess in one
    /// round trip instead of one lookup per message. `None` when a key was
    /// there: then [`Self::append_checked`] does it again, and the keys
    /// inserted here are found and either used (their seq is next) or
    /// rewritten.
    async fn append_new(
        &self,
        messages: &[ChatMessage],
    ) -> Result<Option<Vec<Appended>>, StoreError> {
        let mut seqs = SeqCounter::default();
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut keys = Vec::with_capacity(messages.len());
        let mut out: Vec<Appended> = Vec::with_capacity(messages.len());
        for m in messages {
            let key = client_key(&m.from, &m.client_msg_id);
            if let Some(&i) = seen.get(&key) {
                out.push(out[i].repeated());
                continue;
            }
            let planned = self.next_fresh(&mut seqs, m).await?;
            keys.push(key_doc(&key, &planned.message));
            seen.insert(key, out.len());
            out.push(planned);
        }
        if keys.is_empty() {
            return Ok(Some(out));
        }
        match self
            .coll("message_keys")
            .insert_many(keys)
            .ordered(false)
            .await
        {
            Ok(_) => {}
            Err(e) if only_duplicates(&e) => return Ok(None),
            Err(e) => return Err(unavailable(e)),
        }
        self.write_planned(&out).await?;
        self.held.raise(seqs.known());
        Ok(Some(out))
    }

    /// Appends a batch whose keys may already be stored (a resend, a
    /// replay after a crash, or [`Self::append_new`] finding one): looks up
    /// every key first.
    async fn append_checked(&self, messages: &[ChatMessage]) -> Result<Vec<Appended>, StoreError> {
        let keys: Vec<String> = messages
            .iter()
            .map(|m| client_key(&m.from, &m.client_msg_id))
            .collect();
        let found = self.by_ids("message_keys", keys.clone()).await?;
        let mut seqs = SeqCounter::default();
        // Index in `out` of each key seen in this batch (a resend can
        // follow its original in one batch).
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut new_keys = Vec::new();
        let mut rewritten_keys = Vec::new();
        let mut out: Vec<Appended> = Vec::with_capacity(messages.len());
        for ((m, key), found) in messages.iter().zip(&keys).zip(found) {
            if let Some(&i) = seen.get(key.as_str()) {
                out.push(out[i].repeated());
                continue;
            }
            seen.insert(key, out.len());
            // A key whose seq holds this very message: a duplicate. A key
            // whose seq is free and next: reserved by an append that
            // stopped before the message, written there now. Any other key
            // is stale (its seq went to another message, which only a
            // second writer of the conversation can cause, or lies past a
            // seq that is free, which an append that stopped after some of
            // its keys can leave): the message gets the next seq and the
            // key is rewritten, so seqs stay dense. Nobody has seen a
            // reserved seq: a message is pushed only once it is stored.
            let mut stale_key = false;
            if let Some(k) = found {
                let conversation = get_str(&k, "conversation_id")?;
                let seq = get_u64(&k, "seq");
                let stored = self
                    .by_id("messages", &message_key(&conversation, seq))
                    .await?;
                match stored {
                    Some(d)
                        if d.get_str("from") == Ok(m.from.as_str())
                            && d.get_str("client_msg_id") == Ok(m.client_msg_id.as_str()) =>
                    {
                        out.push(Appended {
                            message: message_from(&d)?,
                            fresh: false,
                        });
                        continue;
                    }
                    None if seq == seqs.last(self, &conversation).await? + 1 => {
                        seqs.take(&conversation, seq);
                        out.push(Appended {
                            message: ChatMessage {
                                conversation_id: conversation,
                                seq,
                                ..m.clone()
                            },
                            fresh: true,
                        });
                        continue;
                    }
                    _ => stale_key = true,
                }
            }
            let planned = self.next_fresh(&mut seqs, m).await?;
            let key_doc = key_doc(key, &planned.message);
            if stale_key {
                rewritten_keys.push(key_doc);
            } else {
                new_keys.push(key_doc);
            }
            out.push(planned);
        }
        for key_doc in rewritten_keys {
            let id = key_doc.get_str("_id").unwrap_or_default().to_owned();
            self.coll("message_keys")
                .replace_one(doc! {"_id": id}, key_doc)
                .await
                .map_err(unavailable)?;
        }
        // Keys, then messages, then `last_seq`: see the module docs.
        if !new_keys.is_empty() {
            self.coll("message_keys")
                .insert_many(new_keys)
                .ordered(true)
                .await
                .map_err(concurrent)?;
        }
        self.write_planned(&out).await?;
        self.held.raise(seqs.known());
        Ok(out)
    }

    /// `m` planned at the next seq of its conversation.
    async fn next_fresh(
        &self,
        seqs: &mut SeqCounter,
        m: &ChatMessage,
    ) -> Result<Appended, StoreError> {
        let seq = seqs.last(self, &m.conversation_id).await? + 1;
        seqs.take(&m.conversation_id, seq);
        Ok(Appended {
            message: ChatMessage { seq, ..m.clone() },
            fresh: true,
        })
    }

    /// Writes what an append planned (its fresh messages), in the order a
    /// crash needs (see the module docs): the client keys are written
    /// already, the messages are written here, and their id keys and the
    /// `last_seq` raises are queued for [`behind`] to write after the
    /// append answers.
    async fn write_planned(&self, out: &[Appended]) -> Result<(), StoreError> {
        let fresh = || out.iter().filter(|a| a.fresh).map(|a| &a.message);
        let to_write: Vec<Document> = fresh().map(message_doc).collect();
        if !to_write.is_empty() {
            self.coll("messages")
                .insert_many(&to_write)
                .ordered(true)
                .await
                .map_err(|e| conflict_in(e, &to_write))?;
        }
        let mut indexes = behind::Indexes {
            id_keys: fresh().map(|m| key_doc(&id_key(&m.id), m)).collect(),
            ..Default::default()
        };
        for a in out {
            indexes.raise(&a.message.conversation_id, a.message.seq);
        }
        // After the messages: a key never points at a message that is not
        // there, and `last_seq` is never past a stored seq.
        self.behind.queue(indexes).await;
        Ok(())
    }
}

/// A `message_keys` document: `id` (a client key or an id key) → where
/// `message` is stored.
fn key_doc(id: &str, message: &ChatMessage) -> Document {
    doc! {
        "_id": id,
        "conversation_id": &message.conversation_id,
        "seq": seq_bson(message.seq),
    }
}

/// The seqs handed out while appending one batch, per conversation.
#[derive(Default)]
struct SeqCounter(HashMap<String, u64>);

impl SeqCounter {
    /// The highest seq taken in `conversation`, read from the store the
    /// first time.
    async fn last(&mut self, store: &MongoStore, conversation: &str) -> Result<u64, StoreError> {
        if let Some(seq) = self.0.get(conversation) {
            return Ok(*seq);
        }
        if let Some(seq) = store.held.get(conversation) {
            self.0.insert(conversation.to_owned(), seq);
            return Ok(seq);
        }
        let Some(doc) = store.conversation_doc(conversation).await? else {
            return Err(StoreError::NoConversation(conversation.to_owned()));
        };
        // Probed past `seqs` already (see `last_seqs`).
        let seq = get_u64(&doc, "last_seq");
        self.0.insert(conversation.to_owned(), seq);
        Ok(seq)
    }

    /// The last seq of every conversation this append read or wrote: the
    /// only values [`held::HeldSeqs`] may learn. The seq of a duplicate is
    /// not among them: a replayed message at seq 3 says nothing about
    /// whether 4 is taken, and holding 3 would plan 4 again on every retry.
    fn known(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(c, s)| (c.as_str(), *s))
    }

    fn take(&mut self, conversation: &str, seq: u64) {
        let last = self.0.entry(conversation.to_owned()).or_insert(0);
        *last = (*last).max(seq);
    }
}

#[async_trait]
impl Store for MongoStore {
    async fn create_user(&self, record: &UserRecord) -> Result<(), StoreError> {
        let u = &record.user;
        let document = doc! {
            "_id": &u.id,
            "username": &u.username,
            "username_lower": u.username.to_lowercase(),
            "display_name": &u.display_name,
            "display_lower": u.display_name.to_lowercase(),
            "email": &record.email,
            "password_hash": &record.password_hash,
            "created_at": u.created_at_ms,
        };
        match self.coll("users").insert_one(document).await {
            Ok(_) => {}
            Err(e) if is_duplicate(&e) => {
                // Which unique field clashed: ask rather than parse messages
                // (a rare path, so a scan is acceptable).
                let taken = self
                    .coll("users")
                    .find_one(doc! {"username_lower": u.username.to_lowercase()})
                    .await
                    .map_err(unavailable)?;
                return Err(StoreError::Conflict(if taken.is_some() {
                    "username"
                } else {
                    "email"
                }));
            }
            Err(e) => return Err(unavailable(e)),
        }
        // The login key; if this write is lost, the first login writes it.
        self.upsert_by_id(
            "user_keys",
            &email_key(&record.email),
            doc! {"$setOnInsert": {"user_id": &u.id}},
        )
        .await
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError> {
        if let Some(key) = self.by_id("user_keys", &email_key(email)).await? {
            let id = get_str(&key, "user_id")?;
            if let Some(d) = self.by_id("users", &id).await? {
                return user_record_from(&d).map(Some);
            }
        }
        // No key: an account whose key write was lost, or no account.
        let Some(d) = self
            .coll("users")
            .find_one(doc! {"email": email})
            .await
            .map_err(unavailable)?
        else {
            return Ok(None);
        };
        let record = user_record_from(&d)?;
        self.upsert_by_id(
            "user_keys",
            &email_key(email),
            doc! {"$set": {"user_id": &record.user.id}},
        )
        .await?;
        Ok(Some(record))
    }

    async fn users_by_ids(&self, ids: &[String]) -> Result<Vec<User>, StoreError> {
        self.by_ids("users", ids.to_vec())
            .await?
            .iter()
            .flatten()
            .map(user_from)
            .collect()
    }

    async fn search_users(&self, query: &str, limit: usize) -> Result<Vec<User>, StoreError> {
        let pattern = regex_escape(&query.to_lowercase());
        let filter = doc! {"$or": [
            {"username_lower": {"$regex": &pattern}},
            {"display_lower": {"$regex": &pattern}},
        ]};
        self.find_sorted("users", filter, doc! {"username_lower": 1}, limit)
            .await?
            .iter()
            .map(user_from)
            .collect()
    }

    async fn ensure_direct(
        &self,
        id: &str,
        a: &str,
        b: &str,
        now_ms: i64,
    ) -> Result<Conversation, StoreError> {
        if self.conversation_head(id).await?.is_some() {
            return self
                .conversation(id)
                .await?
                .ok_or_else(|| StoreError::NoConversation(id.to_owned()));
        }
        let mut members = vec![a.to_owned(), b.to_owned()];
        members.sort();
        members.dedup();
        // Memberships first: a crash before the conversation is written
        // leaves ids that point nowhere, and the next attempt completes it.
        self.add_memberships(&members, id).await?;
        // Two first messages may race: the loser finds the winner's.
        self.upsert_by_id(
            "conversations",
            id,
            doc! {"$setOnInsert": {
                "kind": "direct",
                "name": "",
                "members": &members,
                "created_at": now_ms,
            }},
        )
        .await?;
        self.conversation(id)
            .await?
            .ok_or_else(|| StoreError::NoConversation(id.to_owned()))
    }

    async fn conversation(&self, id: &str) -> Result<Option<Conversation>, StoreError> {
        let Some(d) = self.conversation_doc(id).await? else {
            return Ok(None);
        };
        Ok(self.with_cursors(vec![d]).await?.pop())
    }

    async fn conversation_head(&self, id: &str) -> Result<Option<Conversation>, StoreError> {
        self.conversation_doc(id)
            .await?
            .as_ref()
            .map(conversation_from)
            .transpose()
    }

    async fn conversations_of(&self, user: &str) -> Result<Vec<Conversation>, StoreError> {
        let docs = self.conversation_docs_of(user).await?;
        self.with_cursors(docs).await
    }

    async fn contacts(&self, user: &str) -> Result<Vec<String>, StoreError> {
        let mut contacts = BTreeSet::new();
        for d in &self.conversation_docs_of(user).await? {
            for m in conversation_from(d)?.members {
                if m != user {
                    contacts.insert(m);
                }
            }
        }
        Ok(contacts.into_iter().collect())
    }

    async fn create_group(&self, group: &Conversation) -> Result<(), StoreError> {
        // Memberships first, as for a direct conversation.
        self.add_memberships(&group.members, &group.id).await?;
        self.coll("conversations")
            .insert_one(doc! {
                "_id": &group.id,
                "kind": "group",
                "name": &group.name,
                "members": &group.members,
                "created_at": group.created_at_ms,
                "version": 0_i64,
            })
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn update_group(
        &self,
        id: &str,
        actor: &str,
        change: &GroupChange,
        max_members: usize,
    ) -> Result<GroupChanged, StoreError> {
        // Compare-and-set on `version`: a concurrent change makes the write
        // match nothing, and it is recomputed on the newer group.
        for _ in 0..32 {
            // With `last_seq` from `seqs`, so the group the change answers
            // (and announces) has its real last seq.
            let Some(d) = self.conversation_doc(id).await? else {
                return Err(StoreError::NoConversation(id.to_owned()));
            };
            let current = conversation_from(&d)?;
            let Some((next, removed)) = apply_group_change(&current, actor, change, max_members)?
            else {
                return Ok(GroupChanged {
                    conversation: current,
                    removed: Vec::new(),
                    changed: false,
                });
            };
            let version = get_i64(&d, "version");
            // Added members' memberships before the group names them.
            let added: Vec<String> = next
                .members
                .iter()
                .filter(|m| !current.members.contains(m))
                .cloned()
                .collect();
            self.add_memberships(&added, id).await?;
            let written = self
                .coll("conversations")
                .update_one(
                    doc! {"_id": id, "version": version},
                    doc! {"$set": {
                        "members": &next.members,
                        "name": &next.name,
                        "version": version + 1,
                    }},
                )
                .await
                .map_err(unavailable)?;
            if written.matched_count == 0 {
                continue;
            }
            // The group is changed: a membership left behind by a failed
            // pull is ignored by every reader (the group does not name the
            // user), so it must not fail the change.
            for member in &removed {
                if let Err(e) = self.remove_membership(member, id).await {
                    tracing::warn!(error = %e, %member, group = %id, "stale membership left behind");
                }
            }
            return Ok(GroupChanged {
                conversation: next,
                removed,
                changed: true,
            });
        }
        Err(StoreError::Unavailable(format!(
            "group {id} is changing too often; try again"
        )))
    }

    async fn is_member(&self, conversation: &str, user: &str) -> Result<bool, StoreError> {
        // The user's own membership list: a short document, where the
        // group's carries up to hundreds of ids (parsing those on every
        // receipt was FerretDB's heaviest work under the 500-member
        // benchmark). It may say yes a moment longer than the group (a
        // removal updates the group first); the sequencer checks receipts
        // against the group itself.
        self.membership_says(user, conversation).await
    }

    async fn message_by_id(
        &self,
        conversation: &str,
        id: &str,
    ) -> Result<Option<ChatMessage>, StoreError> {
        if let Some(answer) = self.message_by_id_key(conversation, id).await? {
            return Ok(answer);
        }
        // No key yet: it may be queued behind an append (a change to a
        // message sent a moment ago). Waited for, then looked up again.
        if self.behind.busy() {
            self.behind.drain().await;
            if let Some(answer) = self.message_by_id_key(conversation, id).await? {
                return Ok(answer);
            }
        }
        // No key: a message stored before keys by id existed, or one whose
        // key write was given up or lost in a crash. A scan, then the key
        // is written back.
        let Some(d) = self
            .coll("messages")
            .find_one(doc! {"id": id, "conversation_id": conversation})
            .await
            .map_err(unavailable)?
        else {
            return Ok(None);
        };
        let message = message_from(&d)?;
        self.upsert_by_id(
            "message_keys",
            &id_key(id),
            doc! {"$set": {"conversation_id": conversation, "seq": seq_bson(message.seq)}},
        )
        .await?;
        Ok(Some(message))
    }

    async fn apply_change(&self, change: &ChatMessage) -> Result<(), StoreError> {
        // Read, apply, replace: the partition owner is the only writer of
        // its conversations' messages.
        let key = message_key(&change.conversation_id, change.target_seq);
        let Some(d) = self.by_id("messages", &key).await? else {
            return Err(corrupt("a change targets a message that is not stored"));
        };
        let mut target = message_from(&d)?;
        apply_message_change(&mut target, change);
        self.coll("messages")
            .replace_one(doc! {"_id": &key}, message_doc(&target))
            .await
            .map_err(unavailable)?;
        if target.deleted {
            for seq in &target.edit_seqs {
                self.coll("messages")
                    .update_one(
                        doc! {"_id": message_key(&change.conversation_id, *seq)},
                        doc! {"$set": {"body": ""}},
                    )
                    .await
                    .map_err(unavailable)?;
            }
        }
        Ok(())
    }

    async fn append_messages(&self, messages: &[ChatMessage]) -> Result<Vec<Appended>, StoreError> {
        let appended = match self.append_new(messages).await {
            Ok(Some(out)) => Ok(out),
            Ok(None) => self.append_checked(messages).await,
            Err(e) => Err(e),
        };
        if appended.is_err() {
            self.held
                .forget(messages.iter().map(|m| m.conversation_id.as_str()));
        }
        appended
    }

    async fn message_by_client_id(
        &self,
        sender: &str,
        client_msg_id: &str,
    ) -> Result<Option<ChatMessage>, StoreError> {
        let Some(k) = self
            .by_id("message_keys", &client_key(sender, client_msg_id))
            .await?
        else {
            return Ok(None);
        };
        let key = message_key(&get_str(&k, "conversation_id")?, get_u64(&k, "seq"));
        // A key is a reservation until its message is written, and one
        // planned from a stale seq (see `held`) points at another sender's
        // message until the checked append rewrites it: only the message
        // the key names counts.
        self.by_id("messages", &key)
            .await?
            .filter(|d| {
                d.get_str("from") == Ok(sender) && d.get_str("client_msg_id") == Ok(client_msg_id)
            })
            .as_ref()
            .map(message_from)
            .transpose()
    }

    async fn messages_after(
        &self,
        conversation: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let Some(c) = self.conversation_doc(conversation).await? else {
            return Ok(Vec::new());
        };
        let last = get_u64(&c, "last_seq").min(after_seq.saturating_add(limit as u64));
        self.messages_between(conversation, after_seq.saturating_add(1), last)
            .await
    }

    async fn messages_before(
        &self,
        conversation: &str,
        before_seq: u64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let Some(c) = self.conversation_doc(conversation).await? else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let last_seq = get_u64(&c, "last_seq");
        let last = if before_seq == 0 {
            last_seq
        } else {
            last_seq.min(before_seq - 1)
        };
        let first = last.saturating_sub(limit as u64 - 1).max(1);
        self.messages_between(conversation, first, last).await
    }

    async fn search_messages(
        &self,
        conversations: &[String],
        query: &str,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        if conversations.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let filter = doc! {
            "conversation_id": {"$in": conversations},
            "body": {"$regex": regex_escape(query), "$options": "i"},
            "kind": {"$exists": false},
            "deleted": {"$exists": false},
        };
        self.find_sorted("messages", filter, doc! {"sent_at": -1, "seq": -1}, limit)
            .await?
            .iter()
            .map(message_from)
            .collect()
    }

    async fn advance_cursor(
        &self,
        conversation: &str,
        user: &str,
        kind: ReceiptKind,
        up_to_seq: u64,
    ) -> Result<Option<u64>, StoreError> {
        let c = self
            .conversation_doc(conversation)
            .await?
            .ok_or_else(|| StoreError::NoConversation(conversation.to_owned()))?;
        let target = up_to_seq.min(get_u64(&c, "last_seq"));
        Ok(self
            .move_cursors(conversation, &[(user.to_owned(), kind, target)])
            .await?
            .pop()
            .flatten())
    }

    async fn advance_cursors(
        &self,
        receipts: &[ReceiptEvent],
    ) -> Result<Vec<Option<u64>>, StoreError> {
        // Each conversation's last seq, read once for the run from `seqs`
        // (a group's own document carries its whole member list). A
        // conversation without one has nothing to mark: its receipts
        // answer `None`, as for one that does not exist.
        let mut ids: Vec<String> = receipts.iter().map(|r| r.conversation_id.clone()).collect();
        ids.sort_unstable();
        ids.dedup();
        let last_seqs: HashMap<String, u64> = ids
            .clone()
            .into_iter()
            .zip(self.last_seqs(ids).await?)
            .filter_map(|(id, last)| Some((id, last?)))
            .collect();
        // One write per conversation, the answers put back in order.
        type Moves = Vec<(usize, (String, ReceiptKind, u64))>;
        let mut by_conversation: HashMap<&str, Moves> = HashMap::new();
        for (i, r) in receipts.iter().enumerate() {
            let Some(&last) = last_seqs.get(&r.conversation_id) else {
                continue;
            };
            let kind = r.kind();
            by_conversation
                .entry(r.conversation_id.as_str())
                .or_default()
                .push((i, (r.user_id.clone(), kind, r.up_to_seq.min(last))));
        }
        let mut out = vec![None; receipts.len()];
        for (conversation, moves) in by_conversation {
            let (indexes, moves): (Vec<usize>, Vec<_>) = moves.into_iter().unzip();
            let moved = self.move_cursors(conversation, &moves).await?;
            for (i, m) in indexes.into_iter().zip(moved) {
                out[i] = m;
            }
        }
        Ok(out)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.db
            .run_command(doc! {"ping": 1})
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    /// Waits for the id keys and `last_seq` raises queued by earlier
    /// appends (see [`behind`]). The messages themselves were durable when
    /// their append answered; this keeps the indexes at most one commit
    /// interval behind them, so a crash rarely leaves reads to probe or
    /// scan.
    async fn sync(&self) -> Result<(), StoreError> {
        self.behind.drain().await;
        Ok(())
    }
}

impl MongoStore {
    /// Raises cursors of one conversation, each move already clamped to
    /// the last seq, in one write to the conversation's `cursors` document
    /// (`d.<user>` and `r.<user>`, raised with `$max`): a busy group's run
    /// of receipts is one write, not one per member. Answers, move by move
    /// in order, the new position when it moved.
    async fn move_cursors(
        &self,
        conversation: &str,
        moves: &[(String, ReceiptKind, u64)],
    ) -> Result<Vec<Option<u64>>, StoreError> {
        let mut raise = Document::new();
        for (user, kind, target) in moves {
            // Which cursors the receipt raises, and to what, by the one rule.
            let (delivered, read) = super::apply_receipt((0, 0), *kind, *target).0;
            for (field, to) in [
                (format!("d.{user}"), delivered),
                (format!("r.{user}"), read),
            ] {
                if to == 0 {
                    continue;
                }
                let to = seq_bson(to);
                let higher = match raise.get(&field) {
                    Some(Bson::Int64(v)) => (*v).max(to),
                    _ => to,
                };
                raise.insert(field, higher);
            }
        }
        if raise.is_empty() {
            return Ok(vec![None; moves.len()]);
        }
        // Upserts racing to insert: see `upsert_by_id`.
        let cursors = self.coll("cursors");
        let attempt = || {
            cursors
                .find_one_and_update(doc! {"_id": conversation}, doc! {"$max": raise.clone()})
                .upsert(true)
                .return_document(ReturnDocument::Before)
        };
        let before = match attempt().await {
            Err(e) if is_duplicate(&e) => attempt().await,
            other => other,
        }
        .map_err(unavailable)?;
        let stored = |field: &str, user: &str| {
            before
                .as_ref()
                .and_then(|b| b.get_document(field).ok())
                .map_or(0, |d| get_u64(d, user))
        };
        // Replay the moves on the positions before, as one at a time would.
        let mut at: HashMap<&str, (u64, u64)> = HashMap::new();
        let mut out = Vec::with_capacity(moves.len());
        for (user, kind, target) in moves {
            let cursors = at
                .entry(user.as_str())
                .or_insert_with(|| (stored("d", user), stored("r", user)));
            let (moved_to, moved) = super::apply_receipt(*cursors, *kind, *target);
            *cursors = moved_to;
            out.push(moved);
        }
        Ok(out)
    }
}
