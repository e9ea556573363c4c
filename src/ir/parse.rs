//! The IR text format, parsing side: `parse(print(g)) == g` for every canonical graph.
//!
//! Value names in the text (`%7`) may be any numbers; they are renumbered in order of definition.
//! A value must be defined before it is used.

use super::attrs::{self, Attr, AttrValue};
use super::{DType, Dim, Graph, Op, TensorType, ValueId};
use std::collections::HashMap;
use std::fmt;

/// A syntax or reference error, with its 1-based position.
#[derive(Clone, Debug, PartialEq)]
pub struct ParseError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// What went wrong.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}:{}: {}", self.line, self.col, self.message)
    }
}

impl std::error::Error for ParseError {}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Num(String),
    Str(String),
    Value(u32),
    At(String),
    Punct(char),
    Eof,
}

struct Lexer<'a> {
    chars: std::iter::Peekable<std::str::CharIndices<'a>>,
    src: &'a str,
}

/// A token and where it starts (byte offset).
type Spanned = (Tok, usize);

impl<'a> Lexer<'a> {
    fn tokens(src: &'a str) -> Result<Vec<Spanned>, (usize, String)> {
        let mut lx = Lexer { chars: src.char_indices().peekable(), src };
        let mut out = vec![];
        loop {
            let t = lx.next_tok()?;
            let done = t.0 == Tok::Eof;
            out.push(t);
            if done {
                return Ok(out);
            }
        }
    }

    fn take_while(&mut self, start: usize, f: impl Fn(char) -> bool) -> &'a str {
        let mut end = start;
        while let Some(&(i, c)) = self.chars.peek() {
            if !f(c) {
                break;
            }
            end = i + c.len_utf8();
            self.chars.next();
        }
        &self.src[start..end.max(start)]
    }

    fn next_tok(&mut self) -> Result<Spanned, (usize, String)> {
        while let Some(&(i, c)) = self.chars.peek() {
            if c == '#' {
                self.take_while(i, |c| c != '\n');
            } else if c.is_whitespace() {
                self.chars.next();
            } else {
                break;
            }
        }
        let Some(&(start, c)) = self.chars.peek() else { return Ok((Tok::Eof, self.src.len())) };
        let tok = match c {
            '"' => {
                self.chars.next();
                Tok::Str(self.string(start)?)
            }
            '%' => {
                self.chars.next();
                let digits = self.take_while(start + 1, |c| c.is_ascii_digit());
                Tok::Value(digits.parse().map_err(|_| (start, "expected digits after `%`".to_string()))?)
            }
            '@' => {
                self.chars.next();
                if matches!(self.chars.peek(), Some(&(_, '"'))) {
                    let q = self.chars.next().map_or(start, |(i, _)| i);
                    Tok::At(self.string(q)?)
                } else {
                    Tok::At(self.take_while(start + 1, super::print::is_name_char).to_string())
                }
            }
            c if c.is_ascii_digit() || c == '-' => {
                Tok::Num(self.take_while(start, |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+')).to_string())
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                Tok::Ident(self.take_while(start, |c| c.is_ascii_alphanumeric() || c == '_').to_string())
            }
            c if "=,:{}[]()".contains(c) => {
                self.chars.next();
                Tok::Punct(c)
            }
            other => return Err((start, format!("unexpected character `{other}`"))),
        };
        Ok((tok, start))
    }

    fn string(&mut self, start: usize) -> Result<String, (usize, String)> {
        let mut s = String::new();
        while let Some((_, c)) = self.chars.next() {
            match c {
                '"' => return Ok(s),
                '\\' => match self.chars.next() {
                    Some((_, e @ ('"' | '\\'))) => s.push(e),
                    _ => return Err((start, "bad escape in string".into())),
                },
                c => s.push(c),
            }
        }
        Err((start, "unterminated string".into()))
    }
}

struct Parser<'a> {
    src: &'a str,
    toks: Vec<Spanned>,
    pos: usize,
    g: Graph,
    names: HashMap<u32, ValueId>,
    /// Nesting of the attribute value being parsed (lists, calls, keyed arguments).
    depth: usize,
}

/// Deepest nesting of attribute values (`[[1]]`, `f(g(x))`): real graphs use two or three levels;
/// the limit keeps hostile text from exhausting the stack.
const MAX_ATTR_DEPTH: usize = 32;

/// Parses a graph from its text form.
pub fn parse(src: &str) -> Result<Graph, ParseError> {
    let toks = Lexer::tokens(src).map_err(|(off, msg)| error_at(src, off, msg))?;
    let mut p = Parser { src, toks, pos: 0, g: Graph::default(), names: HashMap::new(), depth: 0 };
    p.graph()?;
    Ok(p.g)
}

fn error_at(src: &str, offset: usize, message: String) -> ParseError {
    let before = &src[..offset.min(src.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    ParseError { line, col, message }
}

impl Parser<'_> {
    fn peek(&self) -> &Tok {
        &self.toks[self.pos].0
    }

    fn bump(&mut self) -> Tok {
        let t = self.toks[self.pos].0.clone();
        if t != Tok::Eof {
            self.pos += 1;
        }
        t
    }

    fn err<T>(&self, msg: impl Into<String>) -> Result<T, ParseError> {
        self.err_at(self.pos, msg)
    }

    /// An error located at token `index`.
    fn err_at<T>(&self, index: usize, msg: impl Into<String>) -> Result<T, ParseError> {
        Err(error_at(self.src, self.toks[index].1, msg.into()))
    }

    fn eat(&mut self, c: char) -> bool {
        if *self.peek() == Tok::Punct(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char) -> Result<(), ParseError> {
        if self.eat(c) {
            Ok(())
        } else {
            self.err(format!("expected `{c}`, found {}", describe(self.peek())))
        }
    }

    fn keyword(&mut self, kw: &str) -> Result<(), ParseError> {
        match self.peek() {
            Tok::Ident(s) if s == kw => {
                self.pos += 1;
                Ok(())
            }
            other => self.err(format!("expected `{kw}`, found {}", describe(other))),
        }
    }

    fn graph(&mut self) -> Result<(), ParseError> {
        self.keyword("graph")?;
        match self.bump() {
            Tok::Str(s) => self.g.name = s,
            _ => return self.err("expected the graph name as a string"),
        }
        self.expect('{')?;
        loop {
            match self.peek().clone() {
                Tok::Ident(s) if s == "sym" => self.symbol()?,
                Tok::Ident(s) if s == "return" => self.returns()?,
                Tok::Ident(s) if s == "state" => self.state()?,
                Tok::Value(_) => self.node()?,
                Tok::Punct('}') => break,
                other => return self.err(format!("expected a node, `sym`, `return` or `}}`, found {}", describe(&other))),
            }
        }
        self.expect('}')?;
        match self.peek() {
            Tok::Eof => Ok(()),
            other => self.err(format!("unexpected {} after the graph", describe(other))),
        }
    }

    fn symbol(&mut self) -> Result<(), ParseError> {
        self.keyword("sym")?;
        let Tok::Ident(name) = self.bump() else { return self.err("expected a symbol name") };
        if self.g.symbol(&name).is_some() {
            return self.err(format!("symbol `{name}` declared twice"));
        }
        self.keyword("max")?;
        self.expect('=')?;
        let max = self.number::<u64>()?;
        self.g.add_symbol(name, max);
        Ok(())
    }

    fn number<T: std::str::FromStr>(&mut self) -> Result<T, ParseError> {
        match self.bump() {
            Tok::Num(s) => s.parse().or_else(|_| self.err(format!("bad number `{s}`"))),
            other => self.err(format!("expected a number, found {}", describe(&other))),
        }
    }

    fn use_value(&mut self) -> Result<ValueId, ParseError> {
        match self.bump() {
            Tok::Value(n) => match self.names.get(&n) {
                Some(&v) => Ok(v),
                None => {
                    self.pos -= 1;
                    self.err(format!("%{n} is used before it is defined"))
                }
            },
            other => self.err(format!("expected a value, found {}", describe(&other))),
        }
    }

    fn returns(&mut self) -> Result<(), ParseError> {
        self.keyword("return")?;
        loop {
            let Tok::Str(name) = self.bump() else { return self.err("expected an output name string") };
            self.expect('=')?;
            let v = self.use_value()?;
            self.g.outputs.push((name, v));
            if !self.eat(',') {
                return Ok(());
            }
        }
    }

    /// `state "input" append "update" axis=N`.
    fn state(&mut self) -> Result<(), ParseError> {
        self.keyword("state")?;
        let Tok::Str(input) = self.bump() else { return self.err("expected the state's input name string") };
        self.keyword("append")?;
        let Tok::Str(update) = self.bump() else { return self.err("expected the state's update output name string") };
        self.keyword("axis")?;
        self.expect('=')?;
        let axis = self.number::<usize>()?;
        self.g.state.push(crate::ir::StateSlot { input, update, axis });
        Ok(())
    }

    fn node(&mut self) -> Result<(), ParseError> {
        let mut defs = vec![];
        loop {
            let Tok::Value(n) = self.bump() else { return self.err("expected a value name") };
            defs.push((n, self.pos - 1));
            if !self.eat(',') {
                break;
            }
        }
        self.expect('=')?;
        let op_at = self.pos;
        let Tok::Ident(mnemonic) = self.bump() else { return self.err("expected an op name") };
        let head = self.head(&mnemonic)?;
        let mut inputs = vec![];
        while let Tok::Value(_) = self.peek() {
            inputs.push(self.use_value()?);
            if !self.eat(',') {
                break;
            }
        }
        let attr_list = if *self.peek() == Tok::Punct('{') { self.attrs()? } else { vec![] };
        let op = match head {
            Some(op) => op,
            None => {
                let (op, refs) = attrs::decode(&mnemonic, &attr_list).or_else(|m| self.err_at(op_at, m))?;
                inputs.extend(refs);
                op
            }
        };
        self.expect(':')?;
        let mut types = vec![self.ty()?];
        while self.eat(',') {
            types.push(self.ty()?);
        }
        let name = self.loc()?;
        if types.len() != defs.len() {
            return self.err_at(defs[0].1, format!("{} value(s) defined but {} type(s) given", defs.len(), types.len()));
        }
        let id = self.g.add_node(op, &inputs, types, name);
        for (&(n, off), &v) in defs.iter().zip(self.g.nodes[id].outputs.clone().iter()) {
            if self.names.insert(n, v).is_some() {
                return Err(error_at(self.src, self.toks[off].1, format!("%{n} is defined twice")));
            }
        }
        Ok(())
    }

    /// The inline operand of `input "name"`, `weight @name` and `scalar 1.0`.
    fn head(&mut self, mnemonic: &str) -> Result<Option<Op>, ParseError> {
        Ok(Some(match mnemonic {
            "input" => match self.bump() {
                Tok::Str(name) => Op::Input { name },
                _ => return self.err("input needs its binding name as a string"),
            },
            "weight" => match self.bump() {
                Tok::At(name) => Op::Weight { name },
                _ => return self.err("weight needs `@name`"),
            },
            "scalar" => match self.bump() {
                Tok::Num(s) | Tok::Ident(s) => Op::Scalar { value: s.parse().or_else(|_| self.err(format!("bad number `{s}`")))? },
                _ => return self.err("scalar needs a number"),
            },
            _ => return Ok(None),
        }))
    }

    fn attrs(&mut self) -> Result<Vec<Attr>, ParseError> {
        self.expect('{')?;
        let mut out = vec![];
        while !self.eat('}') {
            let value = self.attr_value()?;
            let attr = match (&value, self.eat('=')) {
                (AttrValue::Ident(k), true) => Attr { key: Some(k.clone()), value: self.attr_value()? },
                (_, true) => return self.err("attribute keys must be names"),
                (_, false) => Attr { key: None, value },
            };
            out.push(attr);
            if !self.eat(',') {
                self.expect('}')?;
                break;
            }
        }
        Ok(out)
    }

    /// One attribute value, at most [`MAX_ATTR_DEPTH`] levels deep.
    fn attr_value(&mut self) -> Result<AttrValue, ParseError> {
        if self.depth >= MAX_ATTR_DEPTH {
            return self.err(format!("attribute nested deeper than {MAX_ATTR_DEPTH} levels"));
        }
        self.depth += 1;
        let value = self.attr_value_at_depth();
        self.depth -= 1;
        value
    }

    fn attr_value_at_depth(&mut self) -> Result<AttrValue, ParseError> {
        match self.bump() {
            Tok::Num(s) if self.eat(':') => {
                let a = s.parse().or_else(|_| self.err(format!("bad axis `{s}`")))?;
                Ok(AttrValue::Pair(a, self.number()?))
            }
            Tok::Num(s) => Ok(AttrValue::Num(s)),
            Tok::Value(_) => {
                self.pos -= 1;
                Ok(AttrValue::Ref(self.use_value()?))
            }
            Tok::Punct('[') => {
                let mut xs = vec![];
                while !self.eat(']') {
                    xs.push(self.attr_value()?);
                    if !self.eat(',') {
                        self.expect(']')?;
                        break;
                    }
                }
                Ok(AttrValue::List(xs))
            }
            Tok::Ident(s) if s == "inf" || s == "NaN" => Ok(AttrValue::Num(s)),
            Tok::Ident(s) if self.eat('(') => {
                let mut args = vec![];
                while !self.eat(')') {
                    let arg = self.attr_value()?;
                    args.push(match (arg, self.eat('=')) {
                        (AttrValue::Ident(k), true) => AttrValue::Keyed(k, Box::new(self.attr_value()?)),
                        (_, true) => return self.err("argument keys must be names"),
                        (arg, false) => arg,
                    });
                    if !self.eat(',') {
                        self.expect(')')?;
                        break;
                    }
                }
                Ok(AttrValue::Call(s, args))
            }
            Tok::Ident(s) => Ok(AttrValue::Ident(s)),
            other => self.err(format!("expected an attribute, found {}", describe(&other))),
        }
    }

    fn ty(&mut self) -> Result<TensorType, ParseError> {
        let dt_at = self.pos;
        let Tok::Ident(dt) = self.bump() else { return self.err("expected a type like f32[B,384]") };
        let dtype: DType = dt.parse().or_else(|e: String| self.err_at(dt_at, e))?;
        self.expect('[')?;
        let mut dims = vec![];
        while !self.eat(']') {
            let at = self.pos;
            dims.push(match self.bump() {
                Tok::Num(s) => Dim::Fixed(s.parse().or_else(|_| self.err_at(at, format!("bad dimension `{s}`")))?),
                Tok::Ident(s) => Dim::Sym(self.g.symbol(&s).map_or_else(|| self.err_at(at, format!("undeclared symbol `{s}`")), Ok)?),
                other => return self.err(format!("expected a dimension, found {}", describe(&other))),
            });
            if !self.eat(',') {
                self.expect(']')?;
                break;
            }
        }
        Ok(TensorType::new(dtype, dims))
    }

    fn loc(&mut self) -> Result<Option<String>, ParseError> {
        match self.peek() {
            Tok::Ident(s) if s == "loc" => {
                self.pos += 1;
                self.expect('(')?;
                let Tok::Str(name) = self.bump() else { return self.err("loc needs a string") };
                self.expect(')')?;
                Ok(Some(name))
            }
            _ => Ok(None),
        }
    }
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Ident(s) => format!("`{s}`"),
        Tok::Num(s) => format!("number `{s}`"),
        Tok::Str(s) => format!("string \"{s}\""),
        Tok::Value(n) => format!("%{n}"),
        Tok::At(s) => format!("@{s}"),
        Tok::Punct(c) => format!("`{c}`"),
        Tok::Eof => "end of input".into(),
    }
}
