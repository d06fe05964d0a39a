//! Alpine's apk version ordering (apk-tools 3):
//! `digits{.digits}[letter]{_suffix[digits]}[~hash][-rN]`, read token by
//! token. Equal kinds compare by value; when the kinds differ, a
//! pre-release suffix (`_alpha`, `_beta`, `_pre`, `_rc`) is smaller, and
//! otherwise the side still holding the more significant kind of token is
//! greater (a dot-number beats a letter, a letter a suffix, ... and any
//! token beats the end). An invalid token ranks below everything except a
//! pre-release suffix; comparison never fails.

use std::cmp::Ordering;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    First,
    Dot,
    Letter,
    Suffix,
    SuffixNumber,
    Hash,
    Revision,
    End,
    Invalid,
}

/// Suffix ranks; `NONE` (no suffix) sits between the pre-release and the
/// post-release ones.
const SUFFIXES: [(&str, u8); 9] =
    [("alpha", 1), ("beta", 2), ("pre", 3), ("rc", 4), ("cvs", 6), ("svn", 7), ("git", 8), ("hg", 9), ("p", 10)];
const NONE: u8 = 5;

#[derive(Debug, Clone, Copy)]
struct Token<'a> {
    kind: Kind,
    text: &'a str,
    rank: u8,
}

struct Lexer<'a> {
    s: &'a str,
    at: usize,
    last: Kind,
    done: bool,
}

impl<'a> Lexer<'a> {
    fn new(s: &'a str) -> Lexer<'a> {
        Lexer { s, at: 0, last: Kind::First, done: false }
    }

    fn digits(&self, from: usize) -> usize {
        from + self.s[from..].bytes().take_while(u8::is_ascii_digit).count()
    }

    fn token(&mut self, kind: Kind, text: &'a str, rank: u8) -> Token<'a> {
        if matches!(kind, Kind::End | Kind::Invalid) {
            self.done = true;
        }
        self.last = kind;
        Token { kind, text, rank }
    }

    fn invalid(&mut self) -> Token<'a> {
        self.token(Kind::Invalid, "", 0)
    }

    fn next(&mut self) -> Token<'a> {
        if self.done {
            return Token { kind: self.last, text: "", rank: 0 };
        }
        let s = self.s;
        let b = s.as_bytes();
        if self.at == 0 {
            let end = self.digits(0);
            if end == 0 {
                return self.invalid();
            }
            self.at = end;
            return self.token(Kind::First, &s[..end], 0);
        }
        let Some(&c) = b.get(self.at) else { return self.token(Kind::End, "", 0) };
        let last = self.last;
        match c {
            b'a'..=b'z' if last <= Kind::Dot => {
                self.at += 1;
                self.token(Kind::Letter, &s[self.at - 1..self.at], 0)
            }
            b'.' | b'0'..=b'9' => {
                let from = if c == b'.' {
                    if last > Kind::Dot {
                        return self.invalid();
                    }
                    self.at + 1
                } else {
                    self.at
                };
                let kind = match last {
                    Kind::First | Kind::Dot => Kind::Dot,
                    Kind::Suffix if c != b'.' => Kind::SuffixNumber,
                    _ => return self.invalid(),
                };
                let end = self.digits(from);
                if end == from {
                    return self.invalid();
                }
                self.at = end;
                self.token(kind, &s[from..end], 0)
            }
            b'_' if last <= Kind::SuffixNumber => {
                let from = self.at + 1;
                let end = from + s[from..].bytes().take_while(u8::is_ascii_lowercase).count();
                let Some(&(_, rank)) = SUFFIXES.iter().find(|(name, _)| *name == &s[from..end]) else {
                    return self.invalid();
                };
                self.at = end;
                self.token(Kind::Suffix, &s[from..end], rank)
            }
            b'~' if last < Kind::Hash => {
                let from = self.at + 1;
                let end = from + s[from..].bytes().take_while(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')).count();
                if end == from {
                    return self.invalid();
                }
                self.at = end;
                self.token(Kind::Hash, &s[from..end], 0)
            }
            b'-' if last < Kind::Revision && s[self.at..].starts_with("-r") => {
                let from = self.at + 2;
                let end = self.digits(from);
                if end == from {
                    return self.invalid();
                }
                self.at = end;
                self.token(Kind::Revision, &s[from..end], 0)
            }
            _ => self.invalid(),
        }
    }
}

/// Compare digit strings by value, whatever their length.
fn number(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

fn value(kind: Kind, a: &Token<'_>, b: &Token<'_>) -> Ordering {
    match kind {
        // A dot-number with a leading zero on either side compares as text.
        Kind::Dot if a.text.starts_with('0') || b.text.starts_with('0') => a.text.cmp(b.text),
        Kind::First | Kind::Dot | Kind::SuffixNumber | Kind::Revision => number(a.text, b.text),
        Kind::Suffix => a.rank.cmp(&b.rank),
        Kind::Letter | Kind::Hash => a.text.cmp(b.text),
        Kind::End | Kind::Invalid => Ordering::Equal,
    }
}

/// Compare two apk versions. Always answers (apk never refuses to
/// compare); [`valid`] says whether a version is well formed.
pub fn order(a: &str, b: &str) -> Ordering {
    let (mut la, mut lb) = (Lexer::new(a), Lexer::new(b));
    loop {
        let (ta, tb) = (la.next(), lb.next());
        if ta.kind != tb.kind || ta.kind >= Kind::End {
            if ta.kind == tb.kind {
                return Ordering::Equal;
            }
            let pre = |t: &Token<'_>| t.kind == Kind::Suffix && t.rank < NONE;
            if pre(&ta) {
                return Ordering::Less;
            }
            if pre(&tb) {
                return Ordering::Greater;
            }
            return if ta.kind > tb.kind { Ordering::Less } else { Ordering::Greater };
        }
        match value(ta.kind, &ta, &tb) {
            Ordering::Equal => {}
            o => return o,
        }
    }
}

/// Whether apk considers the version well formed.
pub fn valid(v: &str) -> bool {
    let mut l = Lexer::new(v);
    loop {
        let t = l.next();
        match t.kind {
            Kind::End => return true,
            Kind::Invalid => return false,
            _ => {}
        }
    }
}

/// Compare two versions; `None` when either is malformed (a vulnerability
/// range is never decided on a version apk itself calls invalid).
pub fn compare(a: &str, b: &str) -> Option<Ordering> {
    let (a, b) = (a.trim(), b.trim());
    (valid(a) && valid(b)).then(|| order(a, b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    #[test]
    fn token_rules() {
        for (a, b, want) in [
            ("1.0", "1.0", Equal),
            ("01", "1", Equal),
            ("1.01", "1.1", Less),
            ("1.0", "1.00", Less),
            ("1.0.1", "1.0a", Greater),
            ("1.0a", "1.0_p1", Greater),
            ("1.0_p1", "1.0~abc", Greater),
            ("1.0~abc", "1.0-r5", Greater),
            ("1.0-r0", "1.0", Greater),
            ("1.0_rc1", "1.0", Less),
            ("1.0_alpha", "1.0-r0", Less),
            ("1.0_alpha1", "1.0_alpha", Greater),
            ("1.0_pre1_alpha", "1.0_pre1", Less),
            ("1.0~9", "1.0~10", Greater),
            ("3.1.4-r5", "3.1.4-r10", Less),
            ("1.0_foo", "1.0", Less),
            ("1.0_foo", "1.0_alpha", Greater),
            ("1.0_foo", "1.0_bar", Equal),
        ] {
            assert_eq!(order(a, b), want, "{a} vs {b}");
            assert_eq!(order(b, a), want.reverse(), "{b} vs {a}");
        }
        for bad in ["", "a1", "1.", "1..2", "1.0bc", "1.0_", "1.0-r", "1.0-r2-r3", "1.0A", "1.0+1", "1:1.0"] {
            assert!(!valid(bad), "{bad:?}");
            assert_eq!(compare(bad, "1.0"), None);
        }
        for good in ["1", "1.2.3_alpha1_pre2", "0.1_p1", "1.0~abc-r1", "20240101"] {
            assert!(valid(good), "{good:?}");
        }
    }
}
