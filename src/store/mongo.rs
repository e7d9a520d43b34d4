//! The store on MongoDB (and MongoDB-wire servers such as FerretDB 1.x, so
//! only plain CRUD, unique indexes and `$max`/`$setOnInsert` updates are
//! used: no transactions, no change streams, no aggregation).
//!
//! Collections: `users` (unique `username_lower`, unique `email`),
//! `conversations` (members, `last_seq`), `cursors` (one per member of a
//! conversation), `messages` (unique `(conversation_id, seq)` and unique
//! `(from, client_msg_id)`). Indexes are created at start-up.
//!
//! Appends are idempotent without transactions: a message is looked up by
//! `(from, client_msg_id)` first; new ones get `seq` = the conversation's
//! highest stored seq + 1 and are inserted in one batch; `last_seq` follows
//! with `$max`, so a crash between the two is repaired by the replay.

use super::{Appended, Store, StoreError, UserRecord};
use crate::proto::{ChatMessage, Conversation, MemberCursor, ReceiptKind, User};
use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};
use mongodb::options::{IndexOptions, ReturnDocument};
use mongodb::{Client, Collection, Database, IndexModel};
use std::collections::{BTreeSet, HashMap};

#[derive(Clone, Debug)]
pub struct MongoStore {
    db: Database,
}

fn unavailable(e: mongodb::error::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn is_duplicate(e: &mongodb::error::Error) -> bool {
    let text = e.to_string();
    text.contains("E11000") || text.contains("duplicate key") || text.contains("11000")
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
fn get_u64(d: &Document, key: &str) -> u64 {
    match d.get(key) {
        Some(Bson::Int64(v)) => u64::try_from(*v).unwrap_or(0),
        Some(Bson::Int32(v)) => u64::try_from(*v).unwrap_or(0),
        Some(Bson::Double(v)) if *v >= 0.0 => *v as u64,
        _ => 0,
    }
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

fn user_from(d: &Document) -> Result<User, StoreError> {
    Ok(User {
        id: get_str(d, "_id")?,
        username: get_str(d, "username")?,
        display_name: get_str(d, "display_name")?,
        created_at_ms: get_i64(d, "created_at"),
    })
}

fn message_doc(m: &ChatMessage) -> Document {
    doc! {
        "_id": &m.id,
        "conversation_id": &m.conversation_id,
        "seq": seq_bson(m.seq),
        "from": &m.from,
        "body": &m.body,
        "sent_at": m.sent_at_ms,
        "client_msg_id": &m.client_msg_id,
    }
}

fn message_from(d: &Document) -> Result<ChatMessage, StoreError> {
    Ok(ChatMessage {
        id: get_str(d, "_id")?,
        conversation_id: get_str(d, "conversation_id")?,
        seq: get_u64(d, "seq"),
        from: get_str(d, "from")?,
        body: get_str(d, "body")?,
        sent_at_ms: get_i64(d, "sent_at"),
        client_msg_id: get_str(d, "client_msg_id")?,
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
        let name = database
            .map(str::to_owned)
            .or_else(|| options.default_database.clone())
            .unwrap_or_else(|| "parley".to_owned());
        let client = Client::with_options(options).map_err(unavailable)?;
        let store = Self {
            db: client.database(&name),
        };
        store.ping().await?;
        store.create_indexes().await?;
        Ok(store)
    }

    async fn create_indexes(&self) -> Result<(), StoreError> {
        let unique = || IndexOptions::builder().unique(true).build();
        let indexes: [(&str, Document, bool); 6] = [
            ("users", doc! {"username_lower": 1}, true),
            ("users", doc! {"email": 1}, true),
            ("messages", doc! {"conversation_id": 1, "seq": 1}, true),
            ("messages", doc! {"from": 1, "client_msg_id": 1}, true),
            ("conversations", doc! {"members": 1}, false),
            ("cursors", doc! {"conversation_id": 1}, false),
        ];
        for (collection, keys, is_unique) in indexes {
            let model = if is_unique {
                IndexModel::builder().keys(keys).options(unique()).build()
            } else {
                IndexModel::builder().keys(keys).build()
            };
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

    async fn find_all(
        &self,
        collection: &str,
        filter: Document,
        sort: Option<Document>,
        limit: Option<i64>,
    ) -> Result<Vec<Document>, StoreError> {
        let coll = self.coll(collection);
        let mut find = coll.find(filter);
        if let Some(sort) = sort {
            find = find.sort(sort);
        }
        if let Some(limit) = limit {
            find = find.limit(limit);
        }
        find.await
            .map_err(unavailable)?
            .try_collect()
            .await
            .map_err(unavailable)
    }

    /// Conversations with their members' cursors.
    async fn with_cursors(&self, docs: Vec<Document>) -> Result<Vec<Conversation>, StoreError> {
        let mut conversations = docs
            .iter()
            .map(conversation_from)
            .collect::<Result<Vec<_>, _>>()?;
        if conversations.is_empty() {
            return Ok(conversations);
        }
        let ids: Vec<&str> = conversations.iter().map(|c| c.id.as_str()).collect();
        let rows = self
            .find_all(
                "cursors",
                doc! {"conversation_id": {"$in": ids}},
                None,
                None,
            )
            .await?;
        let mut by_key: HashMap<(String, String), (u64, u64)> = HashMap::new();
        for r in rows {
            by_key.insert(
                (get_str(&r, "conversation_id")?, get_str(&r, "user_id")?),
                (get_u64(&r, "delivered_seq"), get_u64(&r, "read_seq")),
            );
        }
        for c in &mut conversations {
            c.cursors = c
                .members
                .iter()
                .map(|m| {
                    let (delivered_seq, read_seq) = by_key
                        .get(&(c.id.clone(), m.clone()))
                        .copied()
                        .unwrap_or((0, 0));
                    MemberCursor {
                        user_id: m.clone(),
                        delivered_seq,
                        read_seq,
                    }
                })
                .collect();
        }
        Ok(conversations)
    }

    async fn highest_seq(&self, conversation: &str) -> Result<u64, StoreError> {
        let last = self
            .find_all(
                "messages",
                doc! {"conversation_id": conversation},
                Some(doc! {"seq": -1}),
                Some(1),
            )
            .await?;
        Ok(last.first().map(|d| get_u64(d, "seq")).unwrap_or(0))
    }

    async fn raise_last_seq(&self, conversation: &str, seq: u64) -> Result<(), StoreError> {
        self.coll("conversations")
            .update_one(
                doc! {"_id": conversation},
                doc! {"$max": {"last_seq": seq_bson(seq)}},
            )
            .await
            .map_err(unavailable)?;
        Ok(())
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
            Ok(_) => Ok(()),
            Err(e) if is_duplicate(&e) => {
                // Which unique field clashed: ask rather than parse messages.
                let taken = self
                    .coll("users")
                    .find_one(doc! {"username_lower": u.username.to_lowercase()})
                    .await
                    .map_err(unavailable)?;
                Err(StoreError::Conflict(if taken.is_some() {
                    "username"
                } else {
                    "email"
                }))
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError> {
        let Some(d) = self
            .coll("users")
            .find_one(doc! {"email": email})
            .await
            .map_err(unavailable)?
        else {
            return Ok(None);
        };
        Ok(Some(UserRecord {
            user: user_from(&d)?,
            email: get_str(&d, "email")?,
            password_hash: get_str(&d, "password_hash")?,
        }))
    }

    async fn users_by_ids(&self, ids: &[String]) -> Result<Vec<User>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.find_all("users", doc! {"_id": {"$in": ids}}, None, None)
            .await?
            .iter()
            .map(user_from)
            .collect()
    }

    async fn search_users(&self, query: &str, limit: usize) -> Result<Vec<User>, StoreError> {
        let pattern = regex_escape(&query.to_lowercase());
        let filter = doc! {"$or": [
            {"username_lower": {"$regex": &pattern}},
            {"display_lower": {"$regex": &pattern}},
        ]};
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.find_all(
            "users",
            filter,
            Some(doc! {"username_lower": 1}),
            Some(limit),
        )
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
        let mut members = vec![a.to_owned(), b.to_owned()];
        members.sort();
        members.dedup();
        let result = self
            .coll("conversations")
            .update_one(
                doc! {"_id": id},
                doc! {"$setOnInsert": {
                    "kind": "direct",
                    "name": "",
                    "members": &members,
                    "last_seq": 0_i64,
                    "created_at": now_ms,
                }},
            )
            .upsert(true)
            .await;
        match result {
            Ok(_) => {}
            // Two first messages raced; the other one created it.
            Err(e) if is_duplicate(&e) => {}
            Err(e) => return Err(unavailable(e)),
        }
        self.conversation(id)
            .await?
            .ok_or_else(|| StoreError::NoConversation(id.to_owned()))
    }

    async fn conversation(&self, id: &str) -> Result<Option<Conversation>, StoreError> {
        let Some(d) = self
            .coll("conversations")
            .find_one(doc! {"_id": id})
            .await
            .map_err(unavailable)?
        else {
            return Ok(None);
        };
        Ok(self.with_cursors(vec![d]).await?.pop())
    }

    async fn conversations_of(&self, user: &str) -> Result<Vec<Conversation>, StoreError> {
        let docs = self
            .find_all("conversations", doc! {"members": user}, None, None)
            .await?;
        self.with_cursors(docs).await
    }

    async fn contacts(&self, user: &str) -> Result<Vec<String>, StoreError> {
        let docs = self
            .find_all("conversations", doc! {"members": user}, None, None)
            .await?;
        let mut contacts = BTreeSet::new();
        for d in &docs {
            for m in conversation_from(d)?.members {
                if m != user {
                    contacts.insert(m);
                }
            }
        }
        Ok(contacts.into_iter().collect())
    }

    async fn append_messages(&self, messages: &[ChatMessage]) -> Result<Vec<Appended>, StoreError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        // One query for every message already stored under its client id.
        let keys: Vec<Document> = messages
            .iter()
            .map(|m| doc! {"from": &m.from, "client_msg_id": &m.client_msg_id})
            .collect();
        let mut stored: HashMap<(String, String), ChatMessage> = HashMap::new();
        for d in self
            .find_all("messages", doc! {"$or": keys}, None, None)
            .await?
        {
            let m = message_from(&d)?;
            stored.insert((m.from.clone(), m.client_msg_id.clone()), m);
        }
        let mut next: HashMap<String, u64> = HashMap::new();
        let mut fresh: Vec<ChatMessage> = Vec::new();
        let mut out = Vec::with_capacity(messages.len());
        for m in messages {
            let key = (m.from.clone(), m.client_msg_id.clone());
            if let Some(existing) = stored.get(&key) {
                out.push(Appended {
                    message: existing.clone(),
                    fresh: false,
                });
                continue;
            }
            let seq = match next.get(&m.conversation_id) {
                Some(s) => *s + 1,
                None => {
                    if self
                        .coll("conversations")
                        .find_one(doc! {"_id": &m.conversation_id})
                        .await
                        .map_err(unavailable)?
                        .is_none()
                    {
                        return Err(StoreError::NoConversation(m.conversation_id.clone()));
                    }
                    self.highest_seq(&m.conversation_id).await? + 1
                }
            };
            next.insert(m.conversation_id.clone(), seq);
            let mut message = m.clone();
            message.seq = seq;
            stored.insert(key, message.clone());
            fresh.push(message.clone());
            out.push(Appended {
                message,
                fresh: true,
            });
        }
        if !fresh.is_empty() {
            let docs: Vec<Document> = fresh.iter().map(message_doc).collect();
            if let Err(e) = self.coll("messages").insert_many(docs).ordered(true).await {
                // Another writer got there (a rebalance overlap): the batch
                // is retried and then finds what was stored.
                return Err(if is_duplicate(&e) {
                    StoreError::Unavailable(format!("concurrent append: {e}"))
                } else {
                    unavailable(e)
                });
            }
        }
        // Replays repair a `last_seq` that a crash left behind.
        let mut highest: HashMap<&str, u64> = HashMap::new();
        for a in &out {
            let h = highest
                .entry(a.message.conversation_id.as_str())
                .or_insert(0);
            *h = (*h).max(a.message.seq);
        }
        for (conversation, seq) in highest {
            self.raise_last_seq(conversation, seq).await?;
        }
        Ok(out)
    }

    async fn message_by_client_id(
        &self,
        sender: &str,
        client_msg_id: &str,
    ) -> Result<Option<ChatMessage>, StoreError> {
        self.coll("messages")
            .find_one(doc! {"from": sender, "client_msg_id": client_msg_id})
            .await
            .map_err(unavailable)?
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
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.find_all(
            "messages",
            doc! {"conversation_id": conversation, "seq": {"$gt": seq_bson(after_seq)}},
            Some(doc! {"seq": 1}),
            Some(limit),
        )
        .await?
        .iter()
        .map(message_from)
        .collect()
    }

    async fn messages_before(
        &self,
        conversation: &str,
        before_seq: u64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let filter = if before_seq == 0 {
            doc! {"conversation_id": conversation}
        } else {
            doc! {"conversation_id": conversation, "seq": {"$lt": seq_bson(before_seq)}}
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut page = self
            .find_all("messages", filter, Some(doc! {"seq": -1}), Some(limit))
            .await?
            .iter()
            .map(message_from)
            .collect::<Result<Vec<_>, _>>()?;
        page.reverse();
        Ok(page)
    }

    async fn advance_cursor(
        &self,
        conversation: &str,
        user: &str,
        kind: ReceiptKind,
        up_to_seq: u64,
    ) -> Result<Option<u64>, StoreError> {
        let c = self
            .coll("conversations")
            .find_one(doc! {"_id": conversation})
            .await
            .map_err(unavailable)?
            .ok_or_else(|| StoreError::NoConversation(conversation.to_owned()))?;
        let target = seq_bson(up_to_seq.min(get_u64(&c, "last_seq")));
        // Reading a message implies it was delivered.
        let raise = match kind {
            ReceiptKind::Read => doc! {"delivered_seq": target, "read_seq": target},
            _ => doc! {"delivered_seq": target},
        };
        let before = self
            .coll("cursors")
            .find_one_and_update(
                doc! {"_id": format!("{conversation}|{user}")},
                doc! {
                    "$max": raise,
                    "$setOnInsert": {"conversation_id": conversation, "user_id": user},
                },
            )
            .upsert(true)
            .return_document(ReturnDocument::Before)
            .await
            .map_err(unavailable)?;
        let field = match kind {
            ReceiptKind::Read => "read_seq",
            _ => "delivered_seq",
        };
        let previous = before.as_ref().map(|d| get_u64(d, field)).unwrap_or(0);
        let target = u64::try_from(target).unwrap_or(0);
        Ok((target > previous).then_some(target))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.db
            .run_command(doc! {"ping": 1})
            .await
            .map(|_| ())
            .map_err(unavailable)
    }
}
