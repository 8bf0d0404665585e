//! Normalised views of a text, each byte of which maps back to the original bytes it came from.
//!
//! Rules never match the raw text: they match a *view* in which obfuscations are undone
//! (fullwidth and mathematical letters, accents and zalgo marks, zero-width and tag
//! characters, Cyrillic and Greek lookalikes, leetspeak, letters spaced out with separators).
//! A match in a view maps back to a byte range of the original text, so redaction replaces
//! exactly the original bytes, and never splits a UTF-8 character.
//!
//! Every view is built character by character (no composition across characters), so the
//! view of a slice equals the slice of the view away from its edges. The streaming output
//! guard depends on that: it rescans a window of the stream, not the whole text.

use std::cell::OnceCell;

use unicode_normalization::char::{decompose_compatible, is_combining_mark};

/// A transformed copy of an original text with a byte-level map back to it.
#[derive(Debug, Default)]
pub(crate) struct View {
    pub text: String,
    /// For every byte of `text`: the start of the original character it came from.
    start: Vec<u32>,
    /// For every byte of `text`: the end of the original character it came from.
    end: Vec<u32>,
}

impl View {
    fn with_capacity(n: usize) -> Self {
        View {
            text: String::with_capacity(n),
            start: Vec::with_capacity(n),
            end: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, c: char, start: u32, end: u32) {
        self.text.push(c);
        for _ in 0..c.len_utf8() {
            self.start.push(start);
            self.end.push(end);
        }
    }

    /// The original byte range of the view range `a..b` (`a < b`, both char boundaries).
    pub fn to_orig(&self, a: usize, b: usize) -> (usize, usize) {
        debug_assert!(a < b);
        (self.start[a] as usize, self.end[b - 1] as usize)
    }

    /// The first view byte whose original character starts at or after `pos`.
    pub fn view_pos(&self, pos: usize) -> usize {
        self.start.partition_point(|&s| (s as usize) < pos)
    }

    /// The original range of each char of the view, in order.
    fn chars(&self) -> impl Iterator<Item = (char, u32, u32)> + '_ {
        self.text
            .char_indices()
            .map(|(i, c)| (c, self.start[i], self.end[i]))
    }

    /// A view derived char by char from this one; `f` pushes zero or more chars per char.
    fn derive(&self, mut f: impl FnMut(char, &mut dyn FnMut(char))) -> View {
        let mut out = View::with_capacity(self.text.len());
        for (c, s, e) in self.chars() {
            f(c, &mut |d| out.push(d, s, e));
        }
        out
    }
}

/// Characters that render as nothing: zero-width spaces and joiners, direction marks and
/// bidi overrides, word joiner and invisible operators, BOM, soft hyphen, tag characters,
/// variation selectors. Removed from every view; the injection rail reports most of them.
pub(crate) fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{180E}'
        | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{2069}'
        | '\u{FE00}'..='\u{FE0F}'
        | '\u{FEFF}'
        | '\u{E0000}'..='\u{E007F}'
        | '\u{E0100}'..='\u{E01EF}')
}

/// Latin, Greek and Cyrillic (below U+0530) plus the blocks that exist only as compatibility
/// variants of them (fullwidth, mathematical alphanumerics, enclosed and super/subscript
/// forms, letterlike symbols, ligatures). These are decomposed and lose their accents; other
/// scripts are only NFKC-normalised per character, because there marks carry meaning.
fn is_latinish(c: char) -> bool {
    (c as u32) < 0x530
        || matches!(c,
            '\u{1D00}'..='\u{1DBF}'      // phonetic extensions (small capitals)
            | '\u{1E00}'..='\u{1EFF}'    // Latin extended additional (Vietnamese)
            | '\u{2070}'..='\u{209F}'    // superscripts and subscripts
            | '\u{2100}'..='\u{218F}'    // letterlike symbols, roman numerals
            | '\u{2460}'..='\u{24FF}'    // enclosed alphanumerics
            | '\u{FB00}'..='\u{FB06}'    // ligatures
            | '\u{FF00}'..='\u{FFEF}'    // fullwidth forms
            | '\u{1D400}'..='\u{1D7FF}'  // mathematical alphanumerics
            | '\u{1F100}'..='\u{1F1FF}') // enclosed alphanumeric supplement
}

/// Cyrillic and Greek letters that look like Latin ones (the confusables that matter in
/// practice: those drawn identically in common fonts). Applied after decomposition.
fn homoglyph(c: char) -> char {
    match c {
        // Cyrillic lowercase
        'а' => 'a',
        'е' => 'e',
        'о' => 'o',
        'р' => 'p',
        'с' => 'c',
        'у' => 'y',
        'х' => 'x',
        'к' => 'k',
        'м' => 'm',
        'ѕ' => 's',
        'і' => 'i',
        'ј' => 'j',
        'ԁ' => 'd',
        'ӏ' => 'l',
        'һ' => 'h',
        'ԛ' => 'q',
        'ԝ' => 'w',
        'ѵ' => 'v',
        'ү' => 'y',
        // Cyrillic uppercase
        'А' => 'A',
        'В' => 'B',
        'Е' => 'E',
        'К' => 'K',
        'М' => 'M',
        'Н' => 'H',
        'О' => 'O',
        'Р' => 'P',
        'С' => 'C',
        'Т' => 'T',
        'Х' => 'X',
        'У' => 'Y',
        'Ѕ' => 'S',
        'І' => 'I',
        'Ј' => 'J',
        'Ӏ' => 'I',
        'Ԛ' => 'Q',
        'Ԝ' => 'W',
        'Ү' => 'Y',
        // Greek lowercase
        'α' => 'a',
        'γ' => 'y',
        'ε' => 'e',
        'ι' => 'i',
        'κ' => 'k',
        'ν' => 'v',
        'ο' => 'o',
        'ρ' => 'p',
        'τ' => 't',
        'υ' => 'u',
        'χ' => 'x',
        'ω' => 'w',
        // Greek uppercase
        'Α' => 'A',
        'Β' => 'B',
        'Ε' => 'E',
        'Ζ' => 'Z',
        'Η' => 'H',
        'Ι' => 'I',
        'Κ' => 'K',
        'Μ' => 'M',
        'Ν' => 'N',
        'Ο' => 'O',
        'Ρ' => 'P',
        'Τ' => 'T',
        'Υ' => 'Y',
        'Χ' => 'X',
        // Latin lookalikes outside ASCII
        'ı' => 'i',
        'ɡ' => 'g',
        'ɑ' => 'a',
        'ɩ' => 'i',
        'ʏ' => 'y',
        _ => c,
    }
}

/// Leetspeak and symbol substitutions folded onto one "skeleton" letter each. `l`, `1`, `|`
/// and `!` all become `i` (they are drawn alike), so "k1ll", "ki11" and "kill" share the
/// skeleton "kiii"; word lists are folded the same way before matching.
fn leet(c: char) -> char {
    match c {
        '0' => 'o',
        '1' | 'l' | '|' | '!' => 'i',
        '3' => 'e',
        '4' | '@' => 'a',
        '5' | '$' => 's',
        '7' => 't',
        _ => c,
    }
}

/// Folds one original character: compatibility decomposition and accent removal for
/// Latin-like characters, per-character NFKC for the rest, invisible characters dropped,
/// lookalikes folded. `prev_latin` tracks whether the last kept base character was
/// Latin-like, so that combining marks stacked on it (zalgo) are dropped too.
fn fold_char(c: char, prev_latin: &mut bool, out: &mut dyn FnMut(char)) {
    if is_invisible(c) {
        return;
    }
    if is_combining_mark(c) {
        if !*prev_latin {
            out(c);
        }
        return;
    }
    if c.is_ascii() {
        *prev_latin = true;
        out(c);
        return;
    }
    // Hangul syllables decompose into jamo under NFKD; keep them whole.
    if is_latinish(c) {
        *prev_latin = true;
        decompose_compatible(c, |d| {
            if !is_combining_mark(d) && !is_invisible(d) {
                out(homoglyph(d));
            }
        });
    } else {
        *prev_latin = false;
        let mut buf = ['\0'; 4];
        let mut n = 0;
        let mut overflow = false;
        decompose_compatible(c, |d| {
            if n < 4 {
                buf[n] = d;
                n += 1;
            } else {
                overflow = true;
            }
        });
        // A single-character compatibility mapping (e.g. CJK compatibility ideographs) is
        // taken; a multi-character decomposition of a non-Latin letter is kept composed,
        // which is what NFKC does for a lone character.
        if n == 1 && !overflow {
            out(homoglyph(buf[0]));
        } else {
            out(homoglyph(c));
        }
    }
}

/// Is `c` a letter or digit for the spaced-letters view?
fn is_alnum(c: char) -> bool {
    c.is_alphanumeric()
}

/// Separators that obfuscators put between the letters of a word ("k i l l", "k.i.l.l").
fn is_spacer(c: char) -> bool {
    matches!(
        c,
        ' ' | '\t' | '.' | '-' | '_' | '*' | ',' | '/' | '\\' | '+' | '~' | '\'' | '"' | '`' | '^'
    )
}

/// Removes the separators inside runs of at least three single letters separated by one to
/// three separator characters: "k i l l" -> "kill", "k.i.l.l" -> "kill", while "a man" and
/// "I am" stay as they are.
fn collapse_spaced(view: &View) -> View {
    let chars: Vec<(char, u32, u32)> = view.chars().collect();
    let n = chars.len();
    // Tokens: maximal alphanumeric runs, as (first, last) char indexes.
    let mut tokens: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while i < n {
        if is_alnum(chars[i].0) {
            let s = i;
            while i + 1 < n && is_alnum(chars[i + 1].0) {
                i += 1;
            }
            tokens.push((s, i));
        }
        i += 1;
    }
    let mut drop = vec![false; n];
    let gap = |a: (usize, usize), b: (usize, usize)| &chars[a.1 + 1..b.0];
    let gap_ok =
        |g: &[(char, u32, u32)]| (1..=3).contains(&g.len()) && g.iter().all(|c| is_spacer(c.0));
    let same = |g: &[(char, u32, u32)], h: &[(char, u32, u32)]| {
        g.len() == h.len() && g.iter().zip(h).all(|(x, y)| x.0 == y.0)
    };
    let mut t = 0;
    while t < tokens.len() {
        // Extend a run of single-letter tokens joined by the same short separator: "k.i.l.l,
        // k-i-l-l" is two spelled-out words, not one.
        let mut u = t;
        while tokens[u].0 == tokens[u].1
            && u + 1 < tokens.len()
            && tokens[u + 1].0 == tokens[u + 1].1
            && gap_ok(gap(tokens[u], tokens[u + 1]))
            && (u == t || same(gap(tokens[t], tokens[t + 1]), gap(tokens[u], tokens[u + 1])))
        {
            u += 1;
        }
        if u - t + 1 >= 3 {
            for w in t..u {
                for d in drop.iter_mut().take(tokens[w + 1].0).skip(tokens[w].1 + 1) {
                    *d = true;
                }
            }
        }
        t = u + 1;
    }
    let mut out = View::with_capacity(view.text.len());
    for (k, &(c, s, e)) in chars.iter().enumerate() {
        if !drop[k] {
            out.push(c, s, e);
        }
    }
    out
}

/// One original text and its views, built on first use and shared by all rails of a check.
pub(crate) struct Text<'a> {
    pub orig: &'a str,
    folded: OnceCell<View>,
    lower: OnceCell<View>,
    skeleton: OnceCell<View>,
    spaced: OnceCell<View>,
    spaced_cased: OnceCell<View>,
}

impl<'a> Text<'a> {
    pub fn new(orig: &'a str) -> Self {
        Text {
            orig,
            folded: OnceCell::new(),
            lower: OnceCell::new(),
            skeleton: OnceCell::new(),
            spaced: OnceCell::new(),
            spaced_cased: OnceCell::new(),
        }
    }

    /// Compatibility-folded, accents and invisible characters removed, lookalikes folded,
    /// whitespace runs as one space, case kept: what regexes, PII and secret patterns see.
    pub fn folded(&self) -> &View {
        self.folded.get_or_init(|| {
            let mut v = View::with_capacity(self.orig.len());
            let mut prev_latin = false;
            let mut prev_space = false;
            for (i, c) in self.orig.char_indices() {
                let (s, e) = (i as u32, (i + c.len_utf8()) as u32);
                fold_char(c, &mut prev_latin, &mut |d| {
                    // A run of whitespace of any kind reads as one space, so phrases match
                    // across line breaks and double spaces.
                    if d.is_whitespace() {
                        if !prev_space {
                            v.push(' ', s, e);
                        }
                        prev_space = true;
                    } else {
                        prev_space = false;
                        v.push(d, s, e);
                    }
                });
            }
            v
        })
    }

    /// [`Self::folded`], lowercased.
    pub fn lower(&self) -> &View {
        self.lower.get_or_init(|| {
            self.folded().derive(|c, out| {
                if c.is_ascii() {
                    out(c.to_ascii_lowercase());
                } else if is_combining_mark(c) {
                    // Marks kept by the fold belong to scripts where they carry meaning.
                    out(c);
                } else {
                    // Lowercasing can add a combining dot (İ -> i̇); drop it like other marks.
                    c.to_lowercase()
                        .filter(|&d| !is_combining_mark(d))
                        .for_each(&mut *out);
                }
            })
        })
    }

    /// [`Self::lower`] with leetspeak folded: what case-insensitive word lists and the
    /// jailbreak patterns see.
    pub fn skeleton(&self) -> &View {
        self.skeleton
            .get_or_init(|| self.lower().derive(|c, out| out(leet(c))))
    }

    /// [`Self::skeleton`] with spaced-out letters joined.
    pub fn spaced(&self) -> &View {
        self.spaced.get_or_init(|| collapse_spaced(self.skeleton()))
    }

    /// [`Self::folded`] with spaced-out letters joined (case-sensitive word lists).
    pub fn spaced_cased(&self) -> &View {
        self.spaced_cased
            .get_or_init(|| collapse_spaced(self.folded()))
    }
}

/// Folds a word from a word list exactly as text is folded for the given matching mode.
pub(crate) fn fold_word(word: &str, case_sensitive: bool, skeleton: bool) -> String {
    let text = Text::new(word);
    let view = match (case_sensitive, skeleton) {
        (true, _) => text.folded(),
        (false, false) => text.lower(),
        (false, true) => text.skeleton(),
    };
    view.text.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span_of(v: &View, needle: &str) -> (usize, usize) {
        let a = v.text.find(needle).expect("needle in view");
        v.to_orig(a, a + needle.len())
    }

    #[test]
    fn fullwidth_accents_and_invisible_characters_fold_to_ascii() {
        let t = Text::new("ｋｉｌｌ k\u{200B}ill kíll\n\n k\u{0336}i\u{0336}l\u{0336}l\u{0336}");
        assert_eq!(t.lower().text, "kill kill kill kill");
    }

    #[test]
    fn cyrillic_and_greek_lookalikes_fold_to_latin() {
        // "kіll" with Cyrillic і, "ΚΙLL" with Greek capitals, "раураl" all Cyrillic but l.
        let t = Text::new("kіll ΚΙLL раураl");
        assert_eq!(t.lower().text, "kill kill paypal");
    }

    #[test]
    fn leetspeak_shares_a_skeleton_with_the_plain_word() {
        let t = Text::new("k1ll KI11 k!ll @$$");
        assert_eq!(t.skeleton().text, "kiii kiii kiii ass");
        assert_eq!(fold_word("kill", false, true), "kiii");
    }

    #[test]
    fn spaced_letters_are_joined_but_ordinary_words_are_not() {
        let t = Text::new("k i l l me, k.i.l.l, k-i-l-l; a man; I am a b");
        assert_eq!(t.spaced().text, "kiii me, kiii, kiii; a man; i am a b");
    }

    #[test]
    fn view_spans_map_back_to_original_bytes() {
        let orig = "say ｋ\u{200B}іll now";
        let t = Text::new(orig);
        let (s, e) = span_of(t.lower(), "kill");
        assert_eq!(&orig[s..e], "ｋ\u{200B}іll");
        // A position inside removed characters maps to the next kept character.
        let k_end = orig.find('\u{200B}').unwrap();
        let v = t.lower();
        assert_eq!(&v.text[v.view_pos(k_end)..], "ill now");
    }

    #[test]
    fn other_scripts_keep_their_marks_and_hangul_stays_whole() {
        let t = Text::new("नमस्ते 한국어 مرحبا");
        assert_eq!(t.lower().text, "नमस्ते 한국어 مرحبا");
    }

    #[test]
    fn ligatures_and_math_letters_expand() {
        let t = Text::new("ﬁle 𝐤𝐢𝐥𝐥 ①");
        assert_eq!(t.lower().text, "file kill 1");
        let (s, e) = span_of(t.lower(), "fi");
        assert_eq!((s, e), (0, "ﬁ".len()));
    }
}
