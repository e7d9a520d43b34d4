//! The users and conversations of a run: users in a ring of 1:1
//! conversations (each with the next), plus groups of overlapping members
//! made with `create_group`, and how many devices each user has.

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use parley::ids::{ConversationId, UserId};
use parley_server::client::{User, join, register_many};
use serde_json::{Value, json};
use std::collections::HashMap;
use tokio_tungstenite::tungstenite::Message;

/// One conversation and its members (indexes into [`World::users`]).
#[derive(Debug, Clone)]
pub struct Conversation {
    pub id: String,
    pub members: Vec<usize>,
    /// Direct conversations are written to with `to` (the peer of each
    /// member); groups with `conversation_id`.
    pub direct: bool,
}

/// Everything the devices and the checker share about the run's shape.
#[derive(Debug)]
pub struct World {
    pub users: Vec<User>,
    /// Devices (WebSockets) per user.
    pub devices: Vec<usize>,
    pub conversations: Vec<Conversation>,
    pub by_id: HashMap<String, usize>,
}

impl World {
    /// Registers `users` users, computes the ring's direct conversation ids
    /// and creates `groups` groups of up to five members.
    pub async fn build(
        url: &str,
        prefix: &str,
        users: usize,
        max_devices: usize,
        groups: usize,
    ) -> anyhow::Result<Self> {
        if users < 2 {
            bail!("--users must be at least 2");
        }
        let registered = register_many(url, prefix, users).await?;
        let mut conversations = Vec::new();
        let pairs = if users == 2 { 1 } else { users };
        for a in 0..pairs {
            let b = (a + 1) % users;
            let id = ConversationId::direct(
                &UserId::parse(&registered[a].id)?,
                &UserId::parse(&registered[b].id)?,
            );
            conversations.push(Conversation {
                id: id.into_string(),
                members: vec![a, b],
                direct: true,
            });
        }
        for g in 0..groups {
            let first = (g * 3) % users;
            let members: Vec<usize> = (0..5.min(users)).map(|k| (first + k) % users).collect();
            let id = create_group(url, &registered, &members, g).await?;
            conversations.push(Conversation {
                id,
                members,
                direct: false,
            });
        }
        let by_id = conversations
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id.clone(), i))
            .collect();
        Ok(Self {
            devices: (0..users).map(|u| 1 + u % max_devices.max(1)).collect(),
            users: registered,
            conversations,
            by_id,
        })
    }

    /// The conversations `user` is a member of.
    pub fn conversations_of(&self, user: usize) -> Vec<usize> {
        (0..self.conversations.len())
            .filter(|&c| self.conversations[c].members.contains(&user))
            .collect()
    }

    /// The index of the user with this id.
    pub fn user_index(&self, id: &str) -> Option<usize> {
        self.users.iter().position(|u| u.id == id)
    }

    /// Who reacts to a message of `sender` in conversation `c`: the member
    /// after the sender in the member list.
    pub fn reactor(&self, c: usize, sender: usize) -> Option<usize> {
        let members = &self.conversations[c].members;
        let at = members.iter().position(|&m| m == sender)?;
        Some(members[(at + 1) % members.len()])
    }

    /// Total devices.
    pub fn device_count(&self) -> usize {
        self.devices.iter().sum()
    }
}

/// `create_group` from the first member; answers the group's id.
async fn create_group(
    url: &str,
    users: &[User],
    members: &[usize],
    g: usize,
) -> anyhow::Result<String> {
    let mut ws = join(url, &users[members[0]].token).await?;
    let others: Vec<&str> = members[1..].iter().map(|&m| users[m].id.as_str()).collect();
    let frame = json!({"type": "create_group", "ref": "create", "name": format!("torture {g}"), "members": others});
    ws.send(Message::Text(frame.to_string().into())).await?;
    while let Some(frame) = ws.next().await {
        if let Message::Text(t) = frame? {
            let v: Value = serde_json::from_str(&t)?;
            match (v["type"].as_str(), v["ref"].as_str()) {
                (Some("ack"), Some("create")) => {
                    let id = v["conversation"]["id"].as_str().context("no group id")?;
                    return Ok(id.to_owned());
                }
                (Some("error"), _) => bail!("create_group refused: {v}"),
                _ => {}
            }
        }
    }
    bail!("closed before the group was created")
}
