//! Verifiable task generators for R1-Zero-style training: multi-digit arithmetic and Countdown
//! (reach a target with given numbers, each used exactly once), each with an exact checker.
//!
//! A generated row is what `seek train grpo` reads: `prompt` (TRL's column: raw text in the
//! R1-Zero template, or chat messages) and `solution` (what `accuracy_reward` verifies), plus
//! the task's own columns (`task`, and `nums`/`target` for Countdown, read by
//! `countdown_reward`). Rows are a pure function of the seed (SplitMix64), so a held-out set
//! drawn with another seed is reproducible; [`disjoint`] drops any row whose question is also in
//! a training set.

use std::collections::HashSet;

use serde_json::{json, Value};

use crate::rng::SplitMix;

/// The R1-Zero prompt (DeepSeek-R1 paper, table 1), with the answer asked for in `\boxed{}` so
/// `accuracy_reward` and `seek eval` read it the same way. The text ends inside `<think>`.
pub const R1_ZERO_TEMPLATE: &str = "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The assistant first thinks about the reasoning process in the mind and then provides the user with the answer. The reasoning process is enclosed within <think> </think> tags, followed by the final answer in \\boxed{}, i.e., <think> reasoning process here </think> \\boxed{answer here}.\nUser: {question}\nAssistant: <think>";

/// How a row's `prompt` is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptFormat {
    /// Raw text in [`R1_ZERO_TEMPLATE`] (TRL's "standard" format: no chat template).
    R1Zero,
    /// One user message (TRL's "conversational" format: the model's chat template applies).
    Chat,
}

impl PromptFormat {
    /// `r1-zero` or `chat`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "r1-zero" | "r1_zero" | "raw" => Some(Self::R1Zero),
            "chat" => Some(Self::Chat),
            _ => None,
        }
    }
}

/// A task to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Task {
    /// An expression from `template`, usual precedence: each `{D}` (D a digit count, 1 to 9)
    /// is a random D-digit number, each `{op}` an operator drawn from `ops` (`+`, `-`, `*`);
    /// e.g. `{2} * {1} + {2}`.
    Arithmetic {
        /// The expression's shape.
        template: String,
        /// Operators `{op}` draws from.
        ops: String,
    },
    /// `numbers` numbers from 1 to `max_number`, and a target from 1 to 100 that an expression
    /// using each number exactly once reaches.
    Countdown {
        /// Numbers given (3 or 4 is usual).
        numbers: usize,
        /// Largest number.
        max_number: i64,
    },
}

fn question_and_answer(task: &Task, rng: &mut SplitMix) -> (String, String, Value) {
    let uniform =
        |rng: &mut SplitMix, lo: i64, hi: i64| lo + (rng.next() % (hi - lo + 1) as u64) as i64;
    match task {
        Task::Arithmetic { template, ops } => {
            let ops: Vec<char> = ops.chars().collect();
            let mut expr = String::new();
            let mut rest = template.as_str();
            while let Some(i) = rest.find('{') {
                expr.push_str(&rest[..i]);
                let j = rest[i..].find('}').map_or(rest.len(), |j| i + j);
                let field = &rest[i + 1..j.min(rest.len())];
                if field == "op" {
                    if !ops.is_empty() {
                        expr.push(ops[(rng.next() % ops.len() as u64) as usize]);
                    }
                } else {
                    let d: u32 = field.parse().unwrap_or(1).clamp(1, 9);
                    let lo = 10i64.pow(d - 1);
                    let hi = 10i64.pow(d) - 1;
                    expr.push_str(&uniform(rng, if d == 1 { 2 } else { lo }, hi).to_string());
                }
                rest = rest.get(j + 1..).unwrap_or("");
            }
            expr.push_str(rest);
            let value = eval_expr(&expr).map_or(0, |v| v.0 / v.1);
            (
                format!("What is {expr}?"),
                value.to_string(),
                json!({"task": "arithmetic"}),
            )
        }
        Task::Countdown {
            numbers,
            max_number,
        } => loop {
            let nums: Vec<i64> = (0..*numbers)
                .map(|_| uniform(rng, 1, *max_number))
                .collect();
            // A random expression tree over the numbers in a random order.
            let mut order = nums.clone();
            rng.shuffle(&mut order);
            let mut items: Vec<(String, (i64, i64))> =
                order.iter().map(|n| (n.to_string(), (*n, 1))).collect();
            while items.len() > 1 {
                let i = (rng.next() % items.len() as u64) as usize;
                let a = items.remove(i);
                let j = (rng.next() % items.len() as u64) as usize;
                let b = items.remove(j);
                let op = ['+', '-', '*', '/'][(rng.next() % 4) as usize];
                // Division by zero falls back to addition.
                let (op, v) = match apply(op, a.1, b.1) {
                    Some(v) => (op, v),
                    None => ('+', apply('+', a.1, b.1).unwrap_or((0, 1))),
                };
                items.push((format!("({} {op} {})", a.0, b.0), v));
            }
            let (_, (num, den)) = &items[0];
            if *den == 1 && (1..=100).contains(num) {
                let list = nums
                    .iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ");
                return (
                    format!(
                        "Using the numbers [{list}], create an equation that equals {num}. You can use basic arithmetic operations (+, -, *, /) and each number must be used exactly once. Give the equation as the final answer, e.g. \\boxed{{(1 + 2) * 3}}."
                    ),
                    num.to_string(),
                    json!({"task": "countdown", "nums": nums, "target": num}),
                );
            }
        },
    }
}

/// Checks an arithmetic template: `{D}` fields (D from 1 to 9) and `{op}`, with `+ - *`,
/// parentheses and spaces between; at least one number.
pub fn check_template(template: &str) -> Result<(), String> {
    let mut probe = String::new();
    let mut rest = template;
    let mut numbers = 0;
    while let Some(i) = rest.find('{') {
        probe.push_str(&rest[..i]);
        let Some(j) = rest[i..].find('}').map(|j| i + j) else {
            return Err(format!("{template:?}: a '{{' is not closed"));
        };
        match &rest[i + 1..j] {
            "op" => probe.push('+'),
            d if d.len() == 1 && ('1'..='9').contains(&d.chars().next().unwrap_or('0')) => {
                probe.push('1');
                numbers += 1;
            }
            other => {
                return Err(format!(
                    "{template:?}: {{{other}}} is neither a digit count (1-9) nor {{op}}"
                ))
            }
        }
        rest = &rest[j + 1..];
    }
    probe.push_str(rest);
    if numbers == 0 || eval_expr(&probe).is_none() {
        return Err(format!(
            "{template:?} is not an expression of {{D}} numbers, {{op}} and + - * ( ), e.g. \"{{2}} * {{1}} + {{2}}\""
        ));
    }
    Ok(())
}

/// `n` rows of `task`, seeded.
pub fn generate(task: &Task, n: usize, seed: u64, format: PromptFormat) -> Vec<Value> {
    let mut rng = SplitMix(seed ^ 0x5eed_7a5c);
    (0..n)
        .map(|_| {
            let (question, solution, mut extra) = question_and_answer(task, &mut rng);
            let prompt = match format {
                PromptFormat::R1Zero => Value::String(R1_ZERO_TEMPLATE.replace("{question}", &question)),
                PromptFormat::Chat => json!([{"role": "user", "content": format!(
                    "{question} Think step by step inside <think> </think> tags, then give the final answer after </think> in \\boxed{{}}."
                )}]),
            };
            extra["prompt"] = prompt;
            extra["solution"] = Value::String(solution);
            extra["question"] = Value::String(question);
            extra
        })
        .collect()
}

/// `rows` without those whose `question` is also in `train`, and without repeats.
pub fn disjoint(rows: Vec<Value>, train: &[Value]) -> Vec<Value> {
    let mut seen: HashSet<String> = train
        .iter()
        .filter_map(|r| r["question"].as_str().map(str::to_string))
        .collect();
    rows.into_iter()
        .filter(|r| match r["question"].as_str() {
            Some(q) => seen.insert(q.to_string()),
            None => true,
        })
        .collect()
}

/// An exact fraction (numerator, positive denominator).
type Frac = (i64, i64);

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a.abs().max(1)
    } else {
        gcd(b, a % b)
    }
}

fn norm((n, d): (i128, i128)) -> Option<Frac> {
    if d == 0 {
        return None;
    }
    let (n, d) = if d < 0 { (-n, -d) } else { (n, d) };
    let g = gcd(
        i64::try_from(n.unsigned_abs().min(i64::MAX as u128)).ok()?,
        i64::try_from(d).ok()?,
    ) as i128;
    let (n, d) = (n / g, d / g);
    Some((i64::try_from(n).ok()?, i64::try_from(d).ok()?))
}

fn apply(op: char, a: Frac, b: Frac) -> Option<Frac> {
    let (an, ad, bn, bd) = (a.0 as i128, a.1 as i128, b.0 as i128, b.1 as i128);
    match op {
        '+' => norm((an * bd + bn * ad, ad * bd)),
        '-' => norm((an * bd - bn * ad, ad * bd)),
        '*' | '×' => norm((an * bn, ad * bd)),
        '/' | '÷' => {
            if bn == 0 {
                None
            } else {
                norm((an * bd, ad * bn))
            }
        }
        _ => None,
    }
}

/// Parses and evaluates `+ - * /` with parentheses over integers, exactly; also returns the
/// numbers used. `None` for anything else (letters, unbalanced parentheses, division by zero).
pub fn eval_with_numbers(expr: &str) -> Option<(Frac, Vec<i64>)> {
    let toks = tokenize(expr)?;
    let mut p = Parser {
        toks,
        pos: 0,
        nums: Vec::new(),
    };
    let v = p.sum()?;
    (p.pos == p.toks.len()).then_some((v, p.nums))
}

fn eval_expr(expr: &str) -> Option<Frac> {
    eval_with_numbers(expr).map(|(v, _)| v)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tok {
    Num(i64),
    Op(char),
    Open,
    Close,
}

fn tokenize(s: &str) -> Option<Vec<Tok>> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            ' ' | '\t' | '\n' => {
                chars.next();
            }
            '0'..='9' => {
                let mut n: i64 = 0;
                while let Some(&d) = chars.peek() {
                    if let Some(v) = d.to_digit(10) {
                        n = n.checked_mul(10)?.checked_add(i64::from(v))?;
                        chars.next();
                    } else {
                        break;
                    }
                }
                out.push(Tok::Num(n));
            }
            '+' | '-' | '*' | '/' | '×' | '÷' => {
                out.push(Tok::Op(c));
                chars.next();
            }
            '(' | '[' | '{' => {
                out.push(Tok::Open);
                chars.next();
            }
            ')' | ']' | '}' => {
                out.push(Tok::Close);
                chars.next();
            }
            _ => return None,
        }
    }
    Some(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    nums: Vec<i64>,
}

impl Parser {
    fn peek(&self) -> Option<Tok> {
        self.toks.get(self.pos).copied()
    }

    fn sum(&mut self) -> Option<Frac> {
        let mut v = self.product()?;
        while let Some(Tok::Op(op @ ('+' | '-'))) = self.peek() {
            self.pos += 1;
            let r = self.product()?;
            v = apply(op, v, r)?;
        }
        Some(v)
    }

    fn product(&mut self) -> Option<Frac> {
        let mut v = self.atom()?;
        while let Some(Tok::Op(op @ ('*' | '/' | '×' | '÷'))) = self.peek() {
            self.pos += 1;
            let r = self.atom()?;
            v = apply(op, v, r)?;
        }
        Some(v)
    }

    fn atom(&mut self) -> Option<Frac> {
        match self.peek()? {
            Tok::Num(n) => {
                self.pos += 1;
                self.nums.push(n);
                Some((n, 1))
            }
            Tok::Open => {
                self.pos += 1;
                let v = self.sum()?;
                (self.peek()? == Tok::Close).then_some(())?;
                self.pos += 1;
                Some(v)
            }
            _ => None,
        }
    }
}

/// Countdown's checker: 1 when `answer` (the text after the reasoning) gives an equation that
/// uses every number of `nums` exactly once and equals `target`, else 0. The equation is read
/// from the last `\boxed{}`, else the last `<answer>…</answer>`, else the last line; a trailing
/// `= target` is allowed.
pub fn countdown_score(answer: &str, nums: &[i64], target: i64) -> f64 {
    let candidate = crate::verify::extract_boxed(answer)
        .or_else(|| {
            let s = answer.rfind("<answer>")?;
            let rest = &answer[s + "<answer>".len()..];
            Some(rest[..rest.find("</answer>").unwrap_or(rest.len())].to_string())
        })
        .or_else(|| {
            answer
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::to_string)
        })
        .unwrap_or_default();
    let candidate = candidate
        .replace("\\times", "*")
        .replace("\\div", "/")
        .replace("\\cdot", "*");
    let lhs = candidate.split('=').next().unwrap_or_default();
    let Some(((n, d), mut used)) = eval_with_numbers(lhs) else {
        return 0.0;
    };
    let mut want = nums.to_vec();
    used.sort_unstable();
    want.sort_unstable();
    f64::from(u8::from(d == 1 && n == target && used == want))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_answers_follow_precedence() {
        assert_eq!(eval_expr("2 + 3 * 4"), Some((14, 1)));
        assert_eq!(eval_expr("(2 + 3) * 4"), Some((20, 1)));
        assert_eq!(eval_expr("7 / 2"), Some((7, 2)));
        assert_eq!(eval_expr("1 / 0"), None);
        assert_eq!(eval_expr("2 + x"), None);
        assert_eq!(eval_expr("(2 + 3"), None);
        assert!(check_template("{2} * {1} + {2}").is_ok());
        assert!(check_template("{2} {op} {2}").is_ok());
        assert!(check_template("{2} * {x}").is_err());
        assert!(check_template("{2} * ").is_err());
        assert!(check_template("{2").is_err());
        let rows = generate(
            &Task::Arithmetic {
                template: "{2} {op} {2} {op} {1}".into(),
                ops: "+-*".into(),
            },
            50,
            1,
            PromptFormat::R1Zero,
        );
        for r in &rows {
            let q = r["question"].as_str().unwrap();
            let expr = q.trim_start_matches("What is ").trim_end_matches('?');
            assert_eq!(
                eval_expr(expr).unwrap().0.to_string(),
                r["solution"].as_str().unwrap()
            );
            assert!(r["prompt"]
                .as_str()
                .unwrap()
                .ends_with("Assistant: <think>"));
        }
    }

    #[test]
    fn every_countdown_row_is_solvable_and_checked_exactly() {
        let task = Task::Countdown {
            numbers: 4,
            max_number: 25,
        };
        let rows = generate(&task, 40, 3, PromptFormat::Chat);
        for r in &rows {
            let t = r["target"].as_i64().unwrap();
            assert!((1..=100).contains(&t));
            assert_eq!(r["nums"].as_array().unwrap().len(), 4);
        }
        let nums = [3, 5, 8];
        assert_eq!(countdown_score("so \\boxed{(8 - 5) * 3}", &nums, 9), 1.0);
        assert_eq!(
            countdown_score("<answer>3 * (8 - 5) = 9</answer>", &nums, 9),
            1.0
        );
        assert_eq!(countdown_score("\\boxed{3 \\times (8 - 5)}", &nums, 9), 1.0);
        // Wrong value, a number used twice, a number left out, a number not given.
        assert_eq!(countdown_score("\\boxed{(8 - 5) * 5}", &nums, 9), 0.0);
        assert_eq!(countdown_score("\\boxed{3 * 3}", &nums, 9), 0.0);
        assert_eq!(countdown_score("\\boxed{8 + 1}", &nums, 9), 0.0);
        assert_eq!(countdown_score("\\boxed{9}", &nums, 9), 0.0);
        assert_eq!(countdown_score("no equation here", &nums, 9), 0.0);
        // Same seed, same rows; another seed, other rows.
        assert_eq!(
            generate(&task, 5, 3, PromptFormat::Chat),
            rows[..5].to_vec()
        );
        let other = generate(&task, 40, 4, PromptFormat::Chat);
        assert!(disjoint(other, &rows).len() > 30);
    }
}
