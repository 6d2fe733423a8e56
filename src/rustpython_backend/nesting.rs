//! How deeply a source can nest, bounded from above without parsing it.
//!
//! RustPython's parser and code generator recurse once per level of nesting
//! and have no limit of their own, so a deep enough source overflows the
//! stack they run on. [`nesting_bound`] tells how much stack a source can
//! need: each level of nesting is opened by a bracket, an operator, a
//! keyword such as `not` or `lambda`, or an indented block, and the bound
//! counts every one of those in a logical line.

/// Words that can open a level of an expression or statement.
const KEYWORDS: &[&[u8]] = &[
    b"and", b"async", b"await", b"else", b"for", b"if", b"in", b"is", b"lambda", b"not", b"or",
    b"yield",
];

/// An upper bound on the nesting depth of any logical line of `source`: its
/// indentation plus its brackets, operator characters and [`KEYWORDS`].
/// String literals and comments do not count, except the contents of
/// f-strings, whose braces hold expressions.
pub(crate) fn nesting_bound(source: &str) -> usize {
    let bytes = source.as_bytes();
    let mut deepest = 0;
    let mut line = 0;
    let mut brackets = 0usize;
    let mut at_line_start = true;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'\n' => {
                if brackets == 0 {
                    deepest = deepest.max(line);
                    line = 0;
                    at_line_start = true;
                }
                i += 1;
                continue;
            }
            b' ' | b'\t' | b'\r' | b'\x0c' => {
                if at_line_start {
                    line += 1;
                }
                i += 1;
                continue;
            }
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'\\' => i += 2,
            b'\'' | b'"' => {
                let (end, count) = skip_string(bytes, i, false);
                line += count;
                i = end;
            }
            b'(' | b'[' | b'{' => {
                brackets += 1;
                line += 1;
                i += 1;
            }
            b')' | b']' | b'}' => {
                brackets = brackets.saturating_sub(1);
                i += 1;
            }
            b'0'..=b'9' => {
                while i < bytes.len()
                    && (bytes[i].is_ascii_alphanumeric() || matches!(bytes[i], b'_' | b'.'))
                {
                    i += 1;
                }
            }
            b if b.is_ascii_alphabetic() || b == b'_' || b >= 0x80 => {
                let start = i;
                while i < bytes.len()
                    && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] >= 0x80)
                {
                    i += 1;
                }
                let word = &bytes[start..i];
                if i < bytes.len() && matches!(bytes[i], b'\'' | b'"') && is_string_prefix(word) {
                    let formatted = word.iter().any(|c| c.eq_ignore_ascii_case(&b'f'));
                    let (end, count) = skip_string(bytes, i, formatted);
                    line += count;
                    i = end;
                } else if KEYWORDS.contains(&word) {
                    line += 1;
                }
            }
            b if opens(b) => {
                line += 1;
                i += 1;
            }
            _ => i += 1,
        }
        at_line_start = false;
    }
    deepest.max(line)
}

fn is_string_prefix(word: &[u8]) -> bool {
    word.len() <= 2
        && word
            .iter()
            .all(|c| matches!(c.to_ascii_lowercase(), b'r' | b'b' | b'u' | b'f' | b't'))
}

fn opens(b: u8) -> bool {
    b.is_ascii_punctuation() && !matches!(b, b')' | b']' | b'}' | b',' | b';' | b'\'' | b'"')
}

/// Skips the string literal whose quote is at `start`: returns where it ends
/// and, for an f-string, how many characters inside it could open a level.
fn skip_string(bytes: &[u8], start: usize, formatted: bool) -> (usize, usize) {
    let quote = bytes[start];
    let triple = bytes.len() >= start + 3 && bytes[start + 1] == quote && bytes[start + 2] == quote;
    let mut i = start + if triple { 3 } else { 1 };
    let mut count = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'\\' {
            i += 2;
            continue;
        }
        if b == quote {
            if !triple {
                return (i + 1, count);
            }
            if bytes.len() >= i + 3 && bytes[i + 1] == quote && bytes[i + 2] == quote {
                return (i + 3, count);
            }
        }
        if b == b'\n' && !triple {
            return (i, count);
        }
        if formatted && opens(b) {
            count += 1;
        }
        i += 1;
    }
    (i, count)
}

#[cfg(test)]
mod tests {
    use super::nesting_bound;

    #[test]
    fn counts_what_can_open_a_level() {
        assert_eq!(nesting_bound("x = 1"), 1);
        assert_eq!(nesting_bound("((1))"), 2);
        assert_eq!(nesting_bound(&format!("{}1", "-".repeat(500))), 500);
        assert_eq!(nesting_bound("not not x"), 2);
        assert_eq!(nesting_bound("a if b else c"), 2);
        assert_eq!(nesting_bound("if x:\n    y = -1\n"), 6);
        assert_eq!(nesting_bound("f(a, b, c); g()"), 2);
    }

    #[test]
    fn takes_the_deepest_logical_line() {
        assert_eq!(nesting_bound("a = -1\nb = (1,\n  -2,\n  -3)\nc = 1"), 4);
        assert_eq!(nesting_bound("x = 1 + \\\n 2 + 3"), 3);
    }

    #[test]
    fn strings_numbers_and_comments_do_not_count() {
        assert_eq!(nesting_bound("s = '((((-'  # ((((\n"), 1);
        assert_eq!(nesting_bound("s = \"\"\"(((\n)))\"\"\""), 1);
        assert_eq!(nesting_bound("s = rb'\\'((('"), 1);
        assert_eq!(nesting_bound("x = 1.5e10"), 1);
        assert_eq!(nesting_bound("s = 'not if'"), 1);
    }

    #[test]
    fn f_strings_count_what_their_braces_can_hold() {
        assert_eq!(nesting_bound("s = f'{((-x))}'"), 5);
        assert_eq!(nesting_bound("s = F\"{a}\""), 2);
    }

    #[test]
    fn unterminated_strings_end_the_scan_safely() {
        assert_eq!(nesting_bound("s = '((("), 1);
        assert_eq!(nesting_bound("s = '''((("), 1);
        assert_eq!(nesting_bound("\\"), 0);
    }
}
