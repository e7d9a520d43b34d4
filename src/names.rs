//! User-visible names: display names, usernames, group names. One rule for
//! all of them, so no name can look like something it is not.
//!
//! A name is trimmed and must then be non-empty and short, and hold no
//! character that renders as nothing or changes how the text around it is
//! laid out: control characters (Unicode category Cc), format characters
//! (Cf: the bidi controls U+202A–U+202E, U+2066–U+2069, U+200E, U+200F,
//! U+061C, the zero-width U+200B–U+200D and U+2060, the BOM U+FEFF, soft
//! hyphens, tags…), line and paragraph separators (Zl, Zp) and the Hangul
//! fillers that fonts draw blank. `Alice` + U+202E + `gnp.exe` would show
//! as `Aliceexe.png`; a name of only U+200B shows as nobody.

use crate::ApiError;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// Letters that Unicode classes as letters but fonts draw as blank space.
const BLANK_LETTERS: [char; 4] = ['\u{115F}', '\u{1160}', '\u{3164}', '\u{FFA0}'];

/// Why `c` may not be part of a name, if it may not.
pub fn refusal(c: char) -> Option<&'static str> {
    match c {
        '\u{202A}'..='\u{202E}'
        | '\u{2066}'..='\u{2069}'
        | '\u{200E}'
        | '\u{200F}'
        | '\u{061C}' => Some("a bidirectional control character"),
        '\u{200B}'..='\u{200D}' | '\u{2060}' => Some("a zero-width character"),
        '\u{FEFF}' => Some("a byte order mark"),
        c if BLANK_LETTERS.contains(&c) => Some("a blank filler character"),
        c => match c.general_category() {
            GeneralCategory::Control => Some("a control character"),
            GeneralCategory::Format => Some("an invisible format character"),
            GeneralCategory::LineSeparator | GeneralCategory::ParagraphSeparator => {
                Some("a line break")
            }
            _ => None,
        },
    }
}

/// The trimmed name, or `invalid` saying why not: blank after trimming,
/// over `max_chars` characters, or holding a character [`refusal`] names.
/// `what` names the field in the message (`displayName`, `a group name`).
pub fn visible_name(raw: &str, what: &str, max_chars: usize) -> Result<String, ApiError> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(ApiError::invalid(format!("{what} must not be blank")));
    }
    if name.chars().count() > max_chars {
        return Err(ApiError::invalid(format!(
            "{what} must be at most {max_chars} characters"
        )));
    }
    no_invisible(name, what)?;
    Ok(name.to_owned())
}

/// `invalid`, naming the character and why, when `name` holds one that
/// [`refusal`] names.
pub fn no_invisible(name: &str, what: &str) -> Result<(), ApiError> {
    match name.chars().find_map(|c| refusal(c).map(|why| (c, why))) {
        Some((c, why)) => Err(ApiError::invalid(format!(
            "{what} must not contain {why} (U+{:04X}): names may hold no invisible or \
             direction-changing characters",
            u32::from(c)
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_pass_trimmed() {
        for ok in [
            "Alice",
            "  Zoë  ",
            "李小龍",
            "مرحبا",
            "Bob 🚀",
            "❤️ fans",
            "O'Brien-Smith",
        ] {
            assert_eq!(visible_name(ok, "name", 64).unwrap(), ok.trim(), "{ok}");
        }
    }

    #[test]
    fn invisible_and_direction_changing_names_are_refused() {
        let bad = [
            "\u{200B}",
            "\u{202E}",
            "Alice\u{202E}gnp.exe",
            "a\u{202A}b",
            "a\u{2066}b",
            "a\u{2069}b",
            "a\u{200E}b",
            "a\u{200F}b",
            "a\u{061C}b",
            "a\u{200C}b",
            "a\u{200D}b",
            "a\u{2060}b",
            "\u{FEFF}Alice",
            "a\u{00AD}b",
            "a\u{E0041}b",
            "a\u{7}b",
            "a\u{1B}[31mb",
            "a\u{85}b",
            "a\u{2028}b",
            "\u{3164}",
            "   ",
            "",
        ];
        for name in bad {
            let err = visible_name(name, "name", 64).unwrap_err();
            assert_eq!(err.code, crate::ErrorCode::Invalid, "{name:?}");
        }
        let why = visible_name("Alice\u{202E}gnp.exe", "displayName", 64).unwrap_err();
        assert!(why.message.contains("U+202E"), "{}", why.message);
        assert!(why.message.contains("bidirectional"), "{}", why.message);
        assert!(visible_name(&"x".repeat(65), "name", 64).is_err());
    }
}
