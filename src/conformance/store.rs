//! What every [`Store`] must do.

use super::unique;
use crate::proto::{ChatMessage, Conversation, MessageKind, ReceiptEvent, ReceiptKind, User};
use crate::store::{GroupChange, Store, StoreError, UserRecord};
use std::sync::Arc;

/// Every check of this module that takes a store, listed once: a
/// backend's test module stamps them out with `parley::store_checks!(check)`,
/// which expands to `check!(name);` for each (see `tests/conformance.rs`),
/// so a check added here runs on every backend. A backend that cannot pass
/// one matches that name first in its own `check!` and says why.
/// ([`survives_reopen`] takes a way to reopen the store, so each backend
/// calls it itself.)
#[macro_export]
macro_rules! store_checks {
    ($check:ident) => {
        $check!(users_are_unique_and_found);
        $check!(appends_are_sequenced_and_idempotent);
        $check!(history_pages_by_seq);
        $check!(cursors_move_forward_only);
        $check!(receipts_advance_in_one_call);
        $check!(membership_is_answered_per_user);
        $check!(first_messages_race);
        $check!(search_finds_messages_in_given_conversations);
        $check!(groups_change_atomically);
        $check!(concurrent_group_changes_keep_the_limit);
        $check!(one_user_starts_conversations_at_once);
        $check!(message_changes_apply_in_place);
    };
}

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
        ..Default::default()
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

/// [`Store::advance_cursors`] answers receipt by receipt, in order, what
/// [`Store::advance_cursor`] would have one at a time: a move forward
/// answers the new position (clamped to the last seq), a move back or to
/// where the cursor is answers `None`, as does a receipt for a conversation
/// that does not exist; reading counts as delivery.
pub async fn receipts_advance_in_one_call(store: Arc<dyn Store>) {
    let (a, b) = (unique("a"), unique("b"));
    let c = unique("c");
    store.ensure_direct(&c, &a, &b, 1).await.unwrap();
    let batch: Vec<ChatMessage> = (1..=5).map(|i| message(&c, &a, &format!("r{i}"))).collect();
    store.append_messages(&batch).await.unwrap();
    let receipt =
        |conversation: &str, user: &str, kind: ReceiptKind, up_to_seq: u64| ReceiptEvent {
            conversation_id: conversation.to_owned(),
            user_id: user.to_owned(),
            kind: kind as i32,
            up_to_seq,
            at_ms: 1,
        };
    let (read, delivered) = (ReceiptKind::Read, ReceiptKind::Delivered);
    let moved = store
        .advance_cursors(&[
            receipt(&c, &b, delivered, 2),
            receipt(&c, &b, delivered, 1),
            receipt(&unique("none"), &b, read, 1),
            receipt(&c, &a, read, 3),
            receipt(&c, &b, read, 99),
            receipt(&c, &b, delivered, 4),
        ])
        .await
        .unwrap();
    assert_eq!(moved, [Some(2), None, None, Some(3), Some(5), None]);
    let conversation = store.conversation(&c).await.unwrap().unwrap();
    let cursor = |user: &str| {
        let k = conversation
            .cursors
            .iter()
            .find(|k| k.user_id == user)
            .unwrap();
        (k.delivered_seq, k.read_seq)
    };
    assert_eq!(cursor(&b), (5, 5));
    assert_eq!(cursor(&a), (3, 3));
    assert_eq!(store.advance_cursors(&[]).await.unwrap(), []);
}

/// [`Store::is_member`] answers for the members of a 1:1 conversation and
/// of a group, no for anyone else or a conversation that does not exist,
/// and no (at once, or after a moment where memberships are kept apart)
/// once a member is removed.
pub async fn membership_is_answered_per_user(store: Arc<dyn Store>) {
    let (a, b, stranger) = (unique("a"), unique("b"), unique("s"));
    let c = unique("c");
    store.ensure_direct(&c, &a, &b, 1).await.unwrap();
    assert!(store.is_member(&c, &a).await.unwrap());
    assert!(store.is_member(&c, &b).await.unwrap());
    assert!(!store.is_member(&c, &stranger).await.unwrap());
    assert!(!store.is_member(&unique("none"), &a).await.unwrap());
    let g = unique("g");
    store.create_group(&group(&g, &[&a, &b])).await.unwrap();
    assert!(store.is_member(&g, &b).await.unwrap());
    store
        .update_group(&g, &a, &GroupChange::Remove(vec![b.clone()]), 10)
        .await
        .unwrap();
    super::eventually("a removed member is no longer one", || {
        let (store, g, b) = (store.clone(), g.clone(), b.clone());
        async move { !store.is_member(&g, &b).await.unwrap() }
    })
    .await;
    assert!(store.is_member(&g, &a).await.unwrap());
}

/// Both people of a new pair send their first message at once: every
/// attempt succeeds (a refusal would be an error in front of a user who did
/// nothing wrong), all name one conversation, listed once for each member.
pub async fn first_messages_race(store: Arc<dyn Store>) {
    let (a, b) = (unique("a"), unique("b"));
    let c = unique("c");
    let same_pair = (0..6).map(|_| store.ensure_direct(&c, &a, &b, 1));
    for outcome in futures::future::join_all(same_pair).await {
        let conversation = outcome.unwrap();
        assert_eq!(conversation.id, c);
        assert_eq!(conversation.members.len(), 2);
    }
    for user in [&a, &b] {
        let listed: Vec<String> = store
            .conversations_of(user)
            .await
            .unwrap()
            .into_iter()
            .map(|k| k.id)
            .collect();
        assert_eq!(listed, vec![c.clone()]);
    }
}

/// One user starts many conversations at the same moment: each one is
/// listed, and the user counts as a member of each. (On FerretDB 1.x two
/// concurrent updates of one document lose one, so memberships are kept
/// where no document has two writers: `store/mongo/memberships.rs`.)
pub async fn one_user_starts_conversations_at_once(store: Arc<dyn Store>) {
    let a = unique("a");
    let peers: Vec<(String, String)> = (0..24).map(|_| (unique("c"), unique("p"))).collect();
    let starts = peers
        .iter()
        .map(|(id, peer)| store.ensure_direct(id, &a, peer, 1));
    for outcome in futures::future::join_all(starts).await {
        outcome.unwrap();
    }
    let mut listed: Vec<String> = store
        .conversations_of(&a)
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.id)
        .collect();
    listed.sort();
    for (id, peer) in &peers {
        assert!(store.is_member(id, &a).await.unwrap(), "{a} in {id}");
        assert!(store.is_member(id, peer).await.unwrap(), "{peer} in {id}");
    }
    let mut expected: Vec<String> = peers.into_iter().map(|(id, _)| id).collect();
    expected.sort();
    assert_eq!(listed, expected);
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

fn group(id: &str, members: &[&String]) -> Conversation {
    Conversation {
        id: id.to_owned(),
        kind: "group".into(),
        name: "friends".into(),
        members: members.iter().map(|m| (*m).clone()).collect(),
        created_at_ms: 1,
        ..Default::default()
    }
}

/// Groups: members can change them, the limit holds, removed members lose
/// the group from their list, and direct conversations are not groups.
pub async fn groups_change_atomically(store: Arc<dyn Store>) {
    let (a, b, c, d, outsider) = (
        unique("a"),
        unique("b"),
        unique("c"),
        unique("d"),
        unique("x"),
    );
    let g = unique("g");
    store.create_group(&group(&g, &[&a, &b])).await.unwrap();
    let listed: Vec<String> = store
        .conversations_of(&b)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(listed, std::slice::from_ref(&g));

    let added = store
        .update_group(&g, &a, &GroupChange::Add(vec![c.clone(), b.clone()]), 3)
        .await
        .unwrap();
    assert!(added.changed);
    assert_eq!(
        added.conversation.members,
        [a.clone(), b.clone(), c.clone()]
    );
    let again = store
        .update_group(&g, &b, &GroupChange::Add(vec![c.clone()]), 3)
        .await
        .unwrap();
    assert!(!again.changed, "adding a member twice changes nothing");
    assert!(matches!(
        store
            .update_group(&g, &a, &GroupChange::Add(vec![d.clone()]), 3)
            .await,
        Err(StoreError::GroupFull(3))
    ));
    assert!(matches!(
        store
            .update_group(&g, &outsider, &GroupChange::Rename("mine".into()), 3)
            .await,
        Err(StoreError::NoConversation(_))
    ));

    let removed = store
        .update_group(&g, &a, &GroupChange::Remove(vec![b.clone(), d.clone()]), 3)
        .await
        .unwrap();
    assert_eq!(removed.removed, std::slice::from_ref(&b));
    assert!(store.conversations_of(&b).await.unwrap().is_empty());
    assert!(matches!(
        store
            .update_group(&g, &b, &GroupChange::Add(vec![b.clone()]), 3)
            .await,
        Err(StoreError::NoConversation(_))
    ));
    let renamed = store
        .update_group(&g, &c, &GroupChange::Rename("renamed".into()), 3)
        .await
        .unwrap();
    let stored = store.conversation_head(&g).await.unwrap().unwrap();
    assert_eq!(stored.name, "renamed");
    assert_eq!(stored.members, [a.clone(), c.clone()]);
    assert_eq!(renamed.conversation.members, stored.members);

    let direct = unique("c");
    store.ensure_direct(&direct, &a, &b, 1).await.unwrap();
    assert!(matches!(
        store
            .update_group(&direct, &a, &GroupChange::Add(vec![c.clone()]), 3)
            .await,
        Err(StoreError::NotAGroup(_))
    ));
}

/// Concurrent additions cannot take a group past its limit nor lose one
/// another. (Embedded only: on FerretDB 1.x a filtered update is not
/// atomic, so chat-svc serializes group changes with a registry lock,
/// tested through the whole system.)
pub async fn concurrent_group_changes_keep_the_limit(store: Arc<dyn Store>) {
    let owner = unique("o");
    let g = unique("g");
    store.create_group(&group(&g, &[&owner])).await.unwrap();
    let candidates: Vec<String> = (0..8).map(|i| unique(&format!("u{i}"))).collect();
    let results = futures::future::join_all(candidates.iter().map(|u| {
        let store = store.clone();
        let (g, owner, u) = (g.clone(), owner.clone(), u.clone());
        async move {
            store
                .update_group(&g, &owner, &GroupChange::Add(vec![u]), 5)
                .await
        }
    }))
    .await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let full = results
        .iter()
        .filter(|r| matches!(r, Err(StoreError::GroupFull(5))))
        .count();
    assert_eq!((ok, full), (4, 4), "{results:?}");
    let stored = store.conversation_head(&g).await.unwrap().unwrap();
    assert_eq!(stored.members.len(), 5);
}

/// Edits, deletions and reactions are entries of the log (dense seq) that
/// also change their target in place; a message is found by id only in its
/// own conversation; search skips changes and deleted messages.
pub async fn message_changes_apply_in_place(store: Arc<dyn Store>) {
    let (a, b, c) = (unique("a"), unique("b"), unique("c"));
    let conversation = unique("c");
    store.ensure_direct(&conversation, &a, &b, 1).await.unwrap();
    let mut original = message(&conversation, &a, "orig");
    original.body = "helo wrld".into();
    let stored = store.append_messages(&[original]).await.unwrap()[0]
        .message
        .clone();
    assert_eq!(
        store
            .message_by_id(&conversation, &stored.id)
            .await
            .unwrap()
            .map(|m| m.seq),
        Some(1)
    );
    assert!(
        store
            .message_by_id(&unique("c"), &stored.id)
            .await
            .unwrap()
            .is_none(),
        "found through another conversation"
    );
    let change = |kind: MessageKind, cmid: &str, from: &str| ChatMessage {
        kind: kind as i32,
        target_id: stored.id.clone(),
        target_seq: stored.seq,
        sent_at_ms: 50,
        ..message(&conversation, from, cmid)
    };
    let mut edit = change(MessageKind::Edit, "e1", &a);
    edit.body = "hello world".into();
    let mut like = change(MessageKind::Reaction, "r1", &b);
    like.emoji = "👍".into();
    like.on = true;
    let mut unlike = like.clone();
    unlike.client_msg_id = "r2".into();
    unlike.id = unique("m");
    unlike.on = false;
    let mut heart = change(MessageKind::Reaction, "r3", &c);
    heart.emoji = "❤️".into();
    heart.on = true;
    let mut applied = Vec::new();
    for entry in [&edit, &like, &heart] {
        let appended = store
            .append_messages(std::slice::from_ref(entry))
            .await
            .unwrap();
        store.apply_change(&appended[0].message).await.unwrap();
        applied.push(appended[0].message.clone());
    }
    // Applying the stored changes again (a replay) lands the same.
    for entry in &applied {
        store.apply_change(entry).await.unwrap();
    }
    let now = store
        .message_by_id(&conversation, &stored.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(now.body, "hello world");
    assert_eq!(now.edited_at_ms, 50);
    assert_eq!(
        now.edit_seqs,
        [applied[0].seq],
        "a replayed edit is listed once"
    );
    assert_eq!(now.reactions.len(), 2);
    let log = store.messages_after(&conversation, 0, 10).await.unwrap();
    let seqs: Vec<u64> = log.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    assert_eq!(log[1].kind, MessageKind::Edit as i32);
    assert_eq!(log[1].target_id, stored.id);
    let found = store
        .search_messages(std::slice::from_ref(&conversation), "hello", 10)
        .await
        .unwrap();
    assert_eq!(found.len(), 1, "the edit entry is not a second hit");
    assert_eq!(found[0].id, stored.id);

    store.apply_change(&unlike).await.unwrap();
    let taken_back = store
        .message_by_id(&conversation, &stored.id)
        .await
        .unwrap()
        .unwrap();
    let left: Vec<(&str, &str)> = taken_back
        .reactions
        .iter()
        .map(|r| (r.emoji.as_str(), r.user_id.as_str()))
        .collect();
    assert_eq!(left, [("❤️", c.as_str())], "only Bob's 👍 was taken back");
    let delete = change(MessageKind::Delete, "d1", &a);
    store
        .append_messages(std::slice::from_ref(&delete))
        .await
        .unwrap();
    store.apply_change(&delete).await.unwrap();
    let tomb = store
        .messages_before(&conversation, 2, 1)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert!(tomb.deleted);
    assert_eq!((tomb.seq, tomb.body.as_str()), (1, ""));
    let edit_entry = store
        .messages_after(&conversation, 1, 1)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(
        (edit_entry.kind, edit_entry.body.as_str()),
        (MessageKind::Edit as i32, ""),
        "a deleted message's edited text is still readable"
    );
    assert!(tomb.reactions.is_empty());
    assert!(
        store
            .search_messages(std::slice::from_ref(&conversation), "hello", 10)
            .await
            .unwrap()
            .is_empty()
    );
}
