"""A complete CEL parser and printer, so celvern can rewrite expressions before cel-expr-python sees them.

cel-expr-python 0.1.3 exposes no AST, yet Kubernetes and Kyverno CEL uses constructs its runtime cannot run
(two-variable comprehensions, struct literals for untyped objects, `orValue` on plain values, overloads of
functions the runtime already declares). `engine.cel.rewriting` fixes those up on an AST, and this module
supplies that AST: a lexer and a recursive-descent parser for the full grammar of CEL
(https://github.com/google/cel-spec/blob/master/doc/langdef.md) producing immutable nodes that record their
source span, plus `unparse`, which prints an AST back into CEL text the runtime parses to the same meaning.

Spans are half-open offsets into the original text. A node's span covers the tokens that produced it,
including the parentheses around its operands but not its own enclosing parentheses, so
`text[node.start:node.end]` is always a self-contained expression of that node's precedence (the rewriter
copies untouched sub-expressions that way, keeping the user's spelling).

Parsing is iterative where the grammar allows (operator chains, postfix chains, ternary chains); recursion
only happens for bracketed sub-expressions, whose nesting and whose resulting AST depth are both limited to
`MAX_DEPTH`, so neither the parser nor recursive consumers of the AST can hit Python's recursion limit.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

MAX_DEPTH: Final = 250
"""Deepest nesting accepted, counted both as bracket nesting and as AST depth."""

RESERVED_IDENTIFIERS: Final = frozenset(
    {
        "as",
        "break",
        "const",
        "continue",
        "else",
        "for",
        "function",
        "if",
        "import",
        "let",
        "loop",
        "package",
        "namespace",
        "return",
        "var",
        "void",
        "while",
    }
)
"""Words the CEL specification reserves: they cannot name variables or functions."""

_INT64_MAX: Final = (1 << 63) - 1
_UINT64_MAX: Final = (1 << 64) - 1


class CelSyntaxError(ValueError):
    """A CEL expression that cannot be parsed (or uses a construct celvern cannot run)."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset

    def __str__(self) -> str:
        return f"{self.message} (at offset {self.offset})"

    def render(self, expression: str) -> str:
        """`line:column: message`, then the offending source line and a caret under the column."""
        offset = min(max(self.offset, 0), len(expression))
        line_start = expression.rfind("\n", 0, offset) + 1
        line_end = expression.find("\n", offset)
        if line_end < 0:
            line_end = len(expression)
        line = expression.count("\n", 0, offset) + 1
        column = offset - line_start + 1
        source_line = expression[line_start:line_end]
        return f"{line}:{column}: {self.message}\n | {source_line}\n | {'.' * (column - 1)}^"


# --------------------------------------------------------------------------------------------------- AST

ConstantKind: TypeAlias = Literal["int", "uint", "double", "string", "bytes", "bool", "null"]
ConstantValue: TypeAlias = int | float | str | bytes | bool | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Node:
    """Base of every AST node: the half-open source span `[start, end)`."""

    start: int
    end: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Constant(Node):
    """A literal; `text` is its original spelling (with a folded leading `-` for signed numbers)."""

    kind: ConstantKind
    value: ConstantValue
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Ident(Node):
    """A name; `absolute` when written with a leading dot (`.a`), which resolves from the root scope."""

    name: str
    absolute: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Select(Node):
    """Field selection `a.b`, or optional selection `a.?b` when `optional`."""

    operand: Expr
    field: str
    optional: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Index(Node):
    """Indexing `a[i]`, or optional indexing `a[?i]` when `optional`."""

    operand: Expr
    index: Expr
    optional: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Call(Node):
    """A global call `f(x)` (target None) or a member call `t.f(x)`; macros are calls too."""

    function: str
    args: tuple[Expr, ...]
    target: Expr | None = None
    absolute: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ListElement(Node):
    """One element of a list literal; `optional` for `?x` elements."""

    value: Expr
    optional: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ListExpr(Node):
    """A list literal `[a, ?b]`."""

    elements: tuple[ListElement, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class MapEntry(Node):
    """One `key: value` entry of a map literal; `optional` for `?key: value`."""

    key: Expr
    value: Expr
    optional: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class MapExpr(Node):
    """A map literal `{k: v, ?k2: v2}`."""

    entries: tuple[MapEntry, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class FieldInit(Node):
    """One `field: value` initializer of a struct literal; `optional` for `?field: value`."""

    name: str
    value: Expr
    optional: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class StructExpr(Node):
    """A message (struct) literal `Name.Qualified{field: v}`; `absolute` for a leading-dot name."""

    type_name: str
    fields: tuple[FieldInit, ...]
    absolute: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Unary(Node):
    """`!x` or `-x`."""

    op: Literal["!", "-"]
    operand: Expr


@dataclass(frozen=True, slots=True, kw_only=True)
class Binary(Node):
    """A binary operator: `* / % + - < <= > >= == != in && ||`."""

    op: str
    left: Expr
    right: Expr


@dataclass(frozen=True, slots=True, kw_only=True)
class Conditional(Node):
    """The ternary `condition ? then : otherwise`."""

    condition: Expr
    then: Expr
    otherwise: Expr


Expr: TypeAlias = (
    Constant | Ident | Select | Index | Call | ListExpr | MapExpr | StructExpr | Unary | Binary | Conditional
)

BINARY_PRECEDENCE: Final[dict[str, int]] = {
    "||": 1,
    "&&": 2,
    "<": 3,
    "<=": 3,
    ">": 3,
    ">=": 3,
    "==": 3,
    "!=": 3,
    "in": 3,
    "+": 4,
    "-": 4,
    "*": 5,
    "/": 5,
    "%": 5,
}
"""Binding strength of binary operators (all left-associative); the ternary binds weakest of all."""

# ------------------------------------------------------------------------------------------------- lexer

_TOKEN_RE: Final = re.compile(
    # Whitespace and comments are consumed as a prefix of every token: one match per token.
    r"(?:[\t\n\f\r ]++|//[^\n]*+)*+(?:"
    + "|".join(
        (
            r"(?P<ident>(?![bB]?[rR]?[\"'])[_a-zA-Z][_a-zA-Z0-9]*+)",
            r"(?P<op>==|!=|<=|>=|&&|\|\||[-+*/%!<>?:,\[\](){}]|\.(?![0-9]))",
            r"(?P<raw>[bB]?[rR](?:\"\"\"[\s\S]*?\"\"\"|'''[\s\S]*?'''|\"[^\"\n\r]*\"|'[^'\n\r]*'))",
            r"(?P<str>[bB]?(?:\"\"\"(?:\\[\s\S]|[^\\])*?\"\"\"|'''(?:\\[\s\S]|[^\\])*?'''"
            r"|\"(?:\\[^\n\r]|[^\"\\\n\r])*\"|'(?:\\[^\n\r]|[^'\\\n\r])*'))",
            r"(?P<unterminated>[bB]?[rR]?(?:\"\"\"|'''|\"|'))",
            r"(?P<double>(?:[0-9]+\.[0-9]+|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[0-9]+[eE][+-]?[0-9]+)",
            r"(?P<uint>(?:0[xX][0-9a-fA-F]+|[0-9]+)[uU])",
            r"(?P<int>0[xX][0-9a-fA-F]+|[0-9]+)",
            r"(?P<eof>\Z)",
            r"(?P<bad>[\s\S])",
        )
    )
    + ")"
)
_KEYWORDS: Final = frozenset({"true", "false", "null", "in"})
_ESCAPE_RE: Final = re.compile(
    r"\\(?:([abfnrtv\\'\"`?])|[xX]([0-9a-fA-F]{2})|u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8})|([0-3][0-7]{2})|([\s\S]?))"
)
_SIMPLE_ESCAPES: Final = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    "'": "'",
    '"': '"',
    "`": "`",
    "?": "?",
}


def _describe(kind: str, text: str) -> str:
    return "end of input" if kind == "eof" else repr(text)


def _decode_string(text: str, offset: int) -> str | bytes:
    """Value of a string or bytes literal token, with escapes processed (raw literals keep them)."""
    i = 0
    is_bytes = text[0] in "bB"
    if is_bytes:
        i = 1
    raw = text[i] in "rR"
    if raw:
        i += 1
    quote_len = 3 if text[i : i + 3] in ('"""', "'''") else 1
    body = text[i + quote_len : len(text) - quote_len]
    body_offset = offset + i + quote_len
    if raw or "\\" not in body:
        return body.encode() if is_bytes else body
    chunks: list[bytes] = []
    pos = 0
    for match in _ESCAPE_RE.finditer(body):
        chunks.append(body[pos : match.start()].encode())
        pos = match.end()
        simple, hex2, hex4, hex8, octal, bad = match.groups()
        if bad is not None:
            raise CelSyntaxError(
                f"Syntax error: invalid escape sequence {match.group()!r} in string literal",
                body_offset + match.start(),
            )
        if simple is not None:
            chunks.append(_SIMPLE_ESCAPES[simple].encode())
        elif hex2 is not None or octal is not None:
            code = int(hex2, 16) if hex2 is not None else int(octal or "0", 8)
            chunks.append(bytes((code,)) if is_bytes else chr(code).encode())
        else:
            code = int(hex4 or hex8 or "0", 16)
            if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                raise CelSyntaxError(
                    f"Syntax error: invalid code point in escape sequence {match.group()!r}",
                    body_offset + match.start(),
                )
            chunks.append(chr(code).encode())
    chunks.append(body[pos:].encode())
    joined = b"".join(chunks)
    return joined if is_bytes else joined.decode()


# ------------------------------------------------------------------------------------------------ parser

_Parsed: TypeAlias = tuple[Expr, int, int, int]
"""A parsed operand: the node, its outer span (including its own parentheses) and its AST depth."""

_UNARY_OPS: Final = frozenset({"!", "-"})
_NUMBER_KINDS: Final = frozenset({"int", "double"})
_LITERAL_KINDS: Final = frozenset({"int", "uint", "double", "str", "raw", "true", "false", "null"})


class _Parser:
    __slots__ = ("ends", "i", "kinds", "nesting", "starts", "text", "texts")

    def __init__(self, text: str) -> None:
        self.text = text
        kinds: list[str] = []
        texts: list[str] = []
        starts: list[int] = []
        ends: list[int] = []
        keywords = _KEYWORDS
        for match in _TOKEN_RE.finditer(text):
            kind = match.lastgroup or "bad"
            token_start, token_end = match.span(kind)
            token = text[token_start:token_end]
            if kind == "op":
                kind = token
            elif kind == "ident":
                if token in keywords:
                    kind = token
            elif kind == "eof":
                break
            elif kind == "unterminated":
                raise CelSyntaxError("Syntax error: unterminated string literal", token_start)
            elif kind == "bad":
                raise CelSyntaxError(f"Syntax error: unexpected character {token!r}", token_start)
            kinds.append(kind)
            texts.append(token)
            starts.append(token_start)
            ends.append(token_end)
        kinds.append("eof")
        texts.append("")
        starts.append(len(text))
        ends.append(len(text))
        self.kinds = kinds
        self.texts = texts
        self.starts = starts
        self.ends = ends
        self.i = 0
        self.nesting = 0

    # -- helpers

    def _error(self, message: str, index: int | None = None) -> CelSyntaxError:
        return CelSyntaxError(message, self.starts[self.i if index is None else index])

    def _expect(self, kind: str, context: str) -> int:
        """Consume a token of `kind`; returns its end offset."""
        i = self.i
        if self.kinds[i] != kind:
            found = _describe(self.kinds[i], self.texts[i])
            raise self._error(f"Syntax error: expected '{kind}' {context}, found {found}")
        self.i = i + 1
        return self.ends[i]

    @staticmethod
    def _depth_error(start: int) -> CelSyntaxError:
        return CelSyntaxError(f"Syntax error: expression nesting exceeds the maximum depth of {MAX_DEPTH}", start)

    def parse(self) -> Expr:
        node, _, _, _ = self._expr()
        if self.kinds[self.i] != "eof":
            raise self._error(f"Syntax error: unexpected {_describe(self.kinds[self.i], self.texts[self.i])}")
        return node

    # -- expressions: ternary chains and binary operators (shunting-yard), without recursion per operator

    def _expr(self) -> _Parsed:
        self.nesting += 1
        if self.nesting > MAX_DEPTH:
            raise self._depth_error(self.starts[self.i])
        kinds = self.kinds
        branches: list[tuple[_Parsed, _Parsed]] = []
        pending: _Parsed | None = None
        while True:
            operands: list[_Parsed] = [self._operand()]
            kind = kinds[self.i]
            precedence = BINARY_PRECEDENCE.get(kind)
            if precedence is not None:
                ops: list[tuple[str, int]] = []
                while precedence is not None:
                    while ops and ops[-1][1] >= precedence:
                        self._reduce(operands, ops.pop()[0])
                    ops.append((kind, precedence))
                    self.i += 1
                    operands.append(self._operand())
                    kind = kinds[self.i]
                    precedence = BINARY_PRECEDENCE.get(kind)
                while ops:
                    self._reduce(operands, ops.pop()[0])
            current = operands[0]
            if pending is not None:
                self._expect(":", "in conditional expression")
                branches.append((pending, current))
                pending = None
                continue
            if kind == "?":
                self.i += 1
                pending = current
                continue
            break
        result = current
        for (cond, c_start, _, c_depth), (then, _, _, t_depth) in reversed(branches):
            node, _, end, depth = result
            depth = max(c_depth, t_depth, depth) + 1
            if depth > MAX_DEPTH:
                raise self._depth_error(c_start)
            result = (
                Conditional(start=c_start, end=end, condition=cond, then=then, otherwise=node),
                c_start,
                end,
                depth,
            )
        self.nesting -= 1
        return result

    def _reduce(self, operands: list[_Parsed], op: str) -> None:
        right, _, r_end, r_depth = operands.pop()
        left, l_start, _, l_depth = operands.pop()
        depth = max(l_depth, r_depth) + 1
        if depth > MAX_DEPTH:
            raise self._depth_error(l_start)
        node = Binary(start=l_start, end=r_end, op=op, left=left, right=right)
        operands.append((node, l_start, r_end, depth))

    # -- unary, primary and postfix chains, all in one frame (brackets recurse through `_expr` only)

    def _operand(self) -> _Parsed:
        kinds = self.kinds
        texts = self.texts
        starts = self.starts
        ends = self.ends
        i = self.i
        kind = kinds[i]
        unary_ops: list[tuple[str, int]] = []
        if kind in _UNARY_OPS:
            while kinds[i] == kind:
                unary_ops.append((kind, starts[i]))
                i += 1
            if kinds[i] in _UNARY_OPS and not (kinds[i] == "-" and kinds[i + 1] in _NUMBER_KINDS):
                raise CelSyntaxError(
                    "Syntax error: unary operators '!' and '-' cannot be combined without parentheses",
                    starts[i],
                )
        # A '-' directly before a number is part of a signed literal (the grammar prefers it to negation).
        sign_start = -1
        if kinds[i] == "-" and kinds[i + 1] in _NUMBER_KINDS:
            sign_start = starts[i]
            i += 1
        elif unary_ops and unary_ops[-1][0] == "-" and kinds[i] in _NUMBER_KINDS:
            sign_start = unary_ops.pop()[1]
        start = starts[i] if sign_start < 0 else sign_start
        name_parts: list[str] | None = None
        absolute = False
        node: Expr
        depth = 1
        kind = kinds[i]

        # primary
        if kind in _LITERAL_KINDS:
            node = self._constant(kind, texts[i], start, ends[i], sign_start >= 0)
            i += 1
        elif kind == "ident" or (kind == "." and kinds[i + 1] == "ident"):
            if kind == ".":
                absolute = True
                i += 1
            name = texts[i]
            if name in RESERVED_IDENTIFIERS:
                raise CelSyntaxError(f"Syntax error: reserved identifier '{name}'", starts[i])
            i += 1
            if kinds[i] == "(":
                self.i = i + 1
                args, end, depth = self._args()
                i = self.i
                node = Call(start=start, end=end, function=name, args=args, absolute=absolute)
                depth += 1
            else:
                node = Ident(start=start, end=ends[i - 1], name=name, absolute=absolute)
                name_parts = [name]
        elif kind == "(":
            self.i = i + 1
            node, _, _, depth = self._expr()
            i = self.i
            if kinds[i] != ")":
                raise self._error(
                    f"Syntax error: expected ')', found {_describe(kinds[i], texts[i])}",
                )
            i += 1
        elif kind == "[":
            self.i = i + 1
            elements: list[ListElement] = []
            while kinds[self.i] != "]":
                element_start = starts[self.i]
                optional = kinds[self.i] == "?"
                if optional:
                    self.i += 1
                value, _, value_end, value_depth = self._expr()
                depth = max(depth, value_depth)
                elements.append(ListElement(start=element_start, end=value_end, value=value, optional=optional))
                if kinds[self.i] != ",":
                    break
                self.i += 1
            end = self._expect("]", "to close the list literal")
            i = self.i
            node = ListExpr(start=start, end=end, elements=tuple(elements))
            depth += 1
        elif kind == "{":
            self.i = i + 1
            entries, end, depth = self._map_entries()
            i = self.i
            node = MapExpr(start=start, end=end, entries=entries)
        else:
            raise CelSyntaxError(f"Syntax error: unexpected {_describe(kind, texts[i])}", starts[i])
        end = ends[i - 1]

        # postfix chain: selections, member calls, indexing, struct literals
        while True:
            kind = kinds[i]
            if kind == ".":
                i += 1
                optional = kinds[i] == "?"
                if optional:
                    i += 1
                if kinds[i] != "ident":
                    raise CelSyntaxError(
                        f"Syntax error: expected a field or method name after '.', found "
                        f"{_describe(kinds[i], texts[i])}",
                        starts[i],
                    )
                field = texts[i]
                i += 1
                if kinds[i] == "(" and not optional:
                    self.i = i + 1
                    args, end, args_depth = self._args()
                    i = self.i
                    depth = max(depth, args_depth) + 1
                    node = Call(start=start, end=end, function=field, args=args, target=node)
                    name_parts = None
                else:
                    end = ends[i - 1]
                    node = Select(start=start, end=end, operand=node, field=field, optional=optional)
                    depth += 1
                    if name_parts is not None:
                        if optional:
                            name_parts = None
                        else:
                            name_parts.append(field)
            elif kind == "[":
                i += 1
                optional = kinds[i] == "?"
                if optional:
                    i += 1
                self.i = i
                index, _, _, index_depth = self._expr()
                end = self._expect("]", "to close the index")
                i = self.i
                depth = max(depth, index_depth) + 1
                node = Index(start=start, end=end, operand=node, index=index, optional=optional)
                name_parts = None
            elif kind == "{" and name_parts is not None:
                self.i = i + 1
                fields, end, fields_depth = self._field_inits()
                i = self.i
                depth = fields_depth
                node = StructExpr(
                    start=start, end=end, type_name=".".join(name_parts), fields=fields, absolute=absolute
                )
                name_parts = None
            else:
                break
            if depth > MAX_DEPTH:
                raise self._depth_error(start)

        for op, op_start in reversed(unary_ops):
            depth += 1
            node = Unary(start=op_start, end=end, op="!" if op == "!" else "-", operand=node)
        if depth > MAX_DEPTH:
            raise self._depth_error(node.start)
        self.i = i
        return node, unary_ops[0][1] if unary_ops else start, end, depth

    def _constant(self, kind: str, text: str, start: int, end: int, negate: bool) -> Constant:
        if kind == "int":
            value = int(text, 16) if text[:2] in ("0x", "0X") else int(text)
            if negate:
                value = -value
            if not -_INT64_MAX - 1 <= value <= _INT64_MAX:
                raise CelSyntaxError(f"Syntax error: integer literal {text} out of range", start)
            signed = ("-" if negate else "") + text
            return Constant(start=start, end=end, kind="int", value=value, text=signed)
        if kind == "uint":
            digits = text[:-1]
            value = int(digits, 16) if digits[:2] in ("0x", "0X") else int(digits)
            if value > _UINT64_MAX:
                raise CelSyntaxError(f"Syntax error: unsigned integer literal {text} out of range", start)
            return Constant(start=start, end=end, kind="uint", value=value, text=text)
        if kind == "double":
            number = float(text)
            return Constant(
                start=start,
                end=end,
                kind="double",
                value=-number if negate else number,
                text=("-" if negate else "") + text,
            )
        if kind in ("str", "raw"):
            decoded = _decode_string(text, start)
            kind_name: ConstantKind = "bytes" if isinstance(decoded, bytes) else "string"
            return Constant(start=start, end=end, kind=kind_name, value=decoded, text=text)
        if kind == "null":
            return Constant(start=start, end=end, kind="null", value=None, text=text)
        return Constant(start=start, end=end, kind="bool", value=kind == "true", text=text)

    def _args(self) -> tuple[tuple[Expr, ...], int, int]:
        """Arguments after `(`: returns them, the end offset of `)` and their maximum depth."""
        kinds = self.kinds
        args: list[Expr] = []
        depth = 0
        if kinds[self.i] != ")":
            while True:
                arg, _, _, arg_depth = self._expr()
                args.append(arg)
                depth = max(depth, arg_depth)
                if kinds[self.i] != ",":
                    break
                self.i += 1
        end = self._expect(")", "to close the argument list")
        return tuple(args), end, depth

    def _map_entries(self) -> tuple[tuple[MapEntry, ...], int, int]:
        kinds = self.kinds
        entries: list[MapEntry] = []
        depth = 1
        while kinds[self.i] != "}":
            entry_start = self.starts[self.i]
            optional = kinds[self.i] == "?"
            if optional:
                self.i += 1
            key, _, _, key_depth = self._expr()
            self._expect(":", "after a map key")
            value, _, value_end, value_depth = self._expr()
            depth = max(depth, key_depth + 1, value_depth + 1)
            entry = MapEntry(start=entry_start, end=value_end, key=key, value=value, optional=optional)
            entries.append(entry)
            if kinds[self.i] != ",":
                break
            self.i += 1
        end = self._expect("}", "to close the map literal")
        return tuple(entries), end, depth

    def _field_inits(self) -> tuple[tuple[FieldInit, ...], int, int]:
        kinds = self.kinds
        fields: list[FieldInit] = []
        depth = 1
        while kinds[self.i] != "}":
            field_start = self.starts[self.i]
            optional = kinds[self.i] == "?"
            if optional:
                self.i += 1
            if kinds[self.i] != "ident":
                found = _describe(kinds[self.i], self.texts[self.i])
                raise self._error(f"Syntax error: expected a field name, found {found}")
            name = self.texts[self.i]
            self.i += 1
            self._expect(":", "after a field name")
            value, _, value_end, value_depth = self._expr()
            depth = max(depth, value_depth + 1)
            init = FieldInit(start=field_start, end=value_end, name=name, value=value, optional=optional)
            fields.append(init)
            if kinds[self.i] != ",":
                break
            self.i += 1
        end = self._expect("}", "to close the struct literal")
        return tuple(fields), end, depth


def parse(expression: str) -> Expr:
    """Parse CEL text into an AST; raises `CelSyntaxError` on invalid input."""
    return _Parser(expression).parse()


# ----------------------------------------------------------------------------------------------- printer


def _needs_member_parens(node: Expr) -> bool:
    """Whether `node` must be parenthesised as the operand of `.f`, `[i]` or a unary operator."""
    if isinstance(node, Binary | Conditional | Unary):
        return True
    return isinstance(node, Constant) and node.text.startswith("-")


def unparse(node: Expr, *, verbatim: Callable[[Expr], str | None] | None = None) -> str:
    """Print an AST as CEL text that parses back to the same AST (up to spans and redundant parentheses).

    `verbatim`, when given, may return the text to use for a node as is (the rewriter returns the user's
    original text for untouched sub-expressions); that text must be a self-contained expression of the
    node's own precedence.
    """

    def emit(n: Expr) -> str:
        if verbatim is not None:
            text = verbatim(n)
            if text is not None:
                return text
        if isinstance(n, Constant):
            return n.text
        if isinstance(n, Ident):
            return "." + n.name if n.absolute else n.name
        if isinstance(n, Select):
            operand = emit(n.operand)
            if _needs_member_parens(n.operand):
                operand = f"({operand})"
            return f"{operand}{'.?' if n.optional else '.'}{n.field}"
        if isinstance(n, Index):
            operand = emit(n.operand)
            if _needs_member_parens(n.operand):
                operand = f"({operand})"
            return f"{operand}[{'?' if n.optional else ''}{emit(n.index)}]"
        if isinstance(n, Call):
            args = ", ".join([emit(arg) for arg in n.args])
            if n.target is None:
                return f"{'.' if n.absolute else ''}{n.function}({args})"
            target = emit(n.target)
            if _needs_member_parens(n.target):
                target = f"({target})"
            return f"{target}.{n.function}({args})"
        if isinstance(n, ListExpr):
            items = [("?" if e.optional else "") + emit(e.value) for e in n.elements]
            return "[" + ", ".join(items) + "]"
        if isinstance(n, MapExpr):
            entries = []
            for entry in n.entries:
                key = emit(entry.key)
                if isinstance(entry.key, Conditional):
                    key = f"({key})"
                entries.append(f"{'?' if entry.optional else ''}{key}: {emit(entry.value)}")
            return "{" + ", ".join(entries) + "}"
        if isinstance(n, StructExpr):
            fields = [f"{'?' if f.optional else ''}{f.name}: {emit(f.value)}" for f in n.fields]
            return f"{'.' if n.absolute else ''}{n.type_name}{{{', '.join(fields)}}}"
        if isinstance(n, Unary):
            operand = emit(n.operand)
            # `-(1)` must not print as the signed literal `-1`
            signed = n.op == "-" and isinstance(n.operand, Constant) and n.operand.kind in ("int", "double")
            if signed or _needs_member_parens(n.operand):
                operand = f"({operand})"
            return n.op + operand
        if isinstance(n, Binary):
            precedence = BINARY_PRECEDENCE[n.op]
            left = emit(n.left)
            if isinstance(n.left, Conditional) or (
                isinstance(n.left, Binary) and BINARY_PRECEDENCE[n.left.op] < precedence
            ):
                left = f"({left})"
            right = emit(n.right)
            if isinstance(n.right, Conditional) or (
                isinstance(n.right, Binary) and BINARY_PRECEDENCE[n.right.op] <= precedence
            ):
                right = f"({right})"
            return f"{left} {n.op} {right}"
        condition = emit(n.condition)
        if isinstance(n.condition, Conditional):
            condition = f"({condition})"
        then = emit(n.then)
        if isinstance(n.then, Conditional):
            then = f"({then})"
        return f"{condition} ? {then} : {emit(n.otherwise)}"

    return emit(node)


__all__ = [
    "BINARY_PRECEDENCE",
    "MAX_DEPTH",
    "RESERVED_IDENTIFIERS",
    "Binary",
    "Call",
    "CelSyntaxError",
    "Conditional",
    "Constant",
    "ConstantKind",
    "ConstantValue",
    "Expr",
    "FieldInit",
    "Ident",
    "Index",
    "ListElement",
    "ListExpr",
    "MapEntry",
    "MapExpr",
    "Node",
    "Select",
    "StructExpr",
    "Unary",
    "parse",
    "unparse",
]
