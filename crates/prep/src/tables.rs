//! Character tables of ftfy 6, Python's `html` module and `str.isspace`, generated from
//! the Python implementations by `scripts/reference/prep_reference.py tables` so the text
//! cleaner applies exactly the same mappings.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

const TEXT: &str = include_str!("../data/text_tables.txt");

pub(crate) struct Tables {
    /// `html.entities.html5`: names (with or without the trailing `;`) -> text.
    pub html5: HashMap<String, String>,
    /// ftfy's `HTML_ENTITIES`: `&name;` (plus upper-cased variants) -> text.
    pub ftfy_entities: HashMap<String, String>,
    /// `html._invalid_charrefs`: numeric references the HTML5 spec remaps.
    pub invalid_charrefs: HashMap<u32, String>,
    /// `html._invalid_codepoints`: numeric references that unescape to nothing.
    pub invalid_codepoints: HashSet<u32>,
    /// ftfy's `WIDTH_MAP` (full/half-width forms, U+3000).
    pub width: HashMap<char, String>,
    /// ftfy's `LIGATURES`.
    pub ligatures: HashMap<char, String>,
    /// ftfy's `CONTROL_CHARS` (removed).
    pub control: HashSet<char>,
    /// U+0080..U+009F decoded as sloppy windows-1252 (ftfy's `fix_c1_controls`).
    pub c1: [char; 32],
    /// Code points where Python's `str.isspace()` is true (used by strip/split).
    pub isspace: Vec<char>,
    pub single_quote: Vec<char>,
    pub double_quote: Vec<char>,
}

fn parse_chars(hex: &str) -> String {
    hex.split_whitespace()
        .map(|h| {
            u32::from_str_radix(h, 16)
                .ok()
                .and_then(char::from_u32)
                .expect("text_tables.txt holds valid code points")
        })
        .collect()
}

fn parse_cp(hex: &str) -> u32 {
    u32::from_str_radix(hex, 16).expect("text_tables.txt holds hex keys")
}

fn parse() -> Tables {
    let mut t = Tables {
        html5: HashMap::new(),
        ftfy_entities: HashMap::new(),
        invalid_charrefs: HashMap::new(),
        invalid_codepoints: HashSet::new(),
        width: HashMap::new(),
        ligatures: HashMap::new(),
        control: HashSet::new(),
        c1: ['\0'; 32],
        isspace: Vec::new(),
        single_quote: Vec::new(),
        double_quote: Vec::new(),
    };
    let mut section = "";
    for line in TEXT.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('@') {
            section = name;
            continue;
        }
        let (key, value) = line.split_once('\t').unwrap_or((line, ""));
        let ch = || char::from_u32(parse_cp(key)).expect("valid code point");
        match section {
            "html5" => {
                t.html5.insert(key.to_string(), parse_chars(value));
            }
            "ftfy_entities" => {
                t.ftfy_entities.insert(key.to_string(), parse_chars(value));
            }
            "invalid_charrefs" => {
                t.invalid_charrefs.insert(parse_cp(key), parse_chars(value));
            }
            "invalid_codepoints" => {
                t.invalid_codepoints.insert(parse_cp(key));
            }
            "width" => {
                t.width.insert(ch(), parse_chars(value));
            }
            "ligatures" => {
                t.ligatures.insert(ch(), parse_chars(value));
            }
            "control" => {
                t.control.insert(ch());
            }
            "c1" => {
                let v = parse_chars(value);
                t.c1[(parse_cp(key) - 0x80) as usize] = v.chars().next().expect("one char");
            }
            "isspace" => t.isspace.push(ch()),
            "single_quote" => t.single_quote.push(ch()),
            "double_quote" => t.double_quote.push(ch()),
            other => panic!("text_tables.txt: unknown section {other}"),
        }
    }
    t
}

pub(crate) fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(parse)
}

/// Python's `str.isspace()` for one character.
pub(crate) fn py_isspace(c: char) -> bool {
    // Fast path: every ASCII answer is known without the table.
    if c.is_ascii() {
        return matches!(
            c,
            '\t' | '\n' | '\x0b' | '\x0c' | '\r' | '\x1c'..='\x1f' | ' '
        );
    }
    tables().isspace.binary_search(&c).is_ok()
}
