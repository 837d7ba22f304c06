//! Expressions: CEL (the `cel` crate) inside `${{ }}` placeholders.
//!
//! * A string that is exactly one placeholder (`"${{ input.amount }}"`) takes the JSON type of the expression's
//!   value; any other string with placeholders is interpolated as a string (strings as they are, other values as
//!   JSON text). Objects and arrays are resolved recursively; object keys are kept as written.
//! * Variables: `input` (the flow input), `steps` (name → `{output, phase}`, only the steps upstream of the one
//!   being resolved, so a value never depends on timing), and in forEach instances `item` and `index`.
//! * Step names contain `-`, which CEL reads as minus: users write `steps['cooling-off'].output`; simple names
//!   may be written `steps.charge.output`. [`references`] finds both forms by walking the CEL AST.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue, operators};
use cel::objects::{Key, Map};
use cel::parser::ExpressionReferences;
use cel::{Context, Program};
use serde_json::Value;
use thiserror::Error;

/// Opening of a placeholder.
pub const OPEN: &str = "${{";
/// Closing of a placeholder.
pub const CLOSE: &str = "}}";

/// Root variables an expression may use.
pub const VARIABLES: [&str; 5] = ["input", "steps", "item", "index", "flow"];

/// Most loop iterations an expression may be estimated to take. The `cel` crate has no cost limit of its own,
/// and one expression such as `input.items.map(a, input.items.map(b, [a, b]))` over a large input would
/// otherwise hold the operator's lane (and its memory) for minutes. The estimate is the widest list or map in
/// the expression's variables raised to the nesting of its loops (see [`loop_nesting`]): deterministic, known
/// before evaluating, and an upper bound of the iterations as long as loops run over the variables' own
/// collections.
pub const MAX_LOOP_ITERATIONS: u64 = 1_000_000;

/// Why an expression could not be used.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ExprError {
    /// A `${{` without its `}}`.
    #[error("unterminated placeholder: {text:?} opens `${{{{` but never closes it with `}}}}`")]
    Unterminated {
        /// The string holding the placeholder.
        text: String,
    },
    /// A placeholder with nothing inside.
    #[error("empty placeholder in {text:?}")]
    Empty {
        /// The string holding the placeholder.
        text: String,
    },
    /// The CEL parser refused the expression.
    #[error("expression `{expr}` does not parse: {message}")]
    Parse {
        /// The expression.
        expr: String,
        /// The parser's message.
        message: String,
    },
    /// Evaluation failed (missing key, wrong types, unknown variable ...).
    #[error("expression `{expr}` failed: {message}")]
    Eval {
        /// The expression.
        expr: String,
        /// What went wrong.
        message: String,
    },
    /// The value has the wrong type for where it is used.
    #[error("{what} must be {expected}, but `{expr}` gave {got}")]
    Type {
        /// Where the value is used (`when`, `forEach` ...).
        what: String,
        /// The expected type.
        expected: String,
        /// The expression or text.
        expr: String,
        /// The value it gave, as JSON (shortened).
        got: String,
    },
    /// The expression could take more than [`MAX_LOOP_ITERATIONS`] loop iterations.
    #[error(
        "expression `{expr}` is too costly: it nests {nesting} loops (map, filter, all, exists, exists_one or \
         `in`) over values with up to {widest} entries, up to {estimate} iterations, more than the limit of \
         {limit}: loop over smaller values, or let a handler step do the work"
    )]
    TooCostly {
        /// The expression.
        expr: String,
        /// How deeply its loops nest.
        nesting: u32,
        /// The largest list or map in its variables.
        widest: u64,
        /// `widest` to the power of `nesting`.
        estimate: u64,
        /// [`MAX_LOOP_ITERATIONS`].
        limit: u64,
    },
    /// An error inside a JSON value, at a path.
    #[error("{path}: {source}")]
    At {
        /// JSON path such as `input.items[2]`.
        path: String,
        /// The error there.
        source: Box<ExprError>,
    },
}

/// A piece of a template string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment<'a> {
    /// Literal text.
    Text(&'a str),
    /// The source of a CEL expression (between `${{` and `}}`, trimmed).
    Expr(&'a str),
}

/// Whether a string holds a placeholder.
pub fn has_placeholder(s: &str) -> bool {
    s.contains(OPEN)
}

/// Splits a template string into text and expressions.
///
/// The closing `}}` is found while skipping CEL string literals and balanced braces, so map literals such as
/// `${{ {'a': {'b': 1}} }}` work.
pub fn split(text: &str) -> Result<Vec<Segment<'_>>, ExprError> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        if start > 0 {
            out.push(Segment::Text(&rest[..start]));
        }
        let body = &rest[start + OPEN.len()..];
        let end = closing(body).ok_or_else(|| ExprError::Unterminated {
            text: text.to_owned(),
        })?;
        let expr = body[..end].trim();
        if expr.is_empty() {
            return Err(ExprError::Empty {
                text: text.to_owned(),
            });
        }
        out.push(Segment::Expr(expr));
        rest = &body[end + CLOSE.len()..];
    }
    if !rest.is_empty() {
        out.push(Segment::Text(rest));
    }
    Ok(out)
}

/// Byte offset of the `}}` closing a placeholder body, skipping string literals and nested braces.
fn closing(body: &str) -> Option<usize> {
    let bytes = body.as_bytes();
    let mut depth = 0usize;
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if let Some(q) = quote {
            if b == b'\\' {
                i += 2;
                continue;
            }
            if b == q {
                quote = None;
            }
        } else {
            match b {
                b'\'' | b'"' => quote = Some(b),
                b'{' => depth += 1,
                b'}' if depth > 0 => depth -= 1,
                b'}' if bytes.get(i + 1) == Some(&b'}') => return Some(i),
                _ => {}
            }
        }
        i += 1;
    }
    None
}

/// If the whole string is exactly one placeholder, its expression.
pub fn single_expression(text: &str) -> Option<&str> {
    match split(text).ok()?.as_slice() {
        [Segment::Expr(e)] if text.starts_with(OPEN) && text.ends_with(CLOSE) => Some(e),
        _ => None,
    }
}

/// Compiles one CEL expression.
pub fn compile(expr: &str) -> Result<Program, ExprError> {
    Program::compile(expr).map_err(|e| ExprError::Parse {
        expr: expr.to_owned(),
        message: e.to_string().replace('\n', " "),
    })
}

/// The values expressions can see.
#[derive(Clone, Debug)]
pub struct Vars {
    input: cel::Value,
    steps: cel::Value,
    item: Option<cel::Value>,
    index: Option<cel::Value>,
    /// The main steps' outcome, in exit steps.
    flow: Option<cel::Value>,
    /// The largest number of entries of a list or map in these variables (at least 1): what one loop of an
    /// expression can iterate over.
    widest: u64,
}

impl Vars {
    /// Variables with the flow input and a `steps` object (`{name: {output, phase}}`).
    pub fn new(input: &Value, steps: &serde_json::Map<String, Value>) -> Self {
        let steps_len = steps.len() as u64;
        let widest = steps
            .values()
            .map(widest)
            .fold(widest(input).max(steps_len), u64::max);
        Self {
            input: to_cel(input),
            steps: object_to_cel(steps),
            item: None,
            index: None,
            flow: None,
            widest,
        }
    }

    /// The same variables plus `flow` (`{phase, reason, message, failedSteps}`), which exit steps see.
    pub fn with_flow(&self, flow: &Value) -> Self {
        Self {
            flow: Some(to_cel(flow)),
            widest: self.widest.max(widest(flow)),
            ..self.clone()
        }
    }

    /// The same variables plus a forEach instance's `item` and `index`.
    pub fn with_item(&self, item: &Value, index: u32) -> Self {
        Self {
            item: Some(to_cel(item)),
            index: Some(cel::Value::Int(i64::from(index))),
            widest: self.widest.max(widest(item)),
            ..self.clone()
        }
    }

    /// A context holding the variables `refs` names. The interpreter converts every variable added to its own
    /// form, a walk of the whole value, so an instance's `${{ item }}` must not pay for converting a forEach's
    /// whole `input` each time.
    fn context(&self, refs: &ExpressionReferences<'_>) -> Context<'_> {
        let mut ctx = Context::default();
        let vars = [
            ("input", Some(&self.input)),
            ("steps", Some(&self.steps)),
            ("item", self.item.as_ref()),
            ("index", self.index.as_ref()),
            ("flow", self.flow.as_ref()),
        ];
        for (name, value) in vars {
            if let Some(value) = value.filter(|_| refs.has_variable(name)) {
                ctx.add_variable_from_value(name, value.clone());
            }
        }
        ctx
    }
}

/// Converts JSON to a CEL value; integers become `int` (or `uint` beyond i64), other numbers `double`.
pub fn to_cel(v: &Value) -> cel::Value {
    match v {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                cel::Value::Int(i)
            } else if let Some(u) = n.as_u64() {
                cel::Value::UInt(u)
            } else {
                cel::Value::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(a) => cel::Value::List(Arc::new(a.iter().map(to_cel).collect())),
        Value::Object(o) => object_to_cel(o),
    }
}

fn object_to_cel(o: &serde_json::Map<String, Value>) -> cel::Value {
    let map: HashMap<Key, cel::Value> = o
        .iter()
        .map(|(k, v)| (Key::String(Arc::new(k.clone())), to_cel(v)))
        .collect();
    cel::Value::Map(Map { map: Arc::new(map) })
}

/// The largest number of entries of a list or map in `v` (at least 1). Iterative: values can be deep.
fn widest(v: &Value) -> u64 {
    let mut widest = 1;
    let mut todo = vec![v];
    while let Some(v) = todo.pop() {
        match v {
            Value::Array(items) => {
                widest = widest.max(items.len() as u64);
                todo.extend(items);
            }
            Value::Object(map) => {
                widest = widest.max(map.len() as u64);
                todo.extend(map.values());
            }
            _ => {}
        }
    }
    widest
}

/// How deeply the loops of an expression nest: a comprehension (the macros `map`, `filter`, `all`, `exists`,
/// `exists_one`) or a membership test `in` (a scan of a list) is a loop, and a loop in the body of another
/// counts one level deeper. What a loop iterates over, or what follows it, is at the loop's own level.
pub fn loop_nesting(e: &IdedExpr) -> u32 {
    match &e.expr {
        Expr::Comprehension(c) => {
            let body = loop_nesting(&c.loop_cond).max(loop_nesting(&c.loop_step));
            (1 + body)
                .max(loop_nesting(&c.iter_range))
                .max(loop_nesting(&c.accu_init))
                .max(loop_nesting(&c.result))
        }
        Expr::Call(call) => {
            let inner = call
                .target
                .iter()
                .map(|t| loop_nesting(t))
                .chain(call.args.iter().map(loop_nesting))
                .max()
                .unwrap_or(0);
            if call.func_name == operators::IN {
                inner.max(1)
            } else {
                inner
            }
        }
        Expr::Select(sel) => loop_nesting(&sel.operand),
        Expr::List(l) => l.elements.iter().map(loop_nesting).max().unwrap_or(0),
        Expr::Map(m) => entries_nesting(&m.entries),
        Expr::Struct(s) => entries_nesting(&s.entries),
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => 0,
    }
}

fn entries_nesting(entries: &[cel::common::ast::IdedEntryExpr]) -> u32 {
    entries
        .iter()
        .map(|e| match &e.expr {
            EntryExpr::MapEntry(m) => loop_nesting(&m.key).max(loop_nesting(&m.value)),
            EntryExpr::StructField(f) => loop_nesting(&f.value),
        })
        .max()
        .unwrap_or(0)
}

/// Refuses an expression whose loops could take more than [`MAX_LOOP_ITERATIONS`] iterations over `vars`.
fn check_cost(expr: &str, program: &Program, vars: &Vars) -> Result<(), ExprError> {
    let nesting = loop_nesting(program.expression());
    let estimate = vars.widest.saturating_pow(nesting);
    if estimate > MAX_LOOP_ITERATIONS {
        return Err(ExprError::TooCostly {
            expr: expr.to_owned(),
            nesting,
            widest: vars.widest,
            estimate,
            limit: MAX_LOOP_ITERATIONS,
        });
    }
    Ok(())
}

/// Evaluates one CEL expression (no `${{ }}` around it) to JSON, if its loops stay within
/// [`MAX_LOOP_ITERATIONS`].
pub fn eval(expr: &str, vars: &Vars) -> Result<Value, ExprError> {
    let program = compile(expr)?;
    check_cost(expr, &program, vars)?;
    let ctx = vars.context(&program.references());
    let value = program.execute(&ctx).map_err(|e| ExprError::Eval {
        expr: expr.to_owned(),
        message: e.to_string(),
    })?;
    value.json().map_err(|e| ExprError::Eval {
        expr: expr.to_owned(),
        message: format!("the value cannot be written as JSON: {e}"),
    })
}

/// Resolves a template string: one placeholder keeps its type, otherwise interpolation as a string.
pub fn resolve_str(text: &str, vars: &Vars) -> Result<Value, ExprError> {
    if !has_placeholder(text) {
        return Ok(Value::String(text.to_owned()));
    }
    if let Some(expr) = single_expression(text) {
        return eval(expr, vars);
    }
    let mut out = String::new();
    for seg in split(text)? {
        match seg {
            Segment::Text(t) => out.push_str(t),
            Segment::Expr(e) => match eval(e, vars)? {
                Value::String(s) => out.push_str(&s),
                other => out.push_str(&other.to_string()),
            },
        }
    }
    Ok(Value::String(out))
}

/// Resolves every placeholder in a JSON value, recursively.
pub fn resolve(value: &Value, vars: &Vars) -> Result<Value, ExprError> {
    resolve_at(value, vars, &mut String::new())
}

fn resolve_at(value: &Value, vars: &Vars, path: &mut String) -> Result<Value, ExprError> {
    match value {
        Value::String(s) => resolve_str(s, vars).map_err(|e| at(path, e)),
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                out.push(resolve_at(item, vars, path)?);
                path.truncate(len);
            }
            Ok(Value::Array(out))
        }
        Value::Object(map) => {
            let mut out = serde_json::Map::with_capacity(map.len());
            for (k, v) in map {
                let len = path.len();
                push_key(path, k);
                out.insert(k.clone(), resolve_at(v, vars, path)?);
                path.truncate(len);
            }
            Ok(Value::Object(out))
        }
        other => Ok(other.clone()),
    }
}

fn at(path: &str, e: ExprError) -> ExprError {
    if path.is_empty() {
        e
    } else {
        ExprError::At {
            path: path.to_owned(),
            source: Box::new(e),
        }
    }
}

/// Appends `.key` (or `['key']` when the key is not a simple name) to a JSON path.
pub fn push_key(path: &mut String, key: &str) {
    let simple = !key.is_empty()
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !key.starts_with(|c: char| c.is_ascii_digit());
    if simple {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key);
    } else {
        path.push_str(&format!("[{key:?}]"));
    }
}

/// The expression of a condition such as `when`: `${{ expr }}` or, for convenience, a bare CEL expression.
pub fn condition_expression(text: &str) -> Result<&str, ExprError> {
    if !has_placeholder(text) {
        return Ok(text.trim());
    }
    single_expression(text.trim()).ok_or_else(|| ExprError::Type {
        what: "a condition".into(),
        expected: "exactly one `${{ ... }}` expression".into(),
        expr: text.to_owned(),
        got: "text around it".into(),
    })
}

/// Evaluates a condition (`when`); it must give a bool.
pub fn eval_condition(text: &str, vars: &Vars) -> Result<bool, ExprError> {
    let expr = condition_expression(text)?;
    match eval(expr, vars)? {
        Value::Bool(b) => Ok(b),
        other => Err(ExprError::Type {
            what: "`when`".into(),
            expected: "true or false".into(),
            expr: expr.to_owned(),
            got: short_json(&other),
        }),
    }
}

/// A JSON value as text, cut to 200 bytes for messages.
pub fn short_json(v: &Value) -> String {
    let s = v.to_string();
    if s.len() <= 200 {
        s
    } else {
        let mut end = 200;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    }
}

/// What an expression refers to, found in its AST.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct References {
    /// Steps named literally: `steps.x` or `steps['x']`.
    pub steps: BTreeSet<String>,
    /// Root variables used (`input`, `steps`, `item`, `index`, or unknown ones).
    pub variables: BTreeSet<String>,
    /// `steps[...]` with a computed key, which cannot be checked before running.
    pub dynamic_steps: bool,
}

/// Parses an expression and lists the steps and variables it refers to.
pub fn references(expr: &str) -> Result<References, ExprError> {
    let program = compile(expr)?;
    let mut refs = References::default();
    walk(program.expression(), &mut Vec::new(), &mut refs);
    Ok(refs)
}

fn is_free_ident(e: &IdedExpr, name: &str, bound: &[String]) -> bool {
    matches!(&e.expr, Expr::Ident(n) if n == name && !bound.iter().any(|b| b == name))
}

fn walk(e: &IdedExpr, bound: &mut Vec<String>, refs: &mut References) {
    match &e.expr {
        Expr::Ident(name) => {
            if !bound.iter().any(|b| b == name) {
                refs.variables.insert(name.clone());
                if name == "steps" {
                    refs.dynamic_steps = true;
                }
            }
        }
        Expr::Select(sel) => {
            if is_free_ident(&sel.operand, "steps", bound) {
                refs.variables.insert("steps".into());
                refs.steps.insert(sel.field.clone());
            } else {
                walk(&sel.operand, bound, refs);
            }
        }
        Expr::Call(call) => {
            if call.func_name == operators::INDEX
                && call.target.is_none()
                && call.args.len() == 2
                && is_free_ident(&call.args[0], "steps", bound)
            {
                refs.variables.insert("steps".into());
                match &call.args[1].expr {
                    Expr::Literal(LiteralValue::String(s)) => {
                        refs.steps.insert(s.inner().to_owned());
                    }
                    _ => {
                        refs.dynamic_steps = true;
                        walk(&call.args[1], bound, refs);
                    }
                }
                return;
            }
            if let Some(t) = &call.target {
                walk(t, bound, refs);
            }
            for a in &call.args {
                walk(a, bound, refs);
            }
        }
        Expr::Comprehension(c) => {
            walk(&c.iter_range, bound, refs);
            walk(&c.accu_init, bound, refs);
            let before = bound.len();
            bound.push(c.iter_var.clone());
            if let Some(v2) = &c.iter_var2 {
                bound.push(v2.clone());
            }
            bound.push(c.accu_var.clone());
            walk(&c.loop_cond, bound, refs);
            walk(&c.loop_step, bound, refs);
            walk(&c.result, bound, refs);
            bound.truncate(before);
        }
        Expr::List(l) => {
            for el in &l.elements {
                walk(el, bound, refs);
            }
        }
        Expr::Map(m) => walk_entries(&m.entries, bound, refs),
        Expr::Struct(s) => walk_entries(&s.entries, bound, refs),
        Expr::Literal(_) | Expr::Unspecified => {}
    }
}

fn walk_entries(
    entries: &[cel::common::ast::IdedEntryExpr],
    bound: &mut Vec<String>,
    refs: &mut References,
) {
    for entry in entries {
        match &entry.expr {
            EntryExpr::MapEntry(me) => {
                walk(&me.key, bound, refs);
                walk(&me.value, bound, refs);
            }
            EntryExpr::StructField(sf) => walk(&sf.value, bound, refs),
        }
    }
}

/// Every expression inside a JSON value, with its JSON path (relative to `base`). Template errors (an
/// unterminated placeholder) are returned as expressions-that-failed.
pub fn expressions_in(value: &Value, base: &str) -> Vec<(String, Result<String, ExprError>)> {
    let mut out = Vec::new();
    collect(value, &mut base.to_owned(), &mut out);
    out
}

fn collect(value: &Value, path: &mut String, out: &mut Vec<(String, Result<String, ExprError>)>) {
    match value {
        Value::String(s) if has_placeholder(s) => match split(s) {
            Ok(segs) => {
                for seg in segs {
                    if let Segment::Expr(e) = seg {
                        out.push((path.clone(), Ok(e.to_owned())));
                    }
                }
            }
            Err(e) => out.push((path.clone(), Err(e))),
        },
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                collect(item, path, out);
                path.truncate(len);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                let len = path.len();
                push_key(path, k);
                collect(v, path, out);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn vars() -> Vars {
        let steps = json!({
            "charge": {"output": {"id": "ch_1", "amount": 99.99}, "phase": "Succeeded"},
            "cooling-off": {"output": null, "phase": "Succeeded"},
            "approval": {"output": {"approved": true}, "phase": "Succeeded"},
        });
        Vars::new(
            &json!({"orderId": "1234", "amount": 99.99, "items": ["a", "b", "c"], "count": 3}),
            steps.as_object().unwrap(),
        )
    }

    fn nesting(expr: &str) -> u32 {
        loop_nesting(compile(expr).unwrap().expression())
    }

    #[test]
    fn loops_are_counted_where_they_nest() {
        assert_eq!(nesting("input.a + 1"), 0);
        assert_eq!(nesting("input.items.map(x, x + 1)"), 1);
        assert_eq!(nesting("input.items.filter(x, x > 1).map(x, x * 2)"), 1);
        assert_eq!(
            nesting("size(input.items.map(x, x)) + size(input.b.all(y, y))"),
            1
        );
        assert_eq!(nesting("input.items.map(a, input.items.map(b, [a, b]))"), 2);
        assert_eq!(nesting("input.items.exists(a, a in input.other)"), 2);
        assert_eq!(
            nesting("{'k': input.items.all(a, a.tags.exists(t, t.all(c, c)))}"),
            3
        );
        assert_eq!(nesting("'x' in input.items"), 1);
    }

    #[test]
    fn costly_expressions_fail_before_they_run() {
        let items: Vec<Value> = (0..2000).map(|i| json!({"id": i, "tags": ["a"]})).collect();
        let v = Vars::new(&json!({"items": items}), &serde_json::Map::new());
        // One loop over 2,000 items, and a nested one over their short lists: within the limit of 1,000,000
        // only as long as the widest list is at most 1,000 entries, so only the single loop passes.
        assert_eq!(
            eval("size(input.items.filter(x, x.id % 2 == 0))", &v).unwrap(),
            json!(1000)
        );
        let e = eval("input.items.map(a, input.items.map(b, [a.id, b.id]))", &v).unwrap_err();
        assert!(
            matches!(
                e,
                ExprError::TooCostly {
                    nesting: 2,
                    widest: 2000,
                    ..
                }
            ),
            "{e:?}"
        );
        let message = e.to_string();
        assert!(
            message.contains("is too costly: it nests 2 loops")
                && message.contains("up to 2000 entries, up to 4000000 iterations")
                && message.contains("limit of 1000000"),
            "{message}"
        );
        // Deep nesting refuses even small values: 8^7 > 1,000,000.
        let small = Vars::new(
            &json!({"l": [1, 2, 3, 4, 5, 6, 7, 8]}),
            &serde_json::Map::new(),
        );
        let seven = "input.l.all(a, input.l.all(b, input.l.all(c, input.l.all(d, \
                     input.l.all(e, input.l.all(f, input.l.all(g, true)))))))";
        assert!(matches!(
            eval(seven, &small),
            Err(ExprError::TooCostly { .. })
        ));
        assert_eq!(
            eval("input.l.all(a, input.l.all(b, a * b > 0))", &small).unwrap(),
            json!(true)
        );
        // A forEach item counts too.
        let with_item = Vars::new(&json!({}), &serde_json::Map::new()).with_item(&json!(items), 0);
        assert!(matches!(
            eval("item.map(a, item.map(b, 1))", &with_item),
            Err(ExprError::TooCostly { .. })
        ));
    }

    #[test]
    fn single_placeholder_keeps_json_type() {
        let v = vars();
        assert_eq!(
            resolve_str("${{ input.amount }}", &v).unwrap(),
            json!(99.99)
        );
        assert_eq!(resolve_str("${{ input.count }}", &v).unwrap(), json!(3));
        assert_eq!(
            resolve_str("${{ input.items }}", &v).unwrap(),
            json!(["a", "b", "c"])
        );
        assert_eq!(
            resolve_str("${{steps.approval.output}}", &v).unwrap(),
            json!({"approved": true})
        );
        assert_eq!(
            resolve_str("${{ input.count > 2 }}", &v).unwrap(),
            json!(true)
        );
    }

    #[test]
    fn interpolates_strings() {
        let v = vars();
        assert_eq!(
            resolve_str("order ${{ input.orderId }} of ${{ input.amount }}", &v).unwrap(),
            json!("order 1234 of 99.99")
        );
        assert_eq!(
            resolve_str("items: ${{ input.items }}", &v).unwrap(),
            json!("items: [\"a\",\"b\",\"c\"]")
        );
        assert_eq!(
            resolve_str(" ${{ input.count }}", &v).unwrap(),
            json!(" 3"),
            "text around a placeholder makes a string"
        );
        assert_eq!(resolve_str("plain", &v).unwrap(), json!("plain"));
    }

    #[test]
    fn resolves_recursively() {
        let v = vars();
        let input = json!({
            "orderId": "${{ input.orderId }}",
            "nested": {"list": ["${{ input.count }}", "x-${{ input.orderId }}", 5, null]},
            "charge": "${{ steps.charge.output.id }}",
        });
        assert_eq!(
            resolve(&input, &v).unwrap(),
            json!({
                "orderId": "1234",
                "nested": {"list": [3, "x-1234", 5, null]},
                "charge": "ch_1",
            })
        );
    }

    #[test]
    fn dashed_step_names_by_index() {
        let v = vars();
        assert_eq!(
            resolve_str("${{ steps['cooling-off'].phase }}", &v).unwrap(),
            json!("Succeeded")
        );
    }

    #[test]
    fn item_and_index() {
        let v = vars().with_item(&json!({"sku": "a"}), 2);
        assert_eq!(
            resolve(&json!({"sku": "${{ item.sku }}", "n": "${{ index }}"}), &v).unwrap(),
            json!({"sku": "a", "n": 2})
        );
        // Without an item, `item` is an undeclared variable.
        assert!(matches!(
            resolve_str("${{ item }}", &vars()),
            Err(ExprError::Eval { .. })
        ));
    }

    #[test]
    fn every_variable_an_expression_names_is_visible_even_inside_loops_and_has() {
        let v = vars().with_item(&json!({"sku": "b"}), 1);
        let cases = [
            (
                "input.items.map(x, x + item.sku)",
                json!(["ab", "bb", "cb"]),
            ),
            (
                "input.items.filter(x, x == input.items[index])",
                json!(["b"]),
            ),
            ("[1, 2].all(n, steps.approval.output.approved)", json!(true)),
            ("has(input.orderId) && !has(item.price)", json!(true)),
            (
                "{'n': index, 'id': steps['charge'].output.id}",
                json!({"n": 1, "id": "ch_1"}),
            ),
            // A loop variable named like a flow variable shadows it inside the loop only.
            ("[7].map(item, item + index)", json!([8])),
        ];
        for (expr, want) in cases {
            assert_eq!(eval(expr, &v).unwrap(), want, "{expr}");
        }
        // A variable not given to this evaluation is still an error, not a null.
        assert!(matches!(
            eval("flow.phase", &v),
            Err(ExprError::Eval { .. })
        ));
    }

    #[test]
    fn braces_and_strings_inside_placeholders() {
        let v = vars();
        assert_eq!(
            resolve_str("${{ {'a': {'b': 1}} }}", &v).unwrap(),
            json!({"a": {"b": 1}})
        );
        assert_eq!(resolve_str("${{ '}}' }}", &v).unwrap(), json!("}}"));
    }

    #[test]
    fn clear_errors() {
        let v = vars();
        let e = resolve(&json!({"a": {"b": "${{ input.nope }}"}}), &v).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("a.b: expression `input.nope` failed"),
            "{msg}"
        );
        assert!(matches!(
            resolve_str("${{ input.orderId", &v),
            Err(ExprError::Unterminated { .. })
        ));
        assert!(matches!(
            resolve_str("${{ }}", &v),
            Err(ExprError::Empty { .. })
        ));
        assert!(matches!(
            resolve_str("${{ 1 + }}", &v),
            Err(ExprError::Parse { .. })
        ));
    }

    #[test]
    fn conditions() {
        let v = vars();
        assert!(eval_condition("${{ steps.approval.output.approved == true }}", &v).unwrap());
        assert!(!eval_condition("input.count < 2", &v).unwrap());
        assert!(matches!(
            eval_condition("${{ input.count }}", &v),
            Err(ExprError::Type { .. })
        ));
        assert!(eval_condition("x ${{ true }}", &v).is_err());
    }

    #[test]
    fn finds_references_in_the_ast() {
        let r = references(
            "steps.charge.output.id + steps['cooling-off'].phase + input.x + string(size(steps['a-b'].output))",
        )
        .unwrap();
        assert_eq!(
            r.steps.iter().map(String::as_str).collect::<Vec<_>>(),
            ["a-b", "charge", "cooling-off"]
        );
        assert!(!r.dynamic_steps);
        assert!(r.variables.contains("input") && r.variables.contains("steps"));

        let r = references("steps[input.which].output").unwrap();
        assert!(r.dynamic_steps);

        // Comprehension variables are not free variables.
        let r = references("input.items.map(x, x + 'a')").unwrap();
        assert_eq!(
            r.variables.iter().map(String::as_str).collect::<Vec<_>>(),
            ["input"]
        );
        let r = references("has(steps.charge.output.id) && nope > 1").unwrap();
        assert!(r.steps.contains("charge"));
        assert!(r.variables.contains("nope"));

        // `steps.cooling-off` parses as a subtraction: the step found is `cooling`.
        let r = references("steps.cooling-off.output").unwrap();
        assert!(r.steps.contains("cooling"));
    }

    #[test]
    fn lists_expressions_with_paths() {
        let found = expressions_in(
            &json!({"a": ["x", "${{ input.a }} and ${{ input.b }}"], "my-key": "${{ 1 }}"}),
            "spec.steps[0].input",
        );
        let paths: Vec<_> = found
            .iter()
            .map(|(p, e)| (p.as_str(), e.clone().unwrap()))
            .collect();
        assert_eq!(
            paths,
            [
                ("spec.steps[0].input.a[1]", "input.a".to_owned()),
                ("spec.steps[0].input.a[1]", "input.b".to_owned()),
                ("spec.steps[0].input[\"my-key\"]", "1".to_owned()),
            ]
        );
    }
}
