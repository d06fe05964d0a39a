//! Repository (and tag) globs: `*` matches a run of bytes within one path
//! segment, `**` across `/`, `**/` nothing or whole segments. Matched in
//! time linear in pattern x name. Used by access policies, retention
//! policies and anything else that names repositories by pattern.

/// A compiled repository glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    tokens: Vec<Token>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Byte(u8),
    /// `*`: any run of bytes other than `/`.
    Star,
    /// `**`: any run of bytes.
    Globstar,
    /// `**/`: nothing, or any run of bytes ending in `/` (so `a/**/b`
    /// matches `a/b`).
    GlobstarSlash,
}

impl Glob {
    pub fn new(pattern: &str) -> Glob {
        let p = pattern.as_bytes();
        let mut tokens = Vec::with_capacity(p.len());
        let mut i = 0;
        while i < p.len() {
            if p[i] == b'*' && p.get(i + 1) == Some(&b'*') {
                if p.get(i + 2) == Some(&b'/') {
                    tokens.push(Token::GlobstarSlash);
                    i += 3;
                } else {
                    tokens.push(Token::Globstar);
                    i += 2;
                }
            } else if p[i] == b'*' {
                tokens.push(Token::Star);
                i += 1;
            } else {
                tokens.push(Token::Byte(p[i]));
                i += 1;
            }
        }
        Glob { tokens }
    }

    pub fn matches(&self, name: &str) -> bool {
        self.run(name, &mut 0)
    }

    /// A simulation of the pattern's automaton: the set of states reachable
    /// after each byte of the name, so the work is at most a few steps per
    /// (pattern token, name byte) pair, whatever the pattern. States
    /// `0..=n` are "at token i"; state `n + 1 + i` is "inside the run of
    /// `**/` token i", which must end with a `/` (only the entry may match
    /// nothing). `steps` counts the work, for the test of that bound.
    /// Tokens in the compiled pattern (for tests of the work bound).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.tokens.len()
    }

    pub(crate) fn run(&self, name: &str, steps: &mut usize) -> bool {
        let n = self.tokens.len();
        let mut current = vec![false; 2 * n + 1];
        let mut next = vec![false; 2 * n + 1];
        current[0] = true;
        self.close(&mut current, steps);
        for &c in name.as_bytes() {
            next.iter_mut().for_each(|s| *s = false);
            let mut any = false;
            for (i, token) in self.tokens.iter().enumerate() {
                *steps += 1;
                let (at, inside) = (current[i], current[n + 1 + i]);
                any |= at || inside;
                match *token {
                    Token::Byte(b) if at && b == c => next[i + 1] = true,
                    Token::Star if at && c != b'/' => next[i] = true,
                    Token::Globstar if at => next[i] = true,
                    Token::GlobstarSlash if inside => {
                        next[n + 1 + i] = true;
                        if c == b'/' {
                            next[i + 1] = true;
                        }
                    }
                    _ => {}
                }
            }
            if !any {
                return false;
            }
            self.close(&mut next, steps);
            std::mem::swap(&mut current, &mut next);
        }
        current[n]
    }

    /// Add the states reachable without consuming a byte: `*` and `**` may
    /// match nothing; `**/` may match nothing, or start its run. These moves
    /// only go forward, so one pass in order suffices.
    fn close(&self, states: &mut [bool], steps: &mut usize) {
        let n = self.tokens.len();
        for (i, token) in self.tokens.iter().enumerate() {
            *steps += 1;
            if !states[i] {
                continue;
            }
            match token {
                Token::Byte(_) => {}
                Token::Star | Token::Globstar => states[i + 1] = true,
                Token::GlobstarSlash => {
                    states[i + 1] = true;
                    states[n + 1 + i] = true;
                }
            }
        }
    }
}
