//! PEP 440 ordering (PyPI): `[N!]N(.N)*[{a|b|rc}N][.postN][.devN][+local]`
//! with the normalisations the PEP allows (case, `alpha`/`beta`/`c`/`pre`/
//! `preview`, `rev`/`r`, `-N` as a post release, separators `.`, `-`, `_`,
//! implicit numbers, a leading `v`).

use std::cmp::Ordering;

/// A parsed, normalised version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pep440 {
    epoch: u64,
    release: Vec<u64>,
    /// (0 = a, 1 = b, 2 = rc, number)
    pre: Option<(u8, u64)>,
    post: Option<u64>,
    dev: Option<u64>,
    local: Vec<Local>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Local {
    // Declared first: any word sorts before any number.
    Word(String),
    Number(u64),
}

struct Cursor<'a> {
    s: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }
    fn eat(&mut self, word: &str) -> bool {
        if self.s[self.at..].starts_with(word.as_bytes()) {
            self.at += word.len();
            true
        } else {
            false
        }
    }
    fn number(&mut self) -> Option<u64> {
        let start = self.at;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.at += 1;
        }
        if start == self.at {
            return None;
        }
        std::str::from_utf8(&self.s[start..self.at]).ok()?.parse().ok()
    }
    fn is_sep(c: Option<u8>) -> bool {
        matches!(c, Some(b'.' | b'-' | b'_'))
    }
    /// An optional separator, then one of `labels`; rewinds on failure.
    fn label(&mut self, labels: &[&'static str]) -> Option<&'static str> {
        let save = self.at;
        if Self::is_sep(self.peek()) {
            self.at += 1;
        }
        for l in labels {
            if self.eat(l) {
                return Some(l);
            }
        }
        self.at = save;
        None
    }
    /// The number after a label: an optional separator, then optional
    /// digits (none is 0). The separator is taken even without digits
    /// (`1.0a.` is `1.0a0`); every later part has its own optional one.
    fn label_number(&mut self) -> Option<u64> {
        if Self::is_sep(self.peek()) {
            self.at += 1;
        }
        if self.peek().is_some_and(|c| c.is_ascii_digit()) {
            return self.number();
        }
        Some(0)
    }
}

/// Parse and normalise; `None` for what `packaging.version.Version` refuses.
pub fn parse(v: &str) -> Option<Pep440> {
    let lower = v.trim().to_ascii_lowercase();
    let mut c = Cursor { s: lower.as_bytes(), at: 0 };
    c.eat("v");
    let first = c.number()?;
    let (epoch, mut release) = if c.eat("!") { (first, vec![c.number()?]) } else { (0, vec![first]) };
    while c.peek() == Some(b'.') && c.s.get(c.at + 1).is_some_and(|d| d.is_ascii_digit()) {
        c.at += 1;
        release.push(c.number()?);
    }
    let pre = match c.label(&["alpha", "a", "beta", "b", "preview", "pre", "c", "rc"]) {
        Some(l) => {
            let kind = match l {
                "alpha" | "a" => 0,
                "beta" | "b" => 1,
                _ => 2,
            };
            Some((kind, c.label_number()?))
        }
        None => None,
    };
    let post = if c.peek() == Some(b'-') && c.s.get(c.at + 1).is_some_and(|d| d.is_ascii_digit()) {
        c.at += 1;
        Some(c.number()?)
    } else if c.label(&["post", "rev", "r"]).is_some() {
        Some(c.label_number()?)
    } else {
        None
    };
    let dev = if c.label(&["dev"]).is_some() { Some(c.label_number()?) } else { None };
    let mut local = Vec::new();
    if c.eat("+") {
        let rest = std::str::from_utf8(&c.s[c.at..]).ok()?;
        for part in rest.split(['.', '-', '_']) {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return None;
            }
            local.push(if part.bytes().all(|b| b.is_ascii_digit()) {
                Local::Number(part.parse().ok()?)
            } else {
                Local::Word(part.to_owned())
            });
        }
        c.at = c.s.len();
    }
    if c.at != c.s.len() {
        return None;
    }
    while release.len() > 1 && release.last() == Some(&0) {
        release.pop();
    }
    Some(Pep440 { epoch, release, pre, post, dev, local })
}

/// Where a pre-release sorts: a dev release of a final sorts before every
/// pre-release of it; no pre-release sorts after them all.
fn pre_key(v: &Pep440) -> (i8, u8, u64) {
    match (v.pre, v.post, v.dev) {
        (None, None, Some(_)) => (-1, 0, 0),
        (None, _, _) => (1, 0, 0),
        (Some((k, n)), _, _) => (0, k, n),
    }
}

impl Ord for Pep440 {
    fn cmp(&self, other: &Self) -> Ordering {
        // Release segments compare as if padded with zeros (trailing zeros
        // were stripped at parse time).
        self.epoch
            .cmp(&other.epoch)
            .then_with(|| self.release.cmp(&other.release))
            .then_with(|| pre_key(self).cmp(&pre_key(other)))
            // No post release sorts first; no dev release sorts last.
            .then_with(|| self.post.map(|p| p as i128).unwrap_or(-1).cmp(&other.post.map(|p| p as i128).unwrap_or(-1)))
            .then_with(|| {
                self.dev.map(|d| d as i128).unwrap_or(i128::MAX).cmp(&other.dev.map(|d| d as i128).unwrap_or(i128::MAX))
            })
            .then_with(|| self.local.cmp(&other.local))
    }
}

impl PartialOrd for Pep440 {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Compare two versions; `None` when either does not parse.
pub fn compare(a: &str, b: &str) -> Option<Ordering> {
    Some(parse(a)?.cmp(&parse(b)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    #[test]
    fn the_pep_s_order() {
        let chain = [
            "1.0.dev456",
            "1.0a1",
            "1.0a2.dev456",
            "1.0a12.dev456",
            "1.0a12",
            "1.0b1.dev456",
            "1.0b2",
            "1.0b2.post345.dev456",
            "1.0b2.post345",
            "1.0rc1.dev456",
            "1.0rc1",
            "1.0",
            "1.0+abc.5",
            "1.0+abc.7",
            "1.0+5",
            "1.0.post456.dev34",
            "1.0.post456",
            "1.0.15",
            "1.1.dev1",
            "1!0.1",
        ];
        for w in chain.windows(2) {
            assert_eq!(compare(w[0], w[1]), Some(Less), "{} < {}", w[0], w[1]);
        }
        for (a, b) in [
            ("1.0", "1.0.0"),
            ("1.0-1", "1.0.post1"),
            ("1.0alpha1", "1.0a1"),
            ("1.0c1", "1.0rc1"),
            ("1.0-preview-2", "1.0rc2"),
            ("V1.0.REV3", "1.0.post3"),
            ("1.0.a", "1.0a0"),
            ("1.0_dev", "1.0.dev0"),
            ("1.0a.", "1.0a0"),
            ("1.0rev_-dev1", "1.0.post0.dev1"),
            (" 2.0 ", "2.0"),
        ] {
            assert_eq!(compare(a, b), Some(Equal), "{a} == {b}");
        }
        for bad in ["", "a", "1.0.x", "1.0+", "1.0+a..b", "1.0-", "1.0.dev.x", "1!", "1.", "1.0a...dev"] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
    }
}
