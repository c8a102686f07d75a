//! Display names as a server shows them: without control, bidi and invisible characters,
//! trimmed and cut to [`MAX_DISPLAY_NAME_CHARS`], so that a name from a token, the admin
//! API or the store cannot reorder the text around it, hide itself or fill a screen.

use crate::ids::UserId;

/// Longest display name, in Unicode scalar values after cleaning. Longer names are cut.
pub const MAX_DISPLAY_NAME_CHARS: usize = 64;

/// Whether `c` is removed from a display name: control characters (Unicode `Cc`, so
/// newlines and tabs too), the bidi embeddings, overrides, isolates and marks (which can
/// make "alice" read as another name, or reverse the text after it), the zero-width and
/// invisible format characters (which make two different names look the same), and the
/// line and paragraph separators (which forge a second line).
fn is_removed(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            // LEFT-TO-RIGHT / RIGHT-TO-LEFT MARK, ARABIC LETTER MARK
            '\u{200E}' | '\u{200F}' | '\u{061C}'
            // LRE, RLE, PDF, LRO, RLO
            | '\u{202A}'..='\u{202E}'
            // LRI, RLI, FSI, PDI
            | '\u{2066}'..='\u{2069}'
            // ZERO WIDTH SPACE, NON-JOINER, JOINER; WORD JOINER; the invisible operators;
            // the deprecated format characters; BYTE ORDER MARK (zero-width no-break space)
            | '\u{200B}'..='\u{200D}'
            | '\u{2060}'..='\u{2064}'
            | '\u{206A}'..='\u{206F}'
            | '\u{FEFF}'
            // LINE SEPARATOR, PARAGRAPH SEPARATOR
            | '\u{2028}' | '\u{2029}'
        )
}

/// `raw` cleaned for display: the characters above removed, whitespace trimmed, cut to
/// [`MAX_DISPLAY_NAME_CHARS`] (and trimmed again, so that a cut never leaves a trailing
/// space). `None` when nothing is left.
pub fn clean(raw: &str) -> Option<String> {
    let cleaned: String = raw.chars().filter(|c| !is_removed(*c)).collect();
    let cut: String = cleaned.trim().chars().take(MAX_DISPLAY_NAME_CHARS).collect();
    let name = cut.trim_end();
    (!name.is_empty()).then(|| name.to_owned())
}

/// The name to show for `user`: `raw` cleaned, or the user id when nothing is left (the
/// id cleaned the same way, or as it is if it is nothing but removed characters).
pub fn display_name(raw: &str, user: &UserId) -> String {
    clean(raw).unwrap_or_else(|| fallback(user))
}

/// The name of a user who has none: their id, cleaned like a name where that leaves
/// anything.
pub fn fallback(user: &UserId) -> String {
    clean(user.as_str()).unwrap_or_else(|| user.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> UserId {
        UserId::new(id).expect("valid user id")
    }

    #[test]
    fn an_ordinary_name_is_kept_as_it_is() {
        for name in ["Alice", "Ana María", "李小龙", "Zoë 🚀", "O'Brien-Smith"] {
            assert_eq!(clean(name).as_deref(), Some(name));
        }
    }

    #[test]
    fn control_bidi_and_invisible_characters_are_removed() {
        assert_eq!(clean("\u{202E}evil\u{0007}").as_deref(), Some("evil"));
        assert_eq!(clean("ali\u{200B}ce").as_deref(), Some("alice"));
        assert_eq!(clean("a\nb\tc\r\u{0}d\u{7F}e\u{85}").as_deref(), Some("abcde"));
        let every_removed: String = [
            '\u{200E}', '\u{200F}', '\u{061C}', '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}',
            '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}', '\u{200B}', '\u{200C}', '\u{200D}', '\u{FEFF}',
            '\u{2060}', '\u{2028}', '\u{2029}', '\u{1B}',
        ]
        .iter()
        .flat_map(|c| [*c, 'x'])
        .collect();
        assert_eq!(clean(&every_removed).as_deref(), Some("x".repeat(20).as_str()));
    }

    #[test]
    fn whitespace_is_trimmed_also_when_revealed_by_removal() {
        assert_eq!(clean("  Bob  ").as_deref(), Some("Bob"));
        assert_eq!(clean("\u{202E} Bob \u{200F}").as_deref(), Some("Bob"));
        assert_eq!(clean("Bob\u{3000}").as_deref(), Some("Bob"));
    }

    #[test]
    fn a_long_name_is_cut_to_64_characters_without_a_trailing_space() {
        let long = format!("\u{202E}evil\u{0007}{}", "é".repeat(500));
        let name = clean(&long).expect("a name is left");
        assert_eq!(name.chars().count(), MAX_DISPLAY_NAME_CHARS);
        assert_eq!(name, format!("evil{}", "é".repeat(60)));
        let spaced = format!("{} b", "a".repeat(63));
        assert_eq!(clean(&spaced), Some("a".repeat(63)));
    }

    #[test]
    fn an_empty_result_falls_back_to_the_user_id() {
        for raw in ["", "   ", "\u{202E}\u{200B}\u{0007}", "\n\t"] {
            assert_eq!(clean(raw), None, "{raw:?}");
            assert_eq!(display_name(raw, &user("u7")), "u7");
        }
        assert_eq!(display_name(" Ada ", &user("u7")), "Ada");
    }

    #[test]
    fn the_user_id_fallback_is_cleaned_too_where_that_leaves_anything() {
        assert_eq!(fallback(&user("\u{202E}mallory")), "mallory");
        assert_eq!(fallback(&user(&"x".repeat(200))), "x".repeat(64));
        assert_eq!(fallback(&user("\u{200B}")), "\u{200B}");
    }
}
