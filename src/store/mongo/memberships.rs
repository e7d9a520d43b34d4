//! Which conversations a user is in, on a store without transactions or
//! atomic read-modify-write.
//!
//! FerretDB 1.x applies an update by reading the document and writing the
//! whole of it back, so two concurrent `$addToSet`s on one user's list
//! lose one: the fault suite (issue 11) found users whose list missed one
//! of the two direct conversations first sends had created at the same
//! moment, and `sync`, which lists a user's conversations from here, could
//! then never bring back a push missed in it. So nothing here is updated
//! by two writers at once:
//!
//! - `member_slots`: `_id` = `<user>:<slot, 10 digits>` → `conversation_id`,
//!   slots dense from 0. A membership is appended by inserting the next
//!   free slot: the unique `_id` makes the insert the claim, so concurrent
//!   appends take different slots (as messages take seqs). Slots are never
//!   deleted; a user who left still has one, and every reader checks the
//!   conversation's own member list. `<user>:next` holds a hint of the
//!   first free slot (`$max`; a lost raise only costs probes).
//! - `member_of`: `_id` = `<user>|<conversation>` → `member` (bool) and
//!   `slot`: the point lookup of `is_member`, and what says a re-added
//!   member already has a slot. Only group changes (under the group lock)
//!   flip `member`; creating a direct conversation writes the same value
//!   from both sides.
//! - `memberships`: `_id` = user → `conversations` (array): the layout
//!   before this one, still read (and pulled from on removal) so that
//!   stores written by earlier builds keep their lists; never added to.
//!
//! Written before the conversation names the user: a membership the
//! conversation does not confirm is ignored by every reader.

use super::{LOOKUPS_IN_FLIGHT, MongoStore, is_duplicate, unavailable};
use crate::store::StoreError;
use futures::{StreamExt, TryStreamExt, stream};
use mongodb::bson::{Bson, doc};

const SLOTS: &str = "member_slots";
const PAIRS: &str = "member_of";
const LEGACY: &str = "memberships";

fn slot_key(user: &str, slot: u64) -> String {
    format!("{user}:{slot:010}")
}

fn hint_key(user: &str) -> String {
    format!("{user}:next")
}

fn pair_key(user: &str, conversation: &str) -> String {
    format!("{user}|{conversation}")
}

fn as_u64(value: Option<&Bson>) -> u64 {
    match value {
        Some(Bson::Int64(v)) => u64::try_from(*v).unwrap_or(0),
        Some(Bson::Int32(v)) => u64::try_from(*v).unwrap_or(0),
        _ => 0,
    }
}

impl MongoStore {
    /// The conversation ids `user` was ever added to, oldest first, without
    /// repeats (some may no longer name the user).
    pub(super) async fn membership_ids(&self, user: &str) -> Result<Vec<String>, StoreError> {
        let mut ids = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut keep = |id: String| {
            if seen.insert(id.clone()) {
                ids.push(id);
            }
        };
        let hint = hint_key(user);
        let (legacy, hint) =
            futures::try_join!(self.by_id(LEGACY, user), self.by_id(SLOTS, &hint))?;
        if let Some(legacy) = legacy {
            for id in legacy.get_array("conversations").into_iter().flatten() {
                if let Some(id) = id.as_str() {
                    keep(id.to_owned());
                }
            }
        }
        // Dense slots: every slot below the hint exists (the hint is only
        // raised past a slot that was inserted), so those are read at once;
        // then one at a time from there until the first missing one (one
        // lookup when the hint is current). A join reads this list, so a
        // user in no conversation costs two rounds of lookups here.
        let known = as_u64(hint.as_ref().and_then(|h| h.get("next")));
        let keys = (0..known).map(|s| slot_key(user, s)).collect();
        for slot in self.by_ids(SLOTS, keys).await?.into_iter().flatten() {
            if let Ok(id) = slot.get_str("conversation_id") {
                keep(id.to_owned());
            }
        }
        let mut next = known;
        while let Some(slot) = self.by_id(SLOTS, &slot_key(user, next)).await? {
            if let Ok(id) = slot.get_str("conversation_id") {
                keep(id.to_owned());
            }
            next += 1;
        }
        Ok(ids)
    }

    /// Whether `user`'s own records say they are in `conversation`: one
    /// point lookup (a group's member list carries up to hundreds of ids).
    pub(super) async fn membership_says(
        &self,
        user: &str,
        conversation: &str,
    ) -> Result<bool, StoreError> {
        if let Some(pair) = self.by_id(PAIRS, &pair_key(user, conversation)).await? {
            return Ok(pair.get_bool("member").unwrap_or(false));
        }
        Ok(self.by_id(LEGACY, user).await?.is_some_and(|legacy| {
            legacy
                .get_array("conversations")
                .is_ok_and(|ids| ids.iter().any(|id| id.as_str() == Some(conversation)))
        }))
    }

    /// Adds `conversation` to each user's memberships, a few users at a
    /// time.
    pub(super) async fn add_memberships(
        &self,
        users: &[String],
        conversation: &str,
    ) -> Result<(), StoreError> {
        // Owned items: a stream of borrows trips the async-trait futures'
        // lifetime inference.
        stream::iter(users.to_vec())
            .map(|user| async move { self.add_membership(&user, conversation).await })
            .buffer_unordered(LOOKUPS_IN_FLIGHT)
            .try_collect::<()>()
            .await
    }

    async fn add_membership(&self, user: &str, conversation: &str) -> Result<(), StoreError> {
        let pair = pair_key(user, conversation);
        if self.by_id(PAIRS, &pair).await?.is_some() {
            return self
                .upsert_by_id(PAIRS, &pair, doc! {"$set": {"member": true}})
                .await;
        }
        let mut slot = as_u64(
            self.by_id(SLOTS, &hint_key(user))
                .await?
                .as_ref()
                .and_then(|h| h.get("next")),
        );
        loop {
            let inserted = self
                .coll(SLOTS)
                .insert_one(doc! {"_id": slot_key(user, slot), "conversation_id": conversation})
                .await;
            match inserted {
                Ok(_) => break,
                // Taken by another membership of this user: the next one.
                Err(e) if is_duplicate(&e) => slot += 1,
                Err(e) => return Err(unavailable(e)),
            }
        }
        let slot_bson = Bson::Int64(i64::try_from(slot).unwrap_or(i64::MAX));
        let next = Bson::Int64(i64::try_from(slot + 1).unwrap_or(i64::MAX));
        self.upsert_by_id(
            PAIRS,
            &pair,
            doc! {"$set": {"member": true, "slot": slot_bson}},
        )
        .await?;
        self.upsert_by_id(SLOTS, &hint_key(user), doc! {"$max": {"next": next}})
            .await
    }

    /// Marks `user` as out of `conversation`. Best effort: the conversation
    /// no longer names the user, which every reader checks.
    pub(super) async fn remove_membership(
        &self,
        user: &str,
        conversation: &str,
    ) -> Result<(), StoreError> {
        self.coll(PAIRS)
            .update_one(
                doc! {"_id": pair_key(user, conversation)},
                doc! {"$set": {"member": false}},
            )
            .await
            .map_err(unavailable)?;
        self.coll(LEGACY)
            .update_one(
                doc! {"_id": user},
                doc! {"$pull": {"conversations": conversation}},
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
