//! What every [`Store`] must do.

use super::unique;
use crate::proto::{ChatMessage, ReceiptKind, User};
use crate::store::{Store, StoreError, UserRecord};
use std::sync::Arc;

/// An account named `name` with a unique id and a fake hash.
pub fn record(name: &str) -> UserRecord {
    UserRecord {
        user: User {
            id: unique("id"),
            username: name.to_owned(),
            display_name: format!("{name} Display"),
            created_at_ms: 1,
        },
        email: format!("{}@example.com", name.to_lowercase()),
        password_hash: "$argon2id$fake".into(),
    }
}

/// A message to append, with a unique id and no seq yet.
pub fn message(conversation: &str, from: &str, client_msg_id: &str) -> ChatMessage {
    ChatMessage {
        id: unique("m"),
        conversation_id: conversation.to_owned(),
        seq: 0,
        from: from.to_owned(),
        body: format!("body {client_msg_id}"),
        sent_at_ms: 7,
        client_msg_id: client_msg_id.to_owned(),
    }
}

/// Usernames (case-insensitively) and emails are unique.
pub async fn users_are_unique_and_found(store: Arc<dyn Store>) {
    let name = unique("Ann");
    let ann = record(&name);
    store.create_user(&ann).await.unwrap();
    let mut same_name = record(&name.to_uppercase());
    same_name.email = format!("{}@other.example", unique("x"));
    assert!(matches!(
        store.create_user(&same_name).await,
        Err(StoreError::Conflict("username"))
    ));
    let mut same_email = record(&unique("Bea"));
    same_email.email = ann.email.clone();
    assert!(matches!(
        store.create_user(&same_email).await,
        Err(StoreError::Conflict("email"))
    ));
    assert_eq!(
        store.user_by_email(&ann.email).await.unwrap(),
        Some(ann.clone())
    );
    assert_eq!(
        store.user_by_email("nobody@example.com").await.unwrap(),
        None
    );
    let found = store
        .users_by_ids(&[ann.user.id.clone(), "missing".into()])
        .await
        .unwrap();
    assert_eq!(found, std::slice::from_ref(&ann.user));
    let hits = store
        .search_users(&name[..6].to_lowercase(), 50)
        .await
        .unwrap();
    assert!(hits.iter().any(|u| u.id == ann.user.id));
}

fn without_cursors(c: &crate::proto::Conversation) -> crate::proto::Conversation {
    crate::proto::Conversation {
        cursors: Vec::new(),
        ..c.clone()
    }
}

/// Appends assign dense seqs per conversation and are idempotent on
/// `(sender, client_msg_id)`, also within one batch.
pub async fn appends_are_sequenced_and_idempotent(store: Arc<dyn Store>) {
    let (a, b) = (unique("a"), unique("b"));
    let one = unique("c");
    let two = unique("c");
    store.ensure_direct(&one, &a, &b, 1).await.unwrap();
    store.ensure_direct(&two, &a, &b, 1).await.unwrap();
    let again = store.ensure_direct(&one, &b, &a, 2).await.unwrap();
    assert_eq!(again.created_at_ms, 1, "ensure_direct recreated");

    let first = message(&one, &a, "x1");
    let batch = vec![
        first.clone(),
        message(&two, &a, "x2"),
        message(&one, &b, "x3"),
        first.clone(),
    ];
    let appended = store.append_messages(&batch).await.unwrap();
    let seqs: Vec<(u64, bool)> = appended.iter().map(|a| (a.message.seq, a.fresh)).collect();
    assert_eq!(seqs, [(1, true), (1, true), (2, true), (1, false)]);
    assert_eq!(appended[3].message.id, first.id);

    // A resend under a new id gets the stored one back.
    let mut resend = first.clone();
    resend.id = unique("m");
    let replay = store.append_messages(&[resend]).await.unwrap();
    assert!(!replay[0].fresh);
    assert_eq!(
        (replay[0].message.id.as_str(), replay[0].message.seq),
        (first.id.as_str(), 1)
    );
    assert_eq!(
        store
            .message_by_client_id(&a, "x1")
            .await
            .unwrap()
            .map(|m| m.id),
        Some(first.id.clone())
    );
    let c = store.conversation(&one).await.unwrap().unwrap();
    assert_eq!(c.last_seq, 2);
    let head = store.conversation_head(&one).await.unwrap().unwrap();
    assert_eq!(
        head,
        without_cursors(&c),
        "the head is the conversation without its cursors"
    );
    assert_eq!(store.conversation_head(&unique("c")).await.unwrap(), None);
    let mut members = c.members.clone();
    members.sort();
    let mut expected = vec![a.clone(), b.clone()];
    expected.sort();
    assert_eq!(members, expected);
    assert_eq!(store.contacts(&a).await.unwrap(), std::slice::from_ref(&b));
    assert_eq!(store.conversations_of(&b).await.unwrap().len(), 2);
}

/// History pages forwards and backwards by seq.
pub async fn history_pages_by_seq(store: Arc<dyn Store>) {
    let (a, b) = (unique("a"), unique("b"));
    let c = unique("c");
    store.ensure_direct(&c, &a, &b, 1).await.unwrap();
    let batch: Vec<ChatMessage> = (1..=10)
        .map(|i| message(&c, &a, &format!("h{i}")))
        .collect();
    store.append_messages(&batch).await.unwrap();
    let seqs = |ms: Vec<ChatMessage>| ms.into_iter().map(|m| m.seq).collect::<Vec<_>>();
    assert_eq!(
        seqs(store.messages_after(&c, 7, 100).await.unwrap()),
        [8, 9, 10]
    );
    assert_eq!(seqs(store.messages_after(&c, 0, 2).await.unwrap()), [1, 2]);
    assert_eq!(
        seqs(store.messages_before(&c, 0, 3).await.unwrap()),
        [8, 9, 10]
    );
    assert_eq!(
        seqs(store.messages_before(&c, 4, 10).await.unwrap()),
        [1, 2, 3]
    );
    assert!(
        store
            .messages_after(&unique("none"), 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Cursors only move forward, never past the last seq, and reading counts
/// as delivery.
pub async fn cursors_move_forward_only(store: Arc<dyn Store>) {
    let (a, b) = (unique("a"), unique("b"));
    let c = unique("c");
    store.ensure_direct(&c, &a, &b, 1).await.unwrap();
    let batch: Vec<ChatMessage> = (1..=5).map(|i| message(&c, &a, &format!("r{i}"))).collect();
    store.append_messages(&batch).await.unwrap();
    let read = ReceiptKind::Read;
    let delivered = ReceiptKind::Delivered;
    assert_eq!(
        store.advance_cursor(&c, &b, delivered, 2).await.unwrap(),
        Some(2)
    );
    assert_eq!(
        store.advance_cursor(&c, &b, delivered, 1).await.unwrap(),
        None
    );
    assert_eq!(
        store.advance_cursor(&c, &b, read, 99).await.unwrap(),
        Some(5)
    );
    assert_eq!(
        store.advance_cursor(&c, &b, delivered, 4).await.unwrap(),
        None
    );
    let conversation = store.conversation(&c).await.unwrap().unwrap();
    let cursor = conversation
        .cursors
        .iter()
        .find(|k| k.user_id == b)
        .unwrap();
    assert_eq!((cursor.delivered_seq, cursor.read_seq), (5, 5));
    assert!(matches!(
        store.advance_cursor(&unique("none"), &b, read, 1).await,
        Err(StoreError::NoConversation(_))
    ));
}

/// What was stored is there after the store is closed and opened again.
pub async fn survives_reopen<F, Fut>(open: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Arc<dyn Store>>,
{
    let ann = record(&unique("Ann"));
    let (a, b, c) = (unique("a"), unique("b"), unique("c"));
    {
        let store = open().await;
        store.create_user(&ann).await.unwrap();
        store.ensure_direct(&c, &a, &b, 1).await.unwrap();
        store
            .append_messages(&[message(&c, &a, "kept")])
            .await
            .unwrap();
    }
    let store = open().await;
    assert!(store.user_by_email(&ann.email).await.unwrap().is_some());
    assert_eq!(store.messages_after(&c, 0, 10).await.unwrap().len(), 1);
}

/// Search finds bodies containing the text, case-insensitively, only in the
/// conversations named, newest first.
pub async fn search_finds_messages_in_given_conversations(store: Arc<dyn Store>) {
    let (a, b, c) = (unique("a"), unique("b"), unique("c"));
    let (mine, theirs) = (unique("c"), unique("c"));
    store.ensure_direct(&mine, &a, &b, 1).await.unwrap();
    store.ensure_direct(&theirs, &b, &c, 1).await.unwrap();
    let mut batch = Vec::new();
    for (i, (conversation, body)) in [
        (&mine, "Lunch at noon?"),
        (&mine, "no"),
        (&theirs, "lunch is overrated"),
        (&mine, "LUNCH again (a.k.a. brunch)"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut m = message(conversation, &a, &format!("s{i}"));
        m.body = body.to_owned();
        m.sent_at_ms = 100 + i as i64;
        batch.push(m);
    }
    store.append_messages(&batch).await.unwrap();
    let found = store
        .search_messages(std::slice::from_ref(&mine), "lunch", 10)
        .await
        .unwrap();
    let bodies: Vec<&str> = found.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, ["LUNCH again (a.k.a. brunch)", "Lunch at noon?"]);
    // Regex characters are plain text.
    let dotted = store
        .search_messages(std::slice::from_ref(&mine), "(a.k.a.", 10)
        .await
        .unwrap();
    assert_eq!(dotted.len(), 1);
    let wildcard = store
        .search_messages(std::slice::from_ref(&mine), "a.k.a..", 10)
        .await
        .unwrap();
    assert!(wildcard.is_empty(), "a dot matched any character");
    let limited = store
        .search_messages(&[mine.clone(), theirs.clone()], "lunch", 2)
        .await
        .unwrap();
    assert_eq!(limited.len(), 2);
    assert!(
        store
            .search_messages(&[], "lunch", 10)
            .await
            .unwrap()
            .is_empty()
    );
}
