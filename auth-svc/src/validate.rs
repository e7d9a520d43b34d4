//! Registration input rules, checked before anything is hashed or stored.

use parley::ApiError;

pub const MAX_DISPLAY_NAME: usize = 64;

/// 3–32 characters of letters, digits, `_`, `.` and `-` (and, like every
/// user-visible name, nothing invisible: [`parley::names`]).
pub fn username(raw: &str) -> Result<String, ApiError> {
    parley::names::no_invisible(raw, "username")?;
    let ok = (3..=32).contains(&raw.len())
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(ApiError::invalid(
            "username must be 3-32 characters of letters, digits, '_', '.' or '-'",
        ))
    }
}

/// A plausible address, lower-cased: one `@`, something on each side, no
/// spaces, at most 254 bytes.
pub fn email(raw: &str) -> Result<String, ApiError> {
    let email = raw.trim().to_lowercase();
    let ok = email.len() <= 254
        && !email.chars().any(char::is_whitespace)
        && matches!(email.split_once('@'), Some((local, domain))
            if !local.is_empty() && domain.contains('.') && !domain.contains('@')
                && !domain.starts_with('.') && !domain.ends_with('.'));
    if ok {
        Ok(email)
    } else {
        Err(ApiError::invalid("email is not a valid address"))
    }
}

/// 8–128 characters.
pub fn password(raw: &str) -> Result<(), ApiError> {
    let len = raw.chars().count();
    if (8..=128).contains(&len) {
        Ok(())
    } else {
        Err(ApiError::invalid("password must be 8-128 characters"))
    }
}

/// The username when absent or empty; else a user-visible name
/// ([`parley::names::visible_name`]): trimmed, not blank, at most 64
/// characters, nothing invisible or direction-changing.
pub fn display_name(raw: &str, username: &str) -> Result<String, ApiError> {
    if raw.is_empty() {
        return Ok(username.to_owned());
    }
    parley::names::visible_name(raw, "displayName", MAX_DISPLAY_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        assert!(username("john_doe").is_ok());
        assert!(username("$ne").is_err());
        assert!(username("ab").is_err());
        assert_eq!(email(" John@Example.com ").unwrap(), "john@example.com");
        for bad in ["john", "@x.com", "a@b", "a b@c.com", "a@@b.com"] {
            assert!(email(bad).is_err(), "{bad}");
        }
        assert!(password("short").is_err());
        assert!(password("password123").is_ok());
        assert_eq!(display_name("", "john").unwrap(), "john");
        assert!(display_name(&"x".repeat(65), "john").is_err());
        assert_eq!(display_name(" Zoë ", "john").unwrap(), "Zoë");
        for bad in ["   ", "\u{200B}", "Alice\u{202E}gnp.exe", "a\u{7}"] {
            assert!(display_name(bad, "john").is_err(), "{bad:?}");
        }
        let why = username("ab\u{202E}cd").unwrap_err();
        assert!(why.message.contains("U+202E"), "{}", why.message);
    }
}
