//! Rule-based answer verification for math problems (GSM8K, MATH): find the final answer in a
//! model's reply, normalise it, and decide whether it equals the reference answer. The same
//! functions are the trainer's reward, so they are pure, fast and never panic on any input.
//!
//! Extraction, in order: the last `\boxed{...}` (balanced braces), else the text after the
//! last "answer is" / "answer:", else the last number. Equality, in order: equal normalised
//! strings; equal values when both sides evaluate to numbers (exact rationals when both are
//! exact, else a relative tolerance of 1e-6), so `\frac{1}{2}`, `1/2`, `0.5` and `\dfrac12`
//! agree and `3\sqrt{13}` equals `\sqrt{117}`; element-wise for tuples, intervals, vectors and
//! sets (brackets must agree: `(1,2]` is not `(1,2)`; a bare list `1,-2` matches either).
//! What it does not do: symbolic algebra (`x^2-1` is not `(x-1)(x+1)`), and percentages are
//! compared by their number (`10\%` equals `10`, not `0.1`).

/// How the answer was found in a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extraction {
    /// The last `\boxed{...}`.
    Boxed,
    /// The text after the last "answer is" or "answer:".
    AnswerIs,
    /// The last number in the reply.
    LastNumber,
}

impl Extraction {
    /// `boxed`, `answer_is` or `last_number`.
    pub fn as_str(self) -> &'static str {
        match self {
            Extraction::Boxed => "boxed",
            Extraction::AnswerIs => "answer_is",
            Extraction::LastNumber => "last_number",
        }
    }
}

/// The contents of the last `\boxed{...}` (or `\fbox{...}`) with balanced braces, trimmed; a
/// `\boxed` whose braces never close (a cut-off reply) is skipped for an earlier one. Also
/// accepts the brace-less `\boxed 5`.
pub fn extract_boxed(text: &str) -> Option<String> {
    let mut starts: Vec<(usize, usize)> = Vec::new();
    for cmd in ["\\boxed", "\\fbox"] {
        starts.extend(text.match_indices(cmd).map(|(i, m)| (i, i + m.len())));
    }
    starts.sort_unstable();
    for &(_, after) in starts.iter().rev() {
        let rest = &text[after..];
        // `\boxeda` is another command, not a box.
        if rest.starts_with(|c: char| c.is_ascii_alphabetic()) {
            continue;
        }
        let body = rest.trim_start();
        if body.starts_with('{') {
            if let Some(end) = matching_brace(body, 0) {
                return Some(body[1..end].trim().to_string());
            }
        } else if rest.starts_with(' ') {
            let inner: String = body
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != '$')
                .collect();
            if !inner.is_empty() {
                return Some(inner);
            }
        }
    }
    None
}

/// The final answer of a reply: the last `\boxed{}`, else the text after "answer is", else the
/// last number. `None` when there is none (an empty reply, or prose without a number).
pub fn extract_answer(text: &str) -> Option<String> {
    extract_answer_how(text).map(|(a, _)| a)
}

/// [`extract_answer`], and which rule found the answer.
pub fn extract_answer_how(text: &str) -> Option<(String, Extraction)> {
    if let Some(b) = extract_boxed(text) {
        return Some((b, Extraction::Boxed));
    }
    if let Some(a) = answer_is(text) {
        return Some((a, Extraction::AnswerIs));
    }
    last_number(text).map(|n| (n, Extraction::LastNumber))
}

/// The answer of a GSM8K `answer` field: what follows the last `####`, without thousands
/// separators (`"... #### 1,234"` gives `"1234"`).
pub fn gsm8k_gold(answer_field: &str) -> String {
    let tail = match answer_field.rfind("####") {
        Some(i) => &answer_field[i + 4..],
        None => answer_field,
    };
    tail.trim().replace(',', "")
}

/// Whether a predicted answer equals the reference (see the module docs for the rules). An
/// empty prediction never matches.
pub fn answers_match(pred: &str, gold: &str) -> bool {
    let (p, g) = (normalize(pred), normalize(gold));
    !p.is_empty() && equal_normalized(&p, &g)
}

/// A canonical form of an answer: no `$`, spacing commands, `\left`/`\right`, `\text{}`
/// wrappers, degree signs, percent signs, trailing units, thousands separators, whitespace or
/// leading `x=`; `\dfrac`/`\tfrac` as `\frac`, shorthand `\frac12`/`\sqrt2` braced; plain
/// decimals without trailing zeros (`5.0` is `5`).
pub fn normalize(answer: &str) -> String {
    let mut s = answer.trim().to_string();
    if s.starts_with("\\boxed") || s.starts_with("\\fbox") {
        if let Some(b) = extract_boxed(&s) {
            s = b;
        }
    }
    for (from, to) in [
        ("\u{2212}", "-"),
        ("\u{3c0}", "\\pi "),
        ("\u{221e}", "\\infty "),
        ("\u{b0}", ""),
        ("\\$", ""),
        ("$", ""),
        ("\\%", ""),
        ("%", ""),
        ("{,}", ""),
        ("^{\\circ}", ""),
        ("^\\circ", ""),
        ("\\{", "{"),
        ("\\}", "}"),
        ("\\\\", ","),
        ("&", ","),
    ] {
        s = s.replace(from, to);
    }
    for (cmd, to) in [
        ("left", ""),
        ("right", ""),
        ("displaystyle", ""),
        ("dfrac", "\\frac"),
        ("tfrac", "\\frac"),
        ("circ", ""),
        ("degree", ""),
        ("!", ""),
        (",", ""),
        (";", ""),
        (":", ""),
        (" ", " "),
        ("le", "\\leq"),
        ("ge", "\\geq"),
        ("cdot", "*"),
        ("times", "*"),
        ("div", "/"),
    ] {
        s = replace_cmd(&s, cmd, to);
    }
    for cmd in [
        "text",
        "textbf",
        "textit",
        "textrm",
        "mathrm",
        "mathbf",
        "mathit",
        "mbox",
        "operatorname",
    ] {
        s = unwrap_cmd(&s, cmd);
    }
    for env in ["pmatrix", "bmatrix", "matrix"] {
        s = s
            .replace(&format!("\\begin{{{env}}}"), "(")
            .replace(&format!("\\end{{{env}}}"), ")");
    }
    s = strip_unit(s.trim());
    s.retain(|c| !c.is_whitespace());
    s = s.trim_end_matches('.').to_string();
    s = brace_shorthand(&s);
    s = strip_assignment(&s);
    if is_thousands(&s) {
        s.retain(|c| c != ',');
    }
    // `(C)` is the choice `C`, `(5)` the number 5; a pair keeps its parentheses.
    if s.starts_with('(')
        && s.ends_with(')')
        && matching_paren(&s) == Some(s.len() - 1)
        && split_top(&s[1..s.len() - 1]).len() == 1
    {
        s = s[1..s.len() - 1].to_string();
    }
    canonical_decimal(&s).unwrap_or(s)
}

fn equal_normalized(p: &str, g: &str) -> bool {
    if p == g {
        return true;
    }
    if let (Some(a), Some(b)) = (value(p), value(g)) {
        return a.equals(&b);
    }
    if let (Some(a), Some(b)) = (as_list(p), as_list(g)) {
        if a.items.len() != b.items.len() || a.items.len() < 2 {
            return false;
        }
        let brackets_agree =
            a.open.is_none() || b.open.is_none() || (a.open == b.open && a.close == b.close);
        if !brackets_agree {
            return false;
        }
        let in_order = a
            .items
            .iter()
            .zip(&b.items)
            .all(|(x, y)| equal_normalized(x, y));
        if in_order {
            return true;
        }
        // A set, or a bare list of solutions (`3, 5, 7`), has no order.
        let unordered =
            (a.open == Some('{') && b.open == Some('{')) || (a.open.is_none() && b.open.is_none());
        return unordered && same_multiset(&a.items, &b.items);
    }
    // Words (`\text{Evelyn}`, `even`) compare without case.
    p.len() > 1 && p.chars().all(char::is_alphabetic) && p.eq_ignore_ascii_case(g)
}

fn same_multiset(a: &[String], b: &[String]) -> bool {
    let mut used = vec![false; b.len()];
    a.iter().all(|x| {
        let hit = (0..b.len()).find(|&j| !used[j] && equal_normalized(x, &b[j]));
        hit.map(|j| used[j] = true).is_some()
    })
}

struct List {
    open: Option<char>,
    close: Option<char>,
    items: Vec<String>,
}

/// A normalised answer as a list: `(a,b)`, `[a,b)`, `{a,b}`, or a bare `a,b`.
fn as_list(s: &str) -> Option<List> {
    let first = s.chars().next()?;
    let last = s.chars().last()?;
    let bracketed = matches!(first, '(' | '[' | '{')
        && matches!(last, ')' | ']' | '}')
        && s.len() >= 2
        && closing_of(s, 0) == Some(s.len() - 1);
    let (open, close, inner) = if bracketed {
        (Some(first), Some(last), &s[1..s.len() - 1])
    } else {
        (None, None, s)
    };
    let items = split_top(inner);
    (items.len() >= 2).then_some(List { open, close, items })
}

/// The index of the bracket that closes the one at `start`, any of `()[]{}` (an interval
/// `[1,2)` closes with another kind).
fn closing_of(s: &str, start: usize) -> Option<usize> {
    let mut depth = 0i32;
    for (i, c) in s.char_indices().skip_while(|(i, _)| *i < start) {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

fn matching_paren(s: &str) -> Option<usize> {
    closing_of(s, 0)
}

/// Splits at commas outside brackets.
fn split_top(s: &str) -> Vec<String> {
    let (mut out, mut cur, mut depth) = (Vec::new(), String::new(), 0i32);
    for c in s.chars() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    out
}

/// The index of the `}` that closes the `{` at byte `open`.
fn matching_brace(s: &str, open: usize) -> Option<usize> {
    let mut depth = 0i32;
    let mut escaped = false;
    for (i, c) in s[open..].char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(open + i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Replaces the command `\name` (not a longer command that starts with it) by `to`.
fn replace_cmd(s: &str, name: &str, to: &str) -> String {
    let pat = format!("\\{name}");
    let word = name.chars().all(|c| c.is_ascii_alphabetic());
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(&pat) {
        let after = &rest[i + pat.len()..];
        out.push_str(&rest[..i]);
        if word && after.starts_with(|c: char| c.is_ascii_alphabetic()) {
            out.push_str(&pat);
        } else {
            out.push_str(to);
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// `\name{x}` becomes `x`.
fn unwrap_cmd(s: &str, name: &str) -> String {
    let pat = format!("\\{name}{{");
    let mut s = s.to_string();
    while let Some(i) = s.find(&pat) {
        let open = i + pat.len() - 1;
        let Some(close) = matching_brace(&s, open) else {
            break;
        };
        s = format!("{}{}{}", &s[..i], &s[open + 1..close], &s[close + 1..]);
    }
    s
}

const UNITS: &[&str] = &[
    "square units",
    "square feet",
    "square inches",
    "square meters",
    "square centimeters",
    "sq units",
    "sq ft",
    "units",
    "unit",
    "dollars",
    "dollar",
    "cents",
    "cent",
    "mm",
    "cm",
    "km",
    "m",
    "meters",
    "meter",
    "metres",
    "inches",
    "inch",
    "in",
    "feet",
    "foot",
    "ft",
    "yards",
    "yard",
    "miles",
    "mile",
    "mph",
    "hours",
    "hour",
    "minutes",
    "minute",
    "min",
    "seconds",
    "second",
    "sec",
    "days",
    "day",
    "weeks",
    "week",
    "months",
    "month",
    "years",
    "year",
    "degrees",
    "degree",
    "pounds",
    "pound",
    "lbs",
    "lb",
    "ounces",
    "ounce",
    "oz",
    "kg",
    "grams",
    "gram",
    "g",
    "liters",
    "liter",
    "litres",
    "gallons",
    "gallon",
    "percent",
    "points",
    "people",
    "students",
    "apples",
    "eggs",
];

/// Drops a trailing unit (`10 cm`, `864 inches^2`, `5 dollars`) when what is left is a number.
fn strip_unit(s: &str) -> String {
    let mut s = s.to_string();
    for _ in 0..2 {
        let body = ["^2", "^3", "^{2}", "^{3}"]
            .iter()
            .find_map(|p| s.strip_suffix(p))
            .unwrap_or(&s)
            .trim_end();
        let lower = body.to_ascii_lowercase();
        let Some(rest) = UNITS.iter().find_map(|u| {
            let r = lower.strip_suffix(u)?;
            // The unit is a whole word: after a space, a digit or a closing brace.
            let ok = r.ends_with(|c: char| c.is_whitespace() || c.is_ascii_digit() || c == '}');
            ok.then(|| body[..r.len()].trim_end().to_string())
        }) else {
            break;
        };
        let mut compact = rest.clone();
        compact.retain(|c| !c.is_whitespace());
        if value(&brace_shorthand(&compact)).is_none() {
            break;
        }
        s = rest;
    }
    s
}

/// `\frac12` as `\frac{1}{2}`, `\sqrt2` as `\sqrt{2}`, `x^{2}` as `x^2`.
fn brace_shorthand(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let rest: String = chars[i..].iter().take(5).collect();
        let (cmd, args) = if rest.starts_with("\\frac") {
            ("\\frac", 2)
        } else if rest.starts_with("\\sqrt") {
            ("\\sqrt", 1)
        } else {
            ("", 0)
        };
        if args > 0 && !chars.get(i + 5).is_some_and(|c| c.is_ascii_alphabetic()) {
            out.push_str(cmd);
            i += 5;
            for _ in 0..args {
                match chars.get(i) {
                    Some('{') | Some('[') | None => break,
                    Some(c) => {
                        out.push('{');
                        out.push(*c);
                        out.push('}');
                        i += 1;
                    }
                }
                // The second argument follows a braced first one.
                if chars.get(i) == Some(&'{') {
                    break;
                }
            }
            continue;
        }
        if (chars[i] == '^' || chars[i] == '_')
            && chars.get(i + 1) == Some(&'{')
            && chars.get(i + 3) == Some(&'}')
        {
            out.push(chars[i]);
            out.push(chars[i + 2]);
            i += 4;
            continue;
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// `x=3` as `3`, `x\in[1,2]` as `[1,2]` (one variable, possibly subscripted, on the left).
fn strip_assignment(s: &str) -> String {
    for sep in ["=", "\\in"] {
        if let Some(i) = s.find(sep) {
            let lhs = &s[..i];
            let rhs = &s[i + sep.len()..];
            let mut c = lhs.chars();
            let var = c.next().is_some_and(|c| c.is_ascii_alphabetic()) && c.as_str().is_empty()
                || (lhs.len() > 1
                    && lhs.starts_with(|c: char| c.is_ascii_alphabetic())
                    && lhs[1..].starts_with('_'));
            if var && !rhs.is_empty() && !rhs.contains('=') {
                return rhs.to_string();
            }
        }
    }
    s.to_string()
}

/// `1,234` or `-12,345.6`: digits in groups of three.
fn is_thousands(s: &str) -> bool {
    let s = s.strip_prefix('-').unwrap_or(s);
    let int = s.split('.').next().unwrap_or("");
    let frac_ok = s
        .split_once('.')
        .is_none_or(|(_, f)| !f.is_empty() && f.chars().all(|c| c.is_ascii_digit()));
    let groups: Vec<&str> = int.split(',').collect();
    groups.len() > 1
        && frac_ok
        && (1..=3).contains(&groups[0].len())
        && groups.iter().all(|g| g.chars().all(|c| c.is_ascii_digit()))
        && groups[1..].iter().all(|g| g.len() == 3)
}

/// A plain decimal in canonical form: no `+`, leading or trailing zeros (`05.50` is `5.5`).
fn canonical_decimal(s: &str) -> Option<String> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if body.is_empty()
        || !body.chars().all(|c| c.is_ascii_digit() || c == '.')
        || body.matches('.').count() > 1
        || body == "."
    {
        return None;
    }
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    let mut out = String::new();
    if neg && !(int == "0" && frac.is_empty()) {
        out.push('-');
    }
    out.push_str(int);
    if !frac.is_empty() {
        out.push('.');
        out.push_str(frac);
    }
    Some(out)
}

/// The text after the last "answer is" / "answer:", up to the end of its line or sentence.
fn answer_is(text: &str) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    let (at, len) = ["answer is", "answer:"]
        .iter()
        .filter_map(|p| lower.rfind(p).map(|i| (i, p.len())))
        .max_by_key(|(i, _)| *i)?;
    let rest = &text[at + len..];
    let line = rest.split('\n').next().unwrap_or("");
    let mut a = line.split(". ").next().unwrap_or("").trim();
    for _ in 0..3 {
        a = a.trim_start_matches(':').trim();
        a = a.trim_matches('*').trim();
        a = a.trim_end_matches('.').trim();
        for (l, r) in [("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")] {
            if let Some(x) = a.strip_prefix(l).and_then(|x| x.strip_suffix(r)) {
                a = x.trim();
            }
        }
    }
    (!a.is_empty()).then(|| a.to_string())
}

/// The last number in the text (`-1,234.5`, `3/4`), thousands separators dropped.
fn last_number(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let digits = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        i
    };
    let mut last = None;
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = if i > 0 && b[i - 1] == b'-' { i - 1 } else { i };
        let mut end = digits(i);
        // Thousands groups: a comma followed by exactly three digits.
        while end + 3 < b.len() && b[end] == b',' && digits(end + 1) == end + 4 {
            end += 4;
        }
        if end + 1 < b.len() && b[end] == b'.' && b[end + 1].is_ascii_digit() {
            end = digits(end + 1);
        }
        if end + 1 < b.len() && b[end] == b'/' && b[end + 1].is_ascii_digit() {
            end = digits(end + 1);
        }
        last = Some(text[start..end].replace(',', ""));
        i = end.max(i + 1);
    }
    last
}

/// A number, exact when it can be.
#[derive(Debug, Clone, Copy)]
enum Val {
    /// numerator / denominator, reduced, denominator positive.
    Exact(i128, i128),
    Approx(f64),
}

impl Val {
    fn exact(n: i128, d: i128) -> Val {
        if d == 0 {
            return Val::Approx(f64::NAN);
        }
        let g = gcd(n.unsigned_abs(), d.unsigned_abs()).max(1) as i128;
        let (n, d) = (n / g, d / g);
        if d < 0 {
            match (n.checked_neg(), d.checked_neg()) {
                (Some(n), Some(d)) => Val::Exact(n, d),
                _ => Val::Approx(n as f64 / d as f64),
            }
        } else {
            Val::Exact(n, d)
        }
    }

    fn f(self) -> f64 {
        match self {
            Val::Exact(n, d) => n as f64 / d as f64,
            Val::Approx(x) => x,
        }
    }

    fn equals(&self, other: &Val) -> bool {
        match (*self, *other) {
            (Val::Exact(a, b), Val::Exact(c, d)) if a == c && b == d => true,
            (x, y) => {
                let (x, y) = (x.f(), y.f());
                x.is_finite() && y.is_finite() && (x - y).abs() <= 1e-6 * x.abs().max(y.abs())
            }
        }
    }

    fn add(self, o: Val) -> Val {
        if let (Val::Exact(a, b), Val::Exact(c, d)) = (self, o) {
            let n = a
                .checked_mul(d)
                .zip(c.checked_mul(b))
                .and_then(|(x, y)| x.checked_add(y));
            if let (Some(n), Some(d)) = (n, b.checked_mul(d)) {
                return Val::exact(n, d);
            }
        }
        Val::Approx(self.f() + o.f())
    }

    fn neg(self) -> Val {
        match self {
            Val::Exact(n, d) => n
                .checked_neg()
                .map_or(Val::Approx(-self.f()), |n| Val::Exact(n, d)),
            Val::Approx(x) => Val::Approx(-x),
        }
    }

    fn mul(self, o: Val) -> Val {
        if let (Val::Exact(a, b), Val::Exact(c, d)) = (self, o) {
            if let (Some(n), Some(d)) = (a.checked_mul(c), b.checked_mul(d)) {
                return Val::exact(n, d);
            }
        }
        Val::Approx(self.f() * o.f())
    }

    fn recip(self) -> Val {
        match self {
            Val::Exact(n, d) => Val::exact(d, n),
            Val::Approx(x) => Val::Approx(1.0 / x),
        }
    }

    fn pow(self, e: Val) -> Val {
        if let (Val::Exact(_, _), Val::Exact(k, 1)) = (self, e) {
            if k.abs() <= 64 {
                let mut r = Val::Exact(1, 1);
                for _ in 0..k.abs() {
                    r = r.mul(self);
                }
                return if k < 0 { r.recip() } else { r };
            }
        }
        Val::Approx(self.f().powf(e.f()))
    }

    fn sqrt(self) -> Val {
        if let Val::Exact(n, d) = self {
            if let (Some(a), Some(b)) = (isqrt(n), isqrt(d)) {
                return Val::Exact(a, b);
            }
        }
        Val::Approx(self.f().sqrt())
    }

    fn is_integer(&self) -> bool {
        matches!(self, Val::Exact(_, 1))
    }
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

fn isqrt(n: i128) -> Option<i128> {
    if n < 0 {
        return None;
    }
    let r = (n as f64).sqrt().round() as i128;
    (r.checked_mul(r) == Some(n)).then_some(r)
}

/// The value of a normalised answer that is a number: decimals, `\frac`, `a/b`, `\sqrt`,
/// `\pi`, `+ - * / ^`, parentheses, implicit products (`3\sqrt{13}`, `2\pi`) and mixed
/// numbers (`1\frac{4}{5}`). `None` for anything with a variable or another command.
fn value(s: &str) -> Option<Val> {
    if s.is_empty() {
        return None;
    }
    let mut p = Parser {
        s: s.as_bytes(),
        i: 0,
    };
    let v = p.expr()?;
    (p.i == p.s.len()).then_some(v)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, t: &str) -> bool {
        if self.s[self.i..].starts_with(t.as_bytes()) {
            // A command must not continue with letters (`\pi` is not `\pio`).
            let next = self.s.get(self.i + t.len());
            if t.starts_with('\\') && next.is_some_and(|c| c.is_ascii_alphabetic()) {
                return false;
            }
            self.i += t.len();
            return true;
        }
        false
    }

    fn expr(&mut self) -> Option<Val> {
        let mut v = self.term()?;
        loop {
            if self.eat("+") {
                v = v.add(self.term()?);
            } else if self.eat("-") {
                v = v.add(self.term()?.neg());
            } else {
                return Some(v);
            }
        }
    }

    fn term(&mut self) -> Option<Val> {
        let neg = if self.eat("-") {
            true
        } else {
            self.eat("+");
            false
        };
        let start = self.i;
        let mut v = self.power()?;
        let mut lone_integer =
            v.is_integer() && self.s[start..self.i].iter().all(u8::is_ascii_digit);
        loop {
            if self.eat("*") {
                v = v.mul(self.power()?);
            } else if self.eat("/") {
                v = v.mul(self.power()?.recip());
            } else if self.starts_atom() {
                let frac = self.s[self.i..].starts_with(b"\\frac");
                let w = self.power()?;
                // `1\frac{4}{5}` is a mixed number, 1 + 4/5, as MATH writes them.
                let proper = matches!(w, Val::Exact(n, d) if n >= 0 && n < d);
                v = if lone_integer && frac && proper {
                    v.add(w)
                } else {
                    v.mul(w)
                };
            } else {
                return Some(if neg { v.neg() } else { v });
            }
            lone_integer = false;
        }
    }

    fn starts_atom(&self) -> bool {
        match self.peek() {
            Some(c) if c.is_ascii_digit() || c == b'(' || c == b'{' || c == b'.' => true,
            Some(b'\\') => ["\\frac", "\\sqrt", "\\pi"]
                .iter()
                .any(|c| self.s[self.i..].starts_with(c.as_bytes())),
            _ => false,
        }
    }

    fn power(&mut self) -> Option<Val> {
        let base = self.atom()?;
        if self.eat("^") {
            let e = if self.peek() == Some(b'-') {
                self.i += 1;
                self.atom()?.neg()
            } else {
                self.atom()?
            };
            return Some(base.pow(e));
        }
        Some(base)
    }

    fn group(&mut self) -> Option<Val> {
        if self.eat("{") {
            let v = self.expr()?;
            return self.eat("}").then_some(v);
        }
        None
    }

    fn atom(&mut self) -> Option<Val> {
        if self.eat("(") {
            let v = self.expr()?;
            return self.eat(")").then_some(v);
        }
        if self.peek() == Some(b'{') {
            return self.group();
        }
        if self.eat("\\frac") {
            let n = self.group()?;
            let d = self.group()?;
            return Some(n.mul(d.recip()));
        }
        if self.eat("\\sqrt") {
            if self.eat("[") {
                let k = self.expr()?;
                if !self.eat("]") {
                    return None;
                }
                let x = self.group()?;
                return Some(Val::Approx(x.f().powf(1.0 / k.f())));
            }
            return Some(self.group()?.sqrt());
        }
        if self.eat("\\pi") {
            return Some(Val::Approx(std::f64::consts::PI));
        }
        self.number()
    }

    fn number(&mut self) -> Option<Val> {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        let int_end = self.i;
        if self.peek() == Some(b'.') {
            self.i += 1;
            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.i += 1;
            }
        }
        let text = std::str::from_utf8(&self.s[start..self.i]).ok()?;
        if text.is_empty() || text == "." {
            self.i = start;
            return None;
        }
        let (int, frac) = (
            &text[..int_end - start],
            text.get(int_end - start + 1..).unwrap_or(""),
        );
        let digits = format!("{int}{frac}");
        match (
            digits.parse::<i128>(),
            10i128.checked_pow(frac.len() as u32),
        ) {
            (Ok(n), Some(d)) if digits.len() <= 30 => Some(Val::exact(n, d)),
            _ => text.parse::<f64>().ok().map(Val::Approx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxed_is_the_last_one_with_balanced_braces() {
        assert_eq!(extract_boxed("\\boxed{1} then \\boxed{2}").unwrap(), "2");
        assert_eq!(
            extract_boxed("so $\\boxed{\\dfrac{3}{4}}$.").unwrap(),
            "\\dfrac{3}{4}"
        );
        assert_eq!(
            extract_boxed("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}").unwrap(),
            "\\left( 3, \\frac{\\pi}{2} \\right)"
        );
        assert_eq!(extract_boxed("\\boxed{\\{1,2\\}}").unwrap(), "\\{1,2\\}");
        // A cut-off box falls back to the earlier, complete one.
        assert_eq!(
            extract_boxed("\\boxed{7} ... \\boxed{\\frac{1}{").unwrap(),
            "7"
        );
        assert_eq!(extract_boxed("the answer is \\boxed 5$").unwrap(), "5");
        assert_eq!(extract_boxed("\\fbox{12}").unwrap(), "12");
        assert_eq!(extract_boxed("no box here"), None);
        assert_eq!(extract_boxed("\\boxed{"), None);
        assert_eq!(extract_boxed(""), None);
    }

    #[test]
    fn answers_are_found_by_box_then_phrase_then_last_number() {
        assert_eq!(
            extract_answer_how("... so \\boxed{18}. Check: 9*2=18, 3 eggs"),
            Some(("18".into(), Extraction::Boxed))
        );
        assert_eq!(
            extract_answer_how("Thus the answer is $\\frac{1}{2}$.\nDone, 7 steps."),
            Some(("\\frac{1}{2}".into(), Extraction::AnswerIs))
        );
        assert_eq!(extract_answer("**Final Answer:** 42"), Some("42".into()));
        assert_eq!(
            extract_answer_how("She makes 9 * 2 = $18 a day, i.e. 1,260 a week."),
            Some(("1260".into(), Extraction::LastNumber))
        );
        assert_eq!(extract_answer("it is -3.5 degrees"), Some("-3.5".into()));
        assert_eq!(extract_answer("ratio 3/4"), Some("3/4".into()));
        assert_eq!(extract_answer("points 1, 2, 3"), Some("3".into()));
        assert_eq!(extract_answer("I don't know."), None);
        assert_eq!(extract_answer(""), None);
    }

    #[test]
    fn gsm8k_gold_is_after_the_last_hashes() {
        assert_eq!(gsm8k_gold("16 - 3 - 4 = <<16-3-4=9>>9\n#### 18"), "18");
        assert_eq!(gsm8k_gold("lots\n#### 1,234"), "1234");
        assert_eq!(gsm8k_gold("#### -5"), "-5");
    }

    #[test]
    fn normalisation_strips_formatting() {
        for (raw, norm) in [
            ("\\$5", "5"),
            ("$5.00$", "5"),
            ("10\\%", "10"),
            ("90^\\circ", "90"),
            ("90°", "90"),
            ("x = 3", "3"),
            ("x \\in [-2,7]", "[-2,7]"),
            ("10,\\!080", "10080"),
            ("11,\\! 111,\\! 111,\\! 100", "11111111100"),
            ("\\$32,\\!348", "32348"),
            ("\\text{Evelyn}", "Evelyn"),
            ("\\text{(C)}", "C"),
            ("5.4 \\text{ cents}", "5.4"),
            ("864 \\mbox{ inches}^2", "864"),
            ("15\\mbox{ cm}^2", "15"),
            ("18 dollars", "18"),
            ("\\dfrac{3}{4}", "\\frac{3}{4}"),
            ("\\frac12", "\\frac{1}{2}"),
            ("11\\sqrt2", "11\\sqrt{2}"),
            ("4210_{5}", "4210_5"),
            ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
            ("0.50", "0.5"),
            ("-0", "0"),
            ("\\boxed{7}", "7"),
            ("6 - 5i", "6-5i"),
        ] {
            assert_eq!(normalize(raw), norm, "normalize({raw:?})");
        }
    }

    #[test]
    fn equal_answers_match() {
        for (pred, gold) in [
            ("1234", "1,234"),
            ("0.5", "\\frac{1}{2}"),
            ("1/2", "\\dfrac{1}{2}"),
            ("\\frac12", "0.5"),
            ("\\dfrac{3}{4}", "\\frac{3}{4}"),
            ("0.75", "\\boxed{\\dfrac{3}{4}}"),
            ("(1, -2)", "(1,-2)"),
            ("(1,-2)", "1,-2"),
            ("10\\%", "10"),
            ("\\$5", "5"),
            ("x=3", "3"),
            ("18.0", "18"),
            ("18.0000000001", "18"),
            ("-\\frac{\\pi}{6}", "-\\frac{\\pi}{6}"),
            ("-\\pi/6", "-\\frac{\\pi}{6}"),
            ("3\\sqrt{13}", "\\sqrt{117}"),
            ("11\\sqrt{2}", "11\\sqrt2"),
            ("\\frac{9}{5}", "1\\frac{4}{5}"),
            ("137.5", "137 \\frac{1}{2}"),
            (
                "\\left(\\frac{3}{5},\\frac{8}{3}\\right]",
                "(0.6, \\frac{8}{3}]",
            ),
            (
                "(3, \\frac{\\pi}{2})",
                "\\left( 3, \\frac{\\pi}{2} \\right)",
            ),
            ("7, 5, 3", "3, 5, 7"),
            ("\\{-2, 1\\pm\\sqrt{5}\\}", "\\{1\\pm\\sqrt{5},-2\\}"),
            (
                "\\begin{pmatrix} 1/5 \\\\ -18/5 \\end{pmatrix}",
                "\\begin{pmatrix} 0.2 \\\\ -3.6 \\end{pmatrix}",
            ),
            ("evelyn", "\\text{Evelyn}"),
            ("C", "\\text{(C)}"),
            ("90", "90^\\circ"),
            ("2\\pi", "2 \\pi"),
            ("1e3", "1e3"),
        ] {
            assert!(answers_match(pred, gold), "{pred:?} should match {gold:?}");
        }
    }

    #[test]
    fn different_answers_do_not_match() {
        for (pred, gold) in [
            ("", "0"),
            ("  ", ""),
            ("17", "18"),
            ("0.5", "\\frac{1}{3}"),
            ("(1,2)", "(1,2]"),
            ("(1,2)", "(2,1)"),
            ("(1,2)", "(1,2,3)"),
            ("1.0001", "1"),
            ("x^2-1", "(x-1)(x+1)"),
            ("\\frac{1}{0}", "\\frac{1}{0}x"),
            ("A", "B"),
            ("3\\sqrt{13}", "\\sqrt{39}"),
        ] {
            assert!(
                !answers_match(pred, gold),
                "{pred:?} should not match {gold:?}"
            );
        }
    }

    #[test]
    fn nested_braces_and_odd_input_never_panic() {
        let pred = extract_answer("\\boxed{\\frac{\\sqrt{\\frac{1}{4}}}{2}}").unwrap();
        assert!(answers_match(&pred, "0.25"));
        for junk in [
            "{",
            "}",
            "\\",
            "\\frac",
            "\\sqrt",
            "\\frac{",
            "((",
            ")(",
            "^",
            "1^",
            "\\boxed{}",
            "-",
            ".",
            ",",
            "1,",
            "é",
            "½",
            "\\text{",
            "$$",
            "2^99999",
            "10^40",
            "\\sqrt[0]{2}",
        ] {
            let _ = normalize(junk);
            let _ = extract_answer(junk);
            let _ = answers_match(junk, junk);
            let _ = answers_match(junk, "1");
        }
        assert!(answers_match("10^40", "10^{40}"));
    }
}

#[cfg(test)]
mod shipped_data {
    use super::*;

    /// Every MATH-500 reference solution's boxed answer matches the reference answer, and
    /// every GSM8K solution's last number its `####` answer: the verifier reads the
    /// datasets' own notation.
    #[test]
    fn reference_solutions_verify() {
        let dir = crate::data::data_dir();
        let text = std::fs::read_to_string(dir.join("math500/test.jsonl")).unwrap();
        let mut misses = Vec::new();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let (sol, gold) = (
                v["solution"].as_str().unwrap(),
                v["answer"].as_str().unwrap(),
            );
            let pred = extract_answer(sol).unwrap_or_default();
            if !answers_match(&pred, gold) {
                misses.push(format!("{pred:?} vs {gold:?}"));
            }
        }
        assert!(misses.is_empty(), "{} misses: {misses:#?}", misses.len());
        let text = std::fs::read_to_string(dir.join("gsm8k/test.jsonl")).unwrap();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let answer = v["answer"].as_str().unwrap();
            let gold = gsm8k_gold(answer);
            let body = &answer[..answer.rfind("####").unwrap()];
            assert!(answers_match(&gold, &gold), "{gold}");
            assert!(
                answers_match(&format!("\\boxed{{{gold}}}"), &gold),
                "{gold}"
            );
            let _ = extract_answer(body);
        }
    }
}
