//! Names that hide what they are: invisible, direction-changing or blank.
//! Each is refused with `invalid` saying why, wherever a name is set.

use crate::helpers::*;
use serde_json::json;

/// (what, name): each must be refused as a display name and group name.
const HIDDEN: [(&str, &str); 14] = [
    ("only a zero-width space", "\u{200B}"),
    ("only a right-to-left override", "\u{202E}"),
    ("an override hiding an extension", "Alice\u{202E}gnp.exe"),
    ("a left-to-right embedding", "a\u{202A}b"),
    ("a right-to-left isolate", "a\u{2067}b"),
    ("a left-to-right mark", "Bob\u{200E}"),
    ("an Arabic letter mark", "a\u{061C}b"),
    ("a zero-width joiner", "a\u{200D}b"),
    ("a word joiner", "a\u{2060}b"),
    ("a byte order mark", "\u{FEFF}Bob"),
    ("a soft hyphen (format)", "a\u{00AD}b"),
    ("an escape (control)", "a\u{1B}[31mb"),
    ("a line separator", "a\u{2028}b"),
    ("only spaces", "   "),
];

#[tokio::test]
async fn display_names_that_hide_what_they_are_are_refused() {
    let app = spawn_app().await;
    for (i, (what, name)) in HIDDEN.iter().enumerate() {
        let (status, body) = app
            .post(
                "/api/auth/register",
                &json!({
                    "username": format!("hidden{i}"),
                    "email": format!("hidden{i}@example.com"),
                    "password": "password123",
                    "displayName": name,
                }),
            )
            .await;
        assert_eq!(status, 400, "{what}: {body}");
        assert_eq!(body["error"]["code"], "invalid", "{what}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("displayName"), "{what}: {message}");
    }
    // The reason names the character.
    let (_, body) = app
        .post(
            "/api/auth/register",
            &json!({"username": "mallory", "email": "m@example.com",
                    "password": "password123", "displayName": "Alice\u{202E}gnp.exe"}),
        )
        .await;
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("U+202E"), "{message}");
    // A username with one is refused too.
    let (status, body) = app
        .post(
            "/api/auth/register",
            &json!({"username": "ali\u{202E}ce", "email": "a@example.com",
                    "password": "password123"}),
        )
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("invalid")),
        "{body}"
    );

    // None of them was stored; a plain Unicode name is, trimmed.
    let zoe = app
        .post(
            "/api/auth/register",
            &json!({"username": "zoe", "email": "zoe@example.com",
                    "password": "password123", "displayName": "  Zoë 李 🚀 "}),
        )
        .await;
    assert_eq!(zoe.0, 201, "{}", zoe.1);
    assert_eq!(zoe.1["user"]["display_name"], "Zoë 李 🚀");
    let token = zoe.1["token"].as_str().unwrap_or_default();
    let (status, users) = app.get("/api/users?q=", Some(token)).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = users["users"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|u| u["username"].as_str())
        .collect();
    assert_eq!(names, ["zoe"]);
}

#[tokio::test]
async fn group_names_that_hide_what_they_are_are_refused_on_create_and_rename() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let mut a = app.connect(&alice).await;
    for (what, name) in HIDDEN {
        let reply = ask(&mut a, json!({"type": "create_group", "name": name})).await;
        assert_eq!(error_code(&reply), "invalid", "{what}: {reply}");
        let message = reply["message"].as_str().unwrap_or_default();
        assert!(message.contains("group name"), "{what}: {message}");
    }
    let created = acked(&mut a, json!({"type": "create_group", "name": " Team "})).await;
    let group = created["conversation"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    for (what, name) in HIDDEN {
        let reply = ask(
            &mut a,
            json!({"type": "rename_group", "conversation_id": group, "name": name}),
        )
        .await;
        assert_eq!(error_code(&reply), "invalid", "{what}: {reply}");
    }
    // Only the plain group exists, under its plain name.
    let (status, list) = app.get("/api/conversations", Some(&alice.token)).await;
    assert_eq!(status, 200);
    let groups: Vec<(&str, &str)> = list["conversations"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["id"].as_str().unwrap_or(""),
                c["name"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(groups, [(group.as_str(), "Team")]);
}
