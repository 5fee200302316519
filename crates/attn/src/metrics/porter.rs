//! The Porter stemmer exactly as NLTK's `PorterStemmer()` computes it (its default mode,
//! `NLTK_EXTENSIONS`), which is the stemmer rouge-score uses.
//!
//! Compared with Porter's 1980 paper, that mode:
//! * answers a small table of irregular forms directly (`skies` → `sky`, `dying` → `die`,
//!   `news`, `innings` → `inning`, `proceed`, ...);
//! * leaves words of one or two characters alone (lowercased);
//! * step 1a: `ies` → `ie` when the word has four letters (`ties` → `tie`);
//! * step 1b: `ied` → `ie` in a four-letter word, else `i`, before the other rules;
//!   the `*o` condition also holds for a two-letter stem vowel + consonant;
//! * step 1c: `y` → `i` only after a consonant that is not the whole stem;
//! * step 2: `alli` → `al` is tried first (then step 2 again on the result); `bli` → `ble`
//!   (not `abli`); `fulli` → `ful`; `logi` → `log` with the measure taken on the stem plus
//!   its `l`.
//!
//! The stemmer works on Unicode scalar values as NLTK works on code points: anything
//! outside `a e i o u` (and `y` after a vowel) is a consonant. Lowercasing is Rust's
//! `str::to_lowercase`, which equals Python's `str.lower()` for the letters that matter.

/// NLTK's irregular forms: word → stem.
const IRREGULAR: [(&str, &str); 16] = [
    ("sky", "sky"),
    ("skies", "sky"),
    ("dying", "die"),
    ("lying", "lie"),
    ("tying", "tie"),
    ("news", "news"),
    ("innings", "inning"),
    ("inning", "inning"),
    ("outings", "outing"),
    ("outing", "outing"),
    ("cannings", "canning"),
    ("canning", "canning"),
    ("howe", "howe"),
    ("proceed", "proceed"),
    ("exceed", "exceed"),
    ("succeed", "succeed"),
];

/// Stem one word as NLTK's `PorterStemmer().stem(word)` does (the word is lowercased
/// first).
pub fn stem(word: &str) -> String {
    let lower = word.to_lowercase();
    if let Some((_, s)) = IRREGULAR.iter().find(|(w, _)| *w == lower) {
        return s.to_string();
    }
    // NLTK compares the length of the word as given, not of its lowercase form.
    if word.chars().count() <= 2 {
        return lower;
    }
    let mut w: Vec<char> = lower.chars().collect();
    step1a(&mut w);
    step1b(&mut w);
    step1c(&mut w);
    step2(&mut w);
    step3(&mut w);
    step4(&mut w);
    step5a(&mut w);
    step5b(&mut w);
    w.into_iter().collect()
}

fn is_vowel_letter(c: char) -> bool {
    matches!(c, 'a' | 'e' | 'i' | 'o' | 'u')
}

/// For each letter, whether it is a consonant: not a vowel letter, and a `y` only when it
/// starts the word or follows a vowel.
fn consonants(w: &[char]) -> impl Iterator<Item = bool> + '_ {
    let mut prev_cons = false;
    w.iter().enumerate().map(move |(k, &c)| {
        prev_cons = if is_vowel_letter(c) {
            false
        } else if c == 'y' {
            k == 0 || !prev_cons
        } else {
            true
        };
        prev_cons
    })
}

fn consonant(w: &[char], i: usize) -> bool {
    consonants(&w[..=i]).last().unwrap_or(false)
}

/// Porter's m: the number of vowel→consonant transitions.
fn measure(w: &[char]) -> usize {
    let mut m = 0;
    let mut prev_vowel = false;
    for cons in consonants(w) {
        if cons && prev_vowel {
            m += 1;
        }
        prev_vowel = !cons;
    }
    m
}

fn has_vowel(w: &[char]) -> bool {
    consonants(w).any(|c| !c)
}

/// `*d`: ends with a double consonant.
fn ends_double_consonant(w: &[char]) -> bool {
    let n = w.len();
    n >= 2 && w[n - 1] == w[n - 2] && consonant(w, n - 1)
}

/// `*o`: ends consonant-vowel-consonant with the last not w, x or y; NLTK also accepts a
/// two-letter vowel-consonant stem.
fn ends_cvc(w: &[char]) -> bool {
    let n = w.len();
    (n >= 3
        && consonant(w, n - 3)
        && !consonant(w, n - 2)
        && consonant(w, n - 1)
        && !matches!(w[n - 1], 'w' | 'x' | 'y'))
        || (n == 2 && !consonant(w, 0) && consonant(w, 1))
}

fn ends_with(w: &[char], suffix: &str) -> bool {
    let n = suffix.chars().count();
    n <= w.len() && w[w.len() - n..].iter().copied().eq(suffix.chars())
}

fn replace_end(w: &mut Vec<char>, cut: usize, with: &str) {
    w.truncate(w.len() - cut);
    w.extend(with.chars());
}

enum Cond {
    /// m(stem) > 0
    M0,
    /// m(stem) > 1
    M1,
    /// m(stem) > 1 and the stem ends with s or t
    M1ST,
    /// m of the word minus the last three letters > 0 (step 2's `logi`)
    Logi,
}

/// Try `rules` in order; the first whose suffix ends the word decides: its replacement
/// is made when its condition holds, and no later rule is tried either way.
fn apply_rules(w: &mut Vec<char>, rules: &[(&str, &str, Cond)]) {
    for (suffix, repl, cond) in rules {
        if !ends_with(w, suffix) {
            continue;
        }
        let cut = suffix.len();
        let stem = &w[..w.len() - cut];
        let ok = match cond {
            Cond::M0 => measure(stem) > 0,
            Cond::M1 => measure(stem) > 1,
            Cond::M1ST => measure(stem) > 1 && matches!(stem.last(), Some('s' | 't')),
            Cond::Logi => measure(&w[..w.len() - 3]) > 0,
        };
        if ok {
            replace_end(w, cut, repl);
        }
        return;
    }
}

fn step1a(w: &mut Vec<char>) {
    if w.len() == 4 && ends_with(w, "ies") {
        replace_end(w, 3, "ie");
    } else if ends_with(w, "sses") {
        replace_end(w, 4, "ss");
    } else if ends_with(w, "ies") {
        replace_end(w, 3, "i");
    } else if ends_with(w, "ss") {
    } else if ends_with(w, "s") {
        w.pop();
    }
}

fn step1b(w: &mut Vec<char>) {
    if ends_with(w, "ied") {
        let with = if w.len() == 4 { "ie" } else { "i" };
        replace_end(w, 3, with);
        return;
    }
    if ends_with(w, "eed") {
        if measure(&w[..w.len() - 3]) > 0 {
            w.pop();
        }
        return;
    }
    let cut = if ends_with(w, "ed") && has_vowel(&w[..w.len() - 2]) {
        2
    } else if ends_with(w, "ing") && has_vowel(&w[..w.len() - 3]) {
        3
    } else {
        return;
    };
    w.truncate(w.len() - cut);
    if ends_with(w, "at") || ends_with(w, "bl") || ends_with(w, "iz") {
        w.push('e');
    } else if ends_double_consonant(w) {
        if !matches!(w[w.len() - 1], 'l' | 's' | 'z') {
            w.pop();
        }
    } else if measure(w) == 1 && ends_cvc(w) {
        w.push('e');
    }
}

fn step1c(w: &mut [char]) {
    let n = w.len();
    if n >= 3 && w[n - 1] == 'y' && consonant(w, n - 2) {
        w[n - 1] = 'i';
    }
}

fn step2(w: &mut Vec<char>) {
    if ends_with(w, "alli") && measure(&w[..w.len() - 4]) > 0 {
        replace_end(w, 4, "al");
        step2(w);
        return;
    }
    use Cond::*;
    apply_rules(
        w,
        &[
            ("ational", "ate", M0),
            ("tional", "tion", M0),
            ("enci", "ence", M0),
            ("anci", "ance", M0),
            ("izer", "ize", M0),
            ("bli", "ble", M0),
            ("alli", "al", M0),
            ("entli", "ent", M0),
            ("eli", "e", M0),
            ("ousli", "ous", M0),
            ("ization", "ize", M0),
            ("ation", "ate", M0),
            ("ator", "ate", M0),
            ("alism", "al", M0),
            ("iveness", "ive", M0),
            ("fulness", "ful", M0),
            ("ousness", "ous", M0),
            ("aliti", "al", M0),
            ("iviti", "ive", M0),
            ("biliti", "ble", M0),
            ("fulli", "ful", M0),
            ("logi", "log", Logi),
        ],
    );
}

fn step3(w: &mut Vec<char>) {
    use Cond::*;
    apply_rules(
        w,
        &[
            ("icate", "ic", M0),
            ("ative", "", M0),
            ("alize", "al", M0),
            ("iciti", "ic", M0),
            ("ical", "ic", M0),
            ("ful", "", M0),
            ("ness", "", M0),
        ],
    );
}

fn step4(w: &mut Vec<char>) {
    use Cond::*;
    apply_rules(
        w,
        &[
            ("al", "", M1),
            ("ance", "", M1),
            ("ence", "", M1),
            ("er", "", M1),
            ("ic", "", M1),
            ("able", "", M1),
            ("ible", "", M1),
            ("ant", "", M1),
            ("ement", "", M1),
            ("ment", "", M1),
            ("ent", "", M1),
            ("ion", "", M1ST),
            ("ou", "", M1),
            ("ism", "", M1),
            ("ate", "", M1),
            ("iti", "", M1),
            ("ous", "", M1),
            ("ive", "", M1),
            ("ize", "", M1),
        ],
    );
}

fn step5a(w: &mut Vec<char>) {
    if ends_with(w, "e") {
        let stem = &w[..w.len() - 1];
        let m = measure(stem);
        if m > 1 || (m == 1 && !ends_cvc(stem)) {
            w.pop();
        }
    }
}

fn step5b(w: &mut Vec<char>) {
    if ends_with(w, "ll") && measure(&w[..w.len() - 1]) > 1 {
        w.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::stem;

    #[test]
    fn paper_examples() {
        for (w, s) in [
            ("caresses", "caress"),
            ("ponies", "poni"),
            ("ties", "tie"),
            ("cats", "cat"),
            ("feed", "feed"),
            ("agreed", "agre"),
            ("plastered", "plaster"),
            ("motoring", "motor"),
            ("hopping", "hop"),
            ("falling", "fall"),
            ("filing", "file"),
            ("happy", "happi"),
            ("enjoy", "enjoy"),
            ("relational", "relat"),
            ("generalizations", "gener"),
            ("skies", "sky"),
            ("dying", "die"),
            ("controll", "control"),
            ("is", "is"),
            ("IS", "is"),
        ] {
            assert_eq!(stem(w), s, "{w}");
        }
    }
}
