"""A small SOQL tokenizer and recursive-descent parser (the subset the simulator serves).

Grammar:
    query   := SELECT item {"," item} FROM ident [WHERE or] [GROUP BY ...] [ORDER BY order {"," order}]
               [LIMIT int] [OFFSET int]
    item    := ident | ident "(" ... ")" | "(" SELECT ... ")" | TYPEOF ... END
    or      := and {OR and};  and := unary {AND unary};  unary := NOT unary | "(" or ")" | cond
    cond    := ident op literal | ident [NOT] IN "(" literal {"," literal} ")" | ident LIKE string
             | ident (INCLUDES|EXCLUDES) "(" string {"," string} ")"
Constructs Bulk queries must reject (GROUP BY, OFFSET, TYPEOF, aggregates, subqueries, FIELDS()) are parsed
and recorded on the Query so that each API can decide (docs/bulk-rest-oauth.md §1.9). Errors carry
Salesforce's message shape: the query line, a caret, "ERROR at Row:r:Column:c" and the reason
(docs/bulk-rest-oauth.md §2.2).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

_DATETIME = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d{1,3})?(Z|[+-]\d{2}:?\d{2})")
_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_NUMBER = re.compile(r"\d+(\.\d+)?")
KEYWORDS = {"SELECT", "FROM", "WHERE", "AND", "OR", "NOT", "IN", "LIKE", "INCLUDES", "EXCLUDES", "ORDER", "BY",
            "ASC", "DESC", "NULLS", "FIRST", "LAST", "LIMIT", "OFFSET", "GROUP", "HAVING", "TYPEOF", "END",
            "TRUE", "FALSE", "NULL", "WITH", "FOR"}
COMPARISONS = ("=", "!=", "<>", "<", "<=", ">", ">=")
AGGREGATES = {"COUNT", "COUNT_DISTINCT", "SUM", "AVG", "MIN", "MAX"}
# Identifier characters. '"' and ';' are not legal in real API names; they are accepted only so the
# `hostile_field` test artefact (schema.HOSTILE_FIELD) can be selected like any other field.
_IDENT_START = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_IDENT_CHARS = _IDENT_START | set("0123456789.\";")


class SoqlError(Exception):
    """A query the simulator refuses; `code` is the Salesforce errorCode."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Token:
    kind: str  # IDENT STRING NUMBER DATETIME DATE OP ( ) , EOF
    value: object
    text: str
    pos: int


@dataclass(frozen=True)
class Literal:
    kind: str  # string number boolean null datetime date
    value: object
    token: Token


@dataclass
class Cond:
    op: str  # = != < <= > >= in notin like includes excludes
    field: Token
    values: list[Literal]


@dataclass
class BoolExpr:
    op: str  # and or not
    args: list


@dataclass
class SelectItem:
    kind: str  # field function subquery typeof
    name: str
    token: Token


@dataclass
class OrderItem:
    field: Token
    descending: bool
    nulls_last: bool


@dataclass
class Query:
    text: str
    select: list[SelectItem]
    object: Token
    where: Cond | BoolExpr | None = None
    order_by: list[OrderItem] = field(default_factory=list)
    limit: int | None = None
    offset: int | None = None
    group_by: bool = False


def error_at(text: str, pos: int, code: str, reason: str) -> SoqlError:
    """Salesforce's positional error message (the INVALID_FIELD example of docs/bulk-rest-oauth.md §2.2)."""
    line_start = text.rfind("\n", 0, pos) + 1
    line_end = text.find("\n", pos)
    line = text[line_start:] if line_end < 0 else text[line_start:line_end]
    row = text.count("\n", 0, pos) + 1
    col = pos - line_start + 1
    return SoqlError(code, f"\n{line}\n{' ' * (col - 1)}^\nERROR at Row:{row}:Column:{col}\n{reason}")


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c in "(),":
            tokens.append(Token(c, c, c, i))
            i += 1
        elif c in "=!<>":
            two = text[i:i + 2]
            op = two if two in ("!=", "<>", "<=", ">=") else c
            if op == "!":
                raise error_at(text, i, "MALFORMED_QUERY", "unexpected token: '!'")
            tokens.append(Token("OP", op, op, i))
            i += len(op)
        elif c == "'":
            j, chars = i + 1, []
            while True:
                if j >= n:
                    raise error_at(text, i, "MALFORMED_QUERY", "unterminated string literal")
                ch = text[j]
                if ch == "\\" and j + 1 < n:
                    nxt = text[j + 1]
                    chars.append({"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f"}.get(nxt, nxt))
                    j += 2
                elif ch == "'":
                    break
                else:
                    chars.append(ch)
                    j += 1
            tokens.append(Token("STRING", "".join(chars), text[i:j + 1], i))
            i = j + 1
        elif c.isdigit() or (c in "+-" and i + 1 < n and text[i + 1].isdigit()):
            sign = 1
            start = i
            if c in "+-":
                sign = -1 if c == "-" else 1
                i += 1
            tokens.append(_number_like(text, i, start, sign))
            i = start + len(tokens[-1].text)
        elif c in _IDENT_START:
            j = i + 1
            while j < n and text[j] in _IDENT_CHARS:
                j += 1
            word = text[i:j]
            if j < n and text[j] == ":" and word.upper().startswith(("LAST_N", "NEXT_N", "N_")):
                raise error_at(text, i, "MALFORMED_QUERY", f"unsupported date literal: '{word}'")
            tokens.append(Token("IDENT", word, word, i))
            i = j
        else:
            raise error_at(text, i, "MALFORMED_QUERY", f"unexpected token: '{c}'")
    tokens.append(Token("EOF", None, "<EOF>", n))
    return tokens


def _number_like(text: str, i: int, start: int, sign: int) -> Token:
    m = _DATETIME.match(text, i)
    if m and sign == 1 and start == i:
        y, mo, d, h, mi, s, frac, tz = m.groups()
        value = dt.datetime(int(y), int(mo), int(d), int(h), int(mi), int(s),
                            int((frac or ".0")[1:].ljust(3, "0")) * 1000)
        if tz != "Z":
            tz = tz.replace(":", "")
            offset = dt.timedelta(hours=int(tz[1:3]), minutes=int(tz[3:5]))
            value = value - offset if tz[0] == "+" else value + offset
        return Token("DATETIME", value, text[start:m.end()], start)
    m = _DATE.match(text, i)
    if m and sign == 1 and start == i:
        return Token("DATE", dt.date(*map(int, m.groups())), text[start:m.end()], start)
    m = _NUMBER.match(text, i)
    raw = m.group(0)
    value: object = float(raw) if "." in raw else int(raw)
    return Token("NUMBER", sign * value, text[start:m.end()], start)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0

    # -- token helpers
    def peek(self, k: int = 0) -> Token:
        return self.tokens[min(self.i + k, len(self.tokens) - 1)]

    def next(self) -> Token:
        tok = self.peek()
        self.i += 1
        return tok

    def is_kw(self, word: str, k: int = 0) -> bool:
        tok = self.peek(k)
        return tok.kind == "IDENT" and str(tok.value).upper() == word

    def fail(self, tok: Token, reason: str | None = None) -> SoqlError:
        return error_at(self.text, tok.pos, "MALFORMED_QUERY", reason or f"unexpected token: '{tok.text}'")

    def expect_kw(self, word: str) -> Token:
        if not self.is_kw(word):
            raise self.fail(self.peek())
        return self.next()

    def expect(self, kind: str) -> Token:
        if self.peek().kind != kind:
            raise self.fail(self.peek())
        return self.next()

    def ident(self) -> Token:
        tok = self.peek()
        if tok.kind != "IDENT" or str(tok.value).upper() in KEYWORDS:
            raise self.fail(tok)
        return self.next()

    # -- grammar
    def query(self) -> Query:
        self.expect_kw("SELECT")
        select = [self.select_item()]
        while self.peek().kind == ",":
            self.next()
            select.append(self.select_item())
        self.expect_kw("FROM")
        q = Query(self.text, select, self.ident())
        if self.is_kw("WHERE"):
            self.next()
            q.where = self.or_expr()
        if self.is_kw("GROUP"):
            self.next()
            self.expect_kw("BY")
            q.group_by = True
            self.ident()
            while self.peek().kind == ",":
                self.next()
                self.ident()
        if self.is_kw("ORDER"):
            self.next()
            self.expect_kw("BY")
            q.order_by.append(self.order_item())
            while self.peek().kind == ",":
                self.next()
                q.order_by.append(self.order_item())
        if self.is_kw("LIMIT"):
            self.next()
            q.limit = self.integer()
        if self.is_kw("OFFSET"):
            self.next()
            q.offset = self.integer()
        if self.peek().kind != "EOF":
            raise self.fail(self.peek())
        return q

    def integer(self) -> int:
        tok = self.expect("NUMBER")
        if not isinstance(tok.value, int) or tok.value < 0:
            raise self.fail(tok)
        return tok.value

    def select_item(self) -> SelectItem:
        tok = self.peek()
        if tok.kind == "(":
            self.skip_parenthesised()
            return SelectItem("subquery", "", tok)
        if self.is_kw("TYPEOF"):
            while not self.is_kw("END"):
                if self.peek().kind == "EOF":
                    raise self.fail(self.peek())
                self.next()
            self.next()
            return SelectItem("typeof", "TYPEOF", tok)
        name = self.ident()
        if self.peek().kind == "(":
            self.skip_parenthesised()
            if self.peek().kind == "IDENT" and not self.is_kw("FROM"):
                self.next()  # alias
            return SelectItem("function", str(name.value).upper(), name)
        return SelectItem("field", str(name.value), name)

    def skip_parenthesised(self) -> None:
        depth = 0
        while True:
            tok = self.next()
            if tok.kind == "EOF":
                raise self.fail(tok)
            depth += {"(": 1, ")": -1}.get(tok.kind, 0)
            if depth == 0:
                return

    def order_item(self) -> OrderItem:
        name = self.ident()
        desc = False
        if self.is_kw("ASC") or self.is_kw("DESC"):
            desc = str(self.next().value).upper() == "DESC"
        nulls_last = desc  # SOQL default: NULLS FIRST ascending, NULLS LAST descending
        if self.is_kw("NULLS"):
            self.next()
            if not (self.is_kw("FIRST") or self.is_kw("LAST")):
                raise self.fail(self.peek())
            nulls_last = str(self.next().value).upper() == "LAST"
        return OrderItem(name, desc, nulls_last)

    def or_expr(self):
        args = [self.and_expr()]
        while self.is_kw("OR"):
            self.next()
            args.append(self.and_expr())
        return args[0] if len(args) == 1 else BoolExpr("or", args)

    def and_expr(self):
        args = [self.unary()]
        while self.is_kw("AND"):
            self.next()
            args.append(self.unary())
        return args[0] if len(args) == 1 else BoolExpr("and", args)

    def unary(self):
        if self.is_kw("NOT"):
            self.next()
            return BoolExpr("not", [self.unary()])
        if self.peek().kind == "(":
            self.next()
            inner = self.or_expr()
            self.expect(")")
            return inner
        return self.condition()

    def condition(self) -> Cond:
        name = self.ident()
        tok = self.peek()
        if tok.kind == "OP":
            self.next()
            return Cond("!=" if tok.value == "<>" else str(tok.value), name, [self.literal()])
        if self.is_kw("NOT") and self.is_kw("IN", 1):
            self.next()
            self.next()
            return Cond("notin", name, self.literal_list())
        for word in ("IN", "INCLUDES", "EXCLUDES"):
            if self.is_kw(word):
                self.next()
                return Cond(word.lower(), name, self.literal_list())
        if self.is_kw("LIKE"):
            self.next()
            lit = self.literal()
            if lit.kind != "string":
                raise self.fail(lit.token)
            return Cond("like", name, [lit])
        raise self.fail(tok)

    def literal_list(self) -> list[Literal]:
        self.expect("(")
        values = [self.literal()]
        while self.peek().kind == ",":
            self.next()
            values.append(self.literal())
        self.expect(")")
        return values

    def literal(self) -> Literal:
        tok = self.next()
        kinds = {"STRING": "string", "NUMBER": "number", "DATETIME": "datetime", "DATE": "date"}
        if tok.kind in kinds:
            return Literal(kinds[tok.kind], tok.value, tok)
        if tok.kind == "IDENT":
            word = str(tok.value).upper()
            if word in ("TRUE", "FALSE"):
                return Literal("boolean", word == "TRUE", tok)
            if word == "NULL":
                return Literal("null", None, tok)
        raise self.fail(tok)


def parse(text: str) -> Query:
    """Parse SOQL text or raise SoqlError(MALFORMED_QUERY)."""
    if not text or not text.strip():
        raise SoqlError("MALFORMED_QUERY", "SOQL statement cannot be empty")
    return _Parser(text).query()
