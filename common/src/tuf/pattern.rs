//! Delegation path patterns with TUF semantics: the pattern and the target
//! path are split on `/` and must have the same number of segments; each
//! segment matches shell-style (`*` any run of characters, `?` one
//! character, `[...]` / `[!...]` a set), so `*` never crosses a `/`.

/// Whether `target` matches the delegation `pattern`.
pub(crate) fn matches(pattern: &str, target: &str) -> bool {
    let p: Vec<&str> = pattern.split('/').collect();
    let t: Vec<&str> = target.split('/').collect();
    p.len() == t.len()
        && p.iter().zip(&t).all(|(ps, ts)| {
            let pc: Vec<char> = ps.chars().collect();
            let tc: Vec<char> = ts.chars().collect();
            segment_matches(&pc, &tc)
        })
}

fn segment_matches(p: &[char], t: &[char]) -> bool {
    // Iterative wildcard matching with one backtrack point (linear-ish, no
    // exponential blow-up on hostile patterns).
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, ti));
                    pi += 1;
                    continue;
                }
                '?' => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                '[' => {
                    if let Some((matched, next)) = class_matches(p, pi, t[ti]) {
                        if matched {
                            pi = next;
                            ti += 1;
                            continue;
                        }
                    } else if t[ti] == '[' {
                        // An unclosed '[' is a literal, as in fnmatch.
                        pi += 1;
                        ti += 1;
                        continue;
                    }
                }
                c if c == t[ti] => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, st)) => {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Matches `c` against the class starting at `p[start] == '['`: whether it
/// matched and the index after the class, or None if the class is unclosed.
fn class_matches(p: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some('!'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let &pc = p.get(i)?;
        if pc == ']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|&e| e != ']') {
            let end = p[i + 2];
            if pc <= c && c <= end {
                matched = true;
            }
            i += 3;
        } else {
            if pc == c {
                matched = true;
            }
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn star_stays_within_a_segment() {
        assert!(matches("board-a/*", "board-a/image.img"));
        assert!(!matches("board-a/*", "board-a/sub/image.img"));
        assert!(!matches("*", "a/b"));
        assert!(matches("*/*.img", "x/y.img"));
        assert!(matches("*.img", ".img"));
        assert!(!matches("*.img", "a.img.sig"));
    }

    #[test]
    fn question_mark_and_classes() {
        assert!(matches("v?.img", "v1.img"));
        assert!(!matches("v?.img", "v10.img"));
        assert!(matches("v[0-9].img", "v7.img"));
        assert!(!matches("v[!0-9].img", "v7.img"));
        assert!(matches("v[!0-9].img", "vx.img"));
        assert!(matches("a[.img", "a[.img"));
        assert!(matches("exact/path", "exact/path"));
        assert!(!matches("exact/path", "exact/path2"));
    }
}
