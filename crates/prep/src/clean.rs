//! Text cleaning exactly as open_clip's `_clean_lower`:
//! `whitespace_clean(basic_clean(text)).lower()` where
//! `basic_clean = strip(html.unescape(html.unescape(ftfy.fix_text(text))))`.
//!
//! ftfy is reproduced for the fixes that act on valid Unicode text (see docs/preprocessing.md);
//! its mojibake repair (`fix_encoding`), a statistical heuristic, is not.

use crate::tables::{py_isspace, tables};
use regex::Regex;
use std::borrow::Cow;
use std::sync::OnceLock;
use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};

/// ftfy's `fix_text` splits text into segments of at most this many code points.
const MAX_DECODE_LENGTH: usize = 1_000_000;

/// The whole open_clip cleaning: ftfy, HTML unescape twice, strip, whitespace collapse, lowercase.
pub fn clean(text: &str) -> String {
    if is_plain_ascii(text) {
        // Nothing in ftfy or html.unescape touches printable ASCII without '&'.
        return collapse_lower(text);
    }
    let fixed = fix_text(text);
    let once = html_unescape(&fixed);
    let twice = html_unescape(&once);
    collapse_lower(&twice)
}

fn is_plain_ascii(text: &str) -> bool {
    text.bytes()
        .all(|b| (b == b' ' || b.is_ascii_graphic()) && b != b'&')
}

/// `" ".join(text.split()).lower()` (split on Python's whitespace; `strip` is implied).
fn collapse_lower(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split(py_isspace).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    if out.is_ascii() {
        out.make_ascii_lowercase();
        out
    } else {
        // Rust's to_lowercase applies the full mappings and the final-sigma rule, as str.lower.
        out.to_lowercase()
    }
}

/// `ftfy.fix_text` with the default configuration, minus `fix_encoding`.
pub fn fix_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    // ftfy turns HTML unescaping off for the rest of the text once a segment contains '<'.
    let mut unescape = true;
    let mut rest = text;
    while !rest.is_empty() {
        let mut end = rest.find('\n').map_or(rest.len(), |i| i + 1);
        if let Some((cut, _)) = rest[..end].char_indices().nth(MAX_DECODE_LENGTH) {
            end = cut;
        }
        let segment = &rest[..end];
        if unescape && segment.contains('<') {
            unescape = false;
        }
        out.push_str(&fix_segment(segment, unescape));
        rest = &rest[end..];
    }
    out
}

/// ftfy's `fix_and_explain`: apply the fixers in order until the text stops changing.
fn fix_segment(segment: &str, unescape: bool) -> String {
    let mut text = segment.to_string();
    loop {
        let mut t: Cow<str> = Cow::Borrowed(&text);
        if unescape {
            t = own(t, ftfy_unescape_html);
        }
        t = own(t, fix_c1_controls);
        t = own(t, |s| {
            translate(s, |c| tables().ligatures.get(&c).map(String::as_str))
        });
        t = own(t, |s| {
            translate(s, |c| tables().width.get(&c).map(String::as_str))
        });
        t = own(t, uncurl_quotes);
        t = own(t, fix_line_breaks);
        t = own(t, remove_terminal_escapes);
        t = own(t, |s| {
            let tab = tables();
            if s.chars().any(|c| tab.control.contains(&c)) {
                Cow::Owned(s.chars().filter(|c| !tab.control.contains(c)).collect())
            } else {
                Cow::Borrowed(s)
            }
        });
        t = own(t, nfc);
        if t == text.as_str() {
            return text;
        }
        text = t.into_owned();
    }
}

/// Applies `f` to a `Cow`, keeping it borrowed when `f` changed nothing.
fn own<'a>(t: Cow<'a, str>, f: impl for<'b> Fn(&'b str) -> Cow<'b, str>) -> Cow<'a, str> {
    match t {
        Cow::Borrowed(s) => f(s),
        Cow::Owned(s) => match f(&s) {
            Cow::Borrowed(_) => Cow::Owned(s),
            Cow::Owned(n) => Cow::Owned(n),
        },
    }
}

/// `str.translate` with a character -> replacement map.
fn translate<'a>(s: &'a str, map: impl Fn(char) -> Option<&'static str>) -> Cow<'a, str> {
    if s.is_ascii() || !s.chars().any(|c| map(c).is_some()) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match map(c) {
            Some(r) => out.push_str(r),
            None => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn fix_c1_controls(s: &str) -> Cow<'_, str> {
    let c1 = |c: char| ('\u{80}'..='\u{9f}').contains(&c);
    if !s.chars().any(c1) {
        return Cow::Borrowed(s);
    }
    let tab = tables();
    Cow::Owned(
        s.chars()
            .map(|c| if c1(c) { tab.c1[c as usize - 0x80] } else { c })
            .collect(),
    )
}

fn uncurl_quotes(s: &str) -> Cow<'_, str> {
    let tab = tables();
    let quote = |c: char| {
        if tab.double_quote.binary_search(&c).is_ok() {
            Some('"')
        } else if tab.single_quote.binary_search(&c).is_ok() {
            Some('\'')
        } else {
            None
        }
    };
    if s.is_ascii() || !s.chars().any(|c| quote(c).is_some()) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(s.chars().map(|c| quote(c).unwrap_or(c)).collect())
}

fn fix_line_breaks(s: &str) -> Cow<'_, str> {
    if !s.contains(['\r', '\u{2028}', '\u{2029}', '\u{85}']) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.replace("\r\n", "\n")
            .replace(['\r', '\u{2028}', '\u{2029}', '\u{85}'], "\n"),
    )
}

fn remove_terminal_escapes(s: &str) -> Cow<'_, str> {
    if !s.contains('\x1b') {
        return Cow::Borrowed(s);
    }
    static ANSI: OnceLock<Regex> = OnceLock::new();
    // Python's `\d` in a str pattern is any Unicode decimal digit, as Rust's.
    let re = ANSI.get_or_init(|| Regex::new(r"\x1b\[((?:\d|;)*)([a-zA-Z])").expect("valid regex"));
    re.replace_all(s, "")
}

fn nfc(s: &str) -> Cow<'_, str> {
    if s.is_ascii() || is_nfc_quick(s.chars()) == IsNormalized::Yes {
        return Cow::Borrowed(s);
    }
    let n: String = s.nfc().collect();
    if n == s {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(n)
    }
}

/// ftfy's `unescape_html`: only entities ending in ';' (plus upper-cased Latin ones).
fn ftfy_unescape_html(s: &str) -> Cow<'_, str> {
    if !s.contains('&') {
        return Cow::Borrowed(s);
    }
    static ENTITY: OnceLock<Regex> = OnceLock::new();
    let re = ENTITY.get_or_init(|| Regex::new(r"&#?[0-9A-Za-z]{1,24};").expect("valid regex"));
    re.replace_all(s, |caps: &regex::Captures| {
        let m = &caps[0];
        if let Some(v) = tables().ftfy_entities.get(m) {
            v.clone()
        } else if m.starts_with("&#") {
            let u = html_unescape(m);
            if u.contains(';') {
                m.to_string()
            } else {
                u.into_owned()
            }
        } else {
            m.to_string()
        }
    })
}

/// Python's `html.unescape` (HTML5 rules: named references with and without ';',
/// longest-prefix matching, remapped and invalid numeric references).
pub fn html_unescape(s: &str) -> Cow<'_, str> {
    if !s.contains('&') {
        return Cow::Borrowed(s);
    }
    static CHARREF: OnceLock<Regex> = OnceLock::new();
    let re = CHARREF.get_or_init(|| {
        Regex::new(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\x0c <&#;]{1,32};?)")
            .expect("valid regex")
    });
    re.replace_all(s, |caps: &regex::Captures| replace_charref(&caps[1]))
}

fn replace_charref(s: &str) -> String {
    let tab = tables();
    if let Some(num) = s.strip_prefix('#') {
        let (digits, radix) = match num.strip_prefix(['x', 'X']) {
            Some(hex) => (hex, 16),
            None => (num, 10),
        };
        let digits = digits.trim_end_matches(';');
        // Python parses arbitrarily large integers; saturating keeps "too large" too large.
        let n = digits.chars().fold(0u64, |acc, c| {
            acc.saturating_mul(radix)
                .saturating_add(u64::from(c.to_digit(radix as u32).unwrap_or(0)))
        });
        if let Some(v) = u32::try_from(n)
            .ok()
            .and_then(|n| tab.invalid_charrefs.get(&n))
        {
            return v.clone();
        }
        if (0xD800..=0xDFFF).contains(&n) || n > 0x10FFFF {
            return "\u{FFFD}".into();
        }
        if tab.invalid_codepoints.contains(&(n as u32)) {
            return String::new();
        }
        return char::from_u32(n as u32).map_or_else(|| "\u{FFFD}".into(), String::from);
    }
    if let Some(v) = tab.html5.get(s) {
        return v.clone();
    }
    let chars: Vec<(usize, char)> = s.char_indices().collect();
    for x in (2..chars.len()).rev() {
        let cut = chars[x].0;
        if let Some(v) = tab.html5.get(&s[..cut]) {
            return format!("{v}{}", &s[cut..]);
        }
    }
    format!("&{s}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isspace_fast_path_agrees_with_python_table() {
        for b in 0u8..128 {
            let c = b as char;
            assert_eq!(
                py_isspace(c),
                tables().isspace.binary_search(&c).is_ok(),
                "{b:#x}"
            );
        }
    }

    #[test]
    fn html_unescape_edge_cases() {
        assert_eq!(html_unescape("&amp;amp;"), "&amp;");
        assert_eq!(html_unescape("&copy 2024"), "\u{a9} 2024");
        assert_eq!(html_unescape("&notit;"), "\u{ac}it;");
        assert_eq!(html_unescape("&#x80;"), "\u{20ac}");
        assert_eq!(html_unescape("&#99999999999999999999999;"), "\u{fffd}");
        assert_eq!(html_unescape("&#1;"), "");
        assert_eq!(html_unescape("&bogus;"), "&bogus;");
    }

    #[test]
    fn ftfy_fixes() {
        assert_eq!(
            fix_text("ﬂuﬃest “quotes” ＬＯＵＤ"),
            "fluffiest \"quotes\" LOUD"
        );
        assert_eq!(fix_text("a\r\nb\rc\u{2028}"), "a\nb\nc\n");
        assert_eq!(fix_text("\x1b[36;44mblue\x1b[0m"), "blue");
        assert_eq!(fix_text("e\u{301}"), "\u{e9}");
        // '<' in a segment turns ftfy's own unescaping off from there on.
        assert_eq!(fix_text("&lt;b&gt;"), "<b>");
        assert_eq!(fix_text("<b>&amp;"), "<b>&amp;");
    }

    #[test]
    fn clean_lowercases_and_collapses() {
        assert_eq!(clean("  A  Photo\tOF\u{3000}a DOG "), "a photo of a dog");
        assert_eq!(clean("ΌΣΟΣ"), "όσος");
    }
}
