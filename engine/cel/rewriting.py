"""Rewrite Kubernetes/Kyverno CEL so that cel-expr-python 0.1.3 runs it unchanged, and analyse what it uses.

The C++ runtime behind cel-expr-python lacks some of the language Kyverno policies are written in, and it
refuses new overloads for functions it already declares. `rewrite` parses an expression (`engine.cel.syntax`)
and replaces only the constructs that need it, printing everything else exactly as the user wrote it:

1. `x.orValue(y)` on a receiver that is not syntactically optional (Kyverno's compatibility macro returns a
   plain value unchanged, but the value may still be an optional at runtime, e.g. a variable):
   `cel.bind(V, x, type(V) == optional_type ? dyn(V).orValue(y) : dyn(V))`.
2. Two-variable comprehensions (cel-go `ext.TwoVarComprehensions`): `all`, `exists`, `existsOne`/`exists_one`
   with `(k, v, predicate)`, and `transformList`, `transformMap`, `transformMapEntry` with `(k, v, [filter,]
   expr)`. On a list `k` is the index and `v` the element; on a map, key and value. They iterate over
   `type(C) == list ? lists.range(size(C)) : C` and bind `v` to `C[k]`. `existsOne(x, p)` becomes
   `exists_one(x, p)`.
3. Struct literals `Name{f: a, ?g: b}` whose type the caller accepts become map literals `{"f": a, ?"g": b}`;
   any other struct literal is rejected.
4. Functions the runtime already declares but Kubernetes/Kyverno overload for other receivers are routed by
   runtime type to internal functions (see `INTERNAL_FUNCTIONS`).

When nothing needed rewriting, `Rewritten.text` is the input string itself, so the runtime's error carets
point into the user's text. Alongside, `rewrite` reports which `variables.<name>` an expression reads, so
the evaluator can compute policy variables lazily.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from engine.cel.libraries.comprehensions import MERGE_ENTRIES
from engine.cel.syntax import (
    Binary,
    Call,
    CelSyntaxError,
    Conditional,
    Constant,
    Expr,
    Ident,
    Index,
    ListElement,
    ListExpr,
    MapEntry,
    MapExpr,
    Select,
    StructExpr,
    Unary,
    parse,
    unparse,
)

INTERNAL_FUNCTIONS: Final[Mapping[str, str]] = {
    "__celvern_list_indexOf": (
        "(list, value) -> int: first index of value in the list, -1 when absent. Emitted for `x.indexOf(y)` "
        "when x is a list at runtime; `value` may be of any CEL type (declare one overload per type)."
    ),
    "__celvern_list_lastIndexOf": (
        "(list, value) -> int: last index of value in the list, -1 when absent. Emitted for "
        "`x.lastIndexOf(y)` when x is a list at runtime."
    ),
    "__celvern_list_reverse": "(list) -> list: the list reversed. Emitted for `x.reverse()` on a list.",
    "__celvern_string": (
        "(map) -> string: string form of an opaque library value (ip, cidr, quantity, ...). Emitted for "
        "`string(x)` when x is a map at runtime; raise for ordinary maps."
    ),
    "__celvern_math_round": (
        "(double|int, int) -> double: Kyverno's `math.round(x, digits)`. Emitted for two-argument `math.round`."
    ),
    "__celvern_regex_extract": (
        "(string, string) -> list(string): [] or [the first match (or its capture group)]. Emitted for "
        "`regex.extract(s, re)` as a bind choosing `optional.none()` or `optional.of(match)`."
    ),
    "__celvern_format_named": (
        "(string) -> map: the format value named, or an empty map when unknown. Emitted as "
        "`optional.ofNonZeroValue(__celvern_format_named(name))` for `format.named(name)`."
    ),
    "__celvern_format_validate": (
        "(map, string) -> list(string): validation errors of the string for the format value, empty when "
        "valid. Emitted as `optional.ofNonZeroValue(__celvern_format_validate(f, s))` for `f.validate(s)`."
    ),
    MERGE_ENTRIES: (
        "(list(map)) -> map: merge single-entry maps, a duplicate key is an error. Emitted for "
        "`transformMap` and `transformMapEntry`; implemented in `engine.cel.libraries.comprehensions`."
    ),
    "lists.range": (
        "(int) -> list(int): [0, 1, ..., n-1]. Emitted by every two-variable comprehension (Kubernetes' "
        "lists library, in `engine.cel.libraries.kubernetes`)."
    ),
}
"""Functions the rewritten text calls that the runtime does not provide, with their argument order and types.

Arguments are passed wrapped in `dyn(...)` so that any static type checks; remember that an overload
parameter of type DYN never matches at runtime in cel-expr-python 0.1.3, so declare concrete types.
"""

BINDER_PREFIX: Final = "__celvern_v"
"""Prefix of the variables the rewrites introduce (`__celvern_v0`, `__celvern_v1`, ...)."""

_OPTIONAL_RESULT_METHODS: Final = frozenset({"first", "last", "or", "optMap", "optFlatMap"})
_OPTIONAL_CONSTRUCTORS: Final = frozenset({"of", "none", "ofNonZeroValue"})
_ONE_VAR_MACROS: Final = frozenset({"all", "exists", "exists_one", "existsOne", "map", "filter"})
_TWO_VAR_PREDICATES: Final = frozenset({"all", "exists", "exists_one", "existsOne"})
_TRANSFORMS: Final = frozenset({"transformList", "transformMap", "transformMapEntry"})
_VARIABLES: Final = "variables"


@dataclass(frozen=True, slots=True)
class Rewritten:
    """An expression ready for cel-expr-python, and what it reads from `variables`."""

    text: str
    """CEL text for cel-expr-python; exactly the input string when nothing needed rewriting."""
    variables: frozenset[str]
    """Names N referenced as `variables.N`, `variables.?N`, `variables["N"]` or `variables[?"N"]`."""
    all_variables: bool
    """True when `variables` is used in a way that may read any variable (non-literal key, passed whole)."""
    struct_types: frozenset[str]
    """Type names of the struct literals seen (e.g. "Object", "Object.spec.containers", "JSONPatch")."""


def _reject_structs(name: str) -> bool:
    return False


def rewrite(
    expression: str,
    *,
    struct_types: Callable[[str], bool] = _reject_structs,
    inline_variables: Sequence[str] | None = None,
) -> Rewritten:
    """Rewrite `expression` for cel-expr-python; raises `CelSyntaxError` for syntax errors and for
    constructs celvern cannot run (e.g. a struct literal whose type `struct_types` does not accept).

    With `inline_variables` (the names of the policy's variables), every read of `variables.N` becomes the
    identifier `variable_identifier(N)`, which the caller binds with a lazy `cel.bind` (see `bind_variables`):
    policy variables then live inside the expression instead of in the activation, so one activation serves
    every policy of a request.
    """
    root = parse(expression)
    rewriter = _Rewriter(expression, struct_types, inline_variables)
    result = rewriter.visit(root, frozenset())
    if result is root:
        text = expression
    else:
        kept = rewriter.kept

        def verbatim(node: Expr) -> str | None:
            return expression[node.start : node.end] if id(node) in kept else None

        text = unparse(result, verbatim=verbatim)
    return Rewritten(
        text=text,
        variables=frozenset(rewriter.variables),
        all_variables=rewriter.all_variables,
        struct_types=frozenset(rewriter.struct_types),
    )


VARIABLE_PREFIX: Final = "__celvern_var_"


def variable_identifier(name: str) -> str:
    """The identifier a policy variable is bound to once inlined (any name maps to a valid identifier)."""
    safe = "".join(char if char.isascii() and (char.isalnum() or char == "_") else f"_x{ord(char):x}_" for char in name)
    return f"{VARIABLE_PREFIX}{safe}"


def bind_variables(text: str, bindings: Sequence[tuple[str, str]]) -> str:
    """Wrap `text` in lazy `cel.bind`s, outermost first: `bindings` are (variable name, inlined text) pairs
    in declaration order. cel-expr-python initialises a bind on first use only and evaluates it once, which is
    exactly Kubernetes' lazy, memoized policy variables."""
    for name, value in reversed(bindings):
        text = f"cel.bind({variable_identifier(name)}, ({value}), ({text}))"
    return text


def is_optional_typed(node: Expr) -> bool:
    """Whether `node` syntactically yields an optional: its outermost select/index chain contains `.?` or
    `[?`, or ends in `optional.of/none/ofNonZeroValue(...)`, `.first()`, `.last()`, `.or()`, `.optMap()`,
    `.optFlatMap()`, `format.named()` or `.validate()`."""
    while True:
        if isinstance(node, Select | Index):
            if node.optional:
                return True
            node = node.operand
        elif isinstance(node, Call) and node.target is not None:
            target = node.target
            if isinstance(target, Ident) and not target.absolute:
                if target.name == "optional" and node.function in _OPTIONAL_CONSTRUCTORS:
                    return True
                if target.name == "format" and node.function == "named":
                    return True
            return node.function in _OPTIONAL_RESULT_METHODS or (node.function == "validate" and len(node.args) == 1)
        else:
            return False


# ---------------------------------------------------------------------------------------- AST builders


def _ident(name: str, at: Expr) -> Ident:
    return Ident(start=at.start, end=at.end, name=name)


def _call(function: str, args: tuple[Expr, ...], at: Expr, target: Expr | None = None) -> Call:
    return Call(start=at.start, end=at.end, function=function, args=args, target=target)


def _is_null(node: Expr) -> bool:
    return isinstance(node, Constant) and node.kind == "null"


def _dyn(value: Expr, at: Expr) -> Call:
    return _call("dyn", (value,), at)


def _bind(name: str, init: Expr, body: Expr, at: Expr) -> Call:
    return _call("bind", (_ident(name, at), init, body), at, target=_ident("cel", at))


def _type_is(name: str, type_name: str, at: Expr) -> Binary:
    """`type(name) == type_name`."""
    checked = _call("type", (_ident(name, at),), at)
    return Binary(start=at.start, end=at.end, op="==", left=checked, right=_ident(type_name, at))


def _conditional(condition: Expr, then: Expr, otherwise: Expr, at: Expr) -> Conditional:
    return Conditional(start=at.start, end=at.end, condition=condition, then=then, otherwise=otherwise)


def _string(value: str, at: Expr) -> Constant:
    return Constant(start=at.start, end=at.end, kind="string", value=value, text=f'"{value}"')


# -------------------------------------------------------------------------------------------- rewriter


class _Rewriter:
    __slots__ = (
        "accept_struct",
        "all_variables",
        "counter",
        "inline",
        "kept",
        "source",
        "struct_types",
        "variables",
    )

    def __init__(self, source: str, accept_struct: Callable[[str], bool], inline: Sequence[str] | None = None) -> None:
        self.source = source
        self.inline = inline
        self.accept_struct = accept_struct
        self.kept: set[int] = set()
        self.counter = 0
        self.variables: set[str] = set()
        self.all_variables = False
        self.struct_types: set[str] = set()

    def fresh(self) -> str:
        """A binder name that no identifier of the source can spell."""
        while True:
            name = f"{BINDER_PREFIX}{self.counter}"
            self.counter += 1
            if name not in self.source:
                return name

    def keep(self, node: Expr) -> Expr:
        self.kept.add(id(node))
        return node

    def visit(self, node: Expr, scope: frozenset[str]) -> Expr:
        """Rewrite `node`; returns the very same object when nothing inside it changed."""
        if isinstance(node, Constant):
            return self.keep(node)
        if isinstance(node, Ident):
            if node.name == _VARIABLES and (node.absolute or _VARIABLES not in scope):
                self.all_variables = True
                if self.inline is not None:
                    self.variables.update(self.inline)
                    return self._all_variables_map(node)
            return self.keep(node)
        if isinstance(node, Select):
            operand = node.operand
            if self._is_variables(operand, scope):
                self.variables.add(node.field)
                if self.inline is not None:
                    return self._variable_read(node.field, node.optional, node)
                return self.keep(node)
            new_operand = self.visit(operand, scope)
            if new_operand is operand:
                return self.keep(node)
            return Select(start=node.start, end=node.end, operand=new_operand, field=node.field, optional=node.optional)
        if isinstance(node, Index):
            operand, index = node.operand, node.index
            if (
                self._is_variables(operand, scope)
                and isinstance(index, Constant)
                and isinstance(index.value, str)
                and index.kind == "string"
            ):
                self.variables.add(index.value)
                if self.inline is not None:
                    return self._variable_read(index.value, node.optional, node)
                return self.keep(node)
            new_operand = self.visit(operand, scope)
            new_index = self.visit(index, scope)
            if new_operand is operand and new_index is index:
                return self.keep(node)
            return Index(start=node.start, end=node.end, operand=new_operand, index=new_index, optional=node.optional)
        if isinstance(node, Call):
            return self.visit_call(node, scope)
        if isinstance(node, ListExpr):
            elements = tuple(self._visit_element(element, scope) for element in node.elements)
            if all(new is old for new, old in zip(elements, node.elements, strict=True)):
                return self.keep(node)
            return ListExpr(start=node.start, end=node.end, elements=elements)
        if isinstance(node, MapExpr):
            entries = tuple(self._visit_entry(entry, scope) for entry in node.entries)
            if all(new is old for new, old in zip(entries, node.entries, strict=True)):
                return self.keep(node)
            return MapExpr(start=node.start, end=node.end, entries=entries)
        if isinstance(node, StructExpr):
            return self.visit_struct(node, scope)
        if isinstance(node, Unary):
            operand = self.visit(node.operand, scope)
            if operand is node.operand:
                return self.keep(node)
            return Unary(start=node.start, end=node.end, op=node.op, operand=operand)
        if isinstance(node, Binary):
            left = self.visit(node.left, scope)
            right = self.visit(node.right, scope)
            if left is node.left and right is node.right:
                return self.keep(node)
            return Binary(start=node.start, end=node.end, op=node.op, left=left, right=right)
        condition = self.visit(node.condition, scope)
        then = self.visit(node.then, scope)
        otherwise = self.visit(node.otherwise, scope)
        # cel-go lets `c ? {...} : null` type-check (null is assignable to maps, lists, messages); the C++
        # checker does not, so the non-null branch is made dyn.
        if _is_null(otherwise) and not _is_null(then):
            then = _dyn(then, node.then)
        elif _is_null(then) and not _is_null(otherwise):
            otherwise = _dyn(otherwise, node.otherwise)
        if condition is node.condition and then is node.then and otherwise is node.otherwise:
            return self.keep(node)
        return _conditional(condition, then, otherwise, node)

    def _variable_read(self, name: str, optional: bool, at: Expr) -> Expr:
        """`variables.N` -> the bound identifier; `variables.?N` -> `optional.of(identifier)`."""
        identifier = _ident(variable_identifier(name), at)
        if optional:
            return _call("of", (identifier,), at, target=_ident("optional", at))
        return identifier

    def _all_variables_map(self, at: Expr) -> Expr:
        """`variables` used whole: a map of every variable (all of them are evaluated)."""
        entries = tuple(
            MapEntry(start=at.start, end=at.end, key=_string(name, at), value=_ident(variable_identifier(name), at))
            for name in self.inline or ()
        )
        return MapExpr(start=at.start, end=at.end, entries=entries)

    @staticmethod
    def _is_variables(node: Expr, scope: frozenset[str]) -> bool:
        return isinstance(node, Ident) and node.name == _VARIABLES and (node.absolute or _VARIABLES not in scope)

    def _visit_element(self, element: ListElement, scope: frozenset[str]) -> ListElement:
        value = self.visit(element.value, scope)
        if value is element.value:
            return element
        return ListElement(start=element.start, end=element.end, value=value, optional=element.optional)

    def _visit_entry(self, entry: MapEntry, scope: frozenset[str]) -> MapEntry:
        key = self.visit(entry.key, scope)
        value = self.visit(entry.value, scope)
        if key is entry.key and value is entry.value:
            return entry
        return MapEntry(start=entry.start, end=entry.end, key=key, value=value, optional=entry.optional)

    def visit_struct(self, node: StructExpr, scope: frozenset[str]) -> Expr:
        name = node.type_name
        self.struct_types.add(name)
        if not self.accept_struct(name):
            raise CelSyntaxError(f"struct literal of type '{name}' is not supported", node.start)
        entries = tuple(
            MapEntry(
                start=field.start,
                end=field.end,
                key=_string(field.name, field.value),
                value=self.visit(field.value, scope),
                optional=field.optional,
            )
            for field in node.fields
        )
        return MapExpr(start=node.start, end=node.end, entries=entries)

    def _visit_args(self, args: tuple[Expr, ...], scope: frozenset[str]) -> tuple[Expr, ...]:
        new_args = tuple(self.visit(arg, scope) for arg in args)
        if all(new is old for new, old in zip(new_args, args, strict=True)):
            return args
        return new_args

    def visit_call(self, node: Call, scope: frozenset[str]) -> Expr:
        function, args, target = node.function, node.args, node.target
        arity = len(args)
        if target is None:
            new_args = self._visit_args(args, scope)
            if function == "string" and arity == 1 and not isinstance(args[0], Constant):
                return self.route_by_type(
                    new_args[0],
                    None,
                    "map",
                    "__celvern_string",
                    lambda v, _: _call("string", (v,), node),
                    node,
                )
            if new_args is args:
                return self.keep(node)
            return Call(start=node.start, end=node.end, function=function, args=new_args, absolute=node.absolute)

        namespace = target.name if isinstance(target, Ident) and not target.absolute else None
        if namespace is not None and namespace in scope:
            namespace = None  # a local variable, not a function namespace
        binders = self._binders(args, 2)

        if namespace == "cel" and function == "bind" and arity == 3 and binders:
            name = binders[0]
            init = self.visit(args[1], scope)
            body = self.visit(args[2], scope | {name})
            if init is args[1] and body is args[2]:
                return self.keep(node)
            return _call("bind", (args[0], init, body), node, target=target)

        if len(binders) == 2 and (
            (function in _TWO_VAR_PREDICATES and arity == 3) or (function in _TRANSFORMS and arity in (3, 4))
        ):
            return self.two_var_comprehension(node, binders[0], binders[1], scope)

        if function in _ONE_VAR_MACROS and binders and arity in (2, 3) and (arity == 2 or function == "map"):
            new_target = self.visit(target, scope)
            inner = scope | {binders[0]}
            rest = tuple(self.visit(arg, inner) for arg in args[1:])
            if function == "existsOne":
                return _call("exists_one", (args[0], *rest), node, target=new_target)
            if new_target is target and all(new is old for new, old in zip(rest, args[1:], strict=True)):
                return self.keep(node)
            return _call(function, (args[0], *rest), node, target=new_target)

        new_target = self.visit(target, scope)
        new_args = self._visit_args(args, scope)

        if function == "orValue" and arity == 1 and not is_optional_typed(target):
            bound = self.fresh()
            value = _ident(bound, node)
            return _bind(
                bound,
                new_target,
                _conditional(
                    _type_is(bound, "optional_type", node),
                    _call("orValue", new_args, node, target=_dyn(value, node)),
                    _dyn(value, node),
                    node,
                ),
                node,
            )
        if function in ("indexOf", "lastIndexOf") and arity == 1 and not isinstance(target, Constant):
            return self.route_by_type(
                new_target,
                new_args[0],
                "list",
                f"__celvern_list_{function}",
                lambda v, w: _call(function, (_dyn(w, node),) if w else (), node, target=v),
                node,
            )
        if function == "reverse" and arity == 0 and not isinstance(target, Constant):
            return self.route_by_type(
                new_target,
                None,
                "list",
                "__celvern_list_reverse",
                lambda v, _: _call("reverse", (), node, target=v),
                node,
                dyn_result=True,
            )
        if namespace == "math" and function == "round" and arity == 2:
            return _call("__celvern_math_round", new_args, node)
        if namespace == "regex" and function == "extract" and arity == 2:
            # `regex.extract` returns optional(string): the Python side returns [] or [match].
            found = self.fresh()
            extracted = _call("__celvern_regex_extract", new_args, node)
            empty = Binary(
                start=node.start,
                end=node.end,
                op="==",
                left=_call("size", (_ident(found, node),), node),
                right=Constant(start=node.start, end=node.end, kind="int", value=0, text="0"),
            )
            first = Index(
                start=node.start,
                end=node.end,
                operand=_ident(found, node),
                index=Constant(start=node.start, end=node.end, kind="int", value=0, text="0"),
            )
            choice = _conditional(
                empty,
                _call("none", (), node, target=_ident("optional", node)),
                _call("of", (first,), node, target=_ident("optional", node)),
                node,
            )
            return _bind(found, extracted, choice, node)
        if namespace == "format" and function == "named" and arity == 1:
            named = _call("__celvern_format_named", new_args, node)
            return _call("ofNonZeroValue", (named,), node, target=_ident("optional", node))
        if function == "validate" and arity == 1:
            errors = _call("__celvern_format_validate", (new_target, *new_args), node)
            return _call("ofNonZeroValue", (errors,), node, target=_ident("optional", node))

        if new_target is target and new_args is args:
            return self.keep(node)
        return _call(function, new_args, node, target=new_target)

    @staticmethod
    def _binders(args: tuple[Expr, ...], count: int) -> tuple[str, ...]:
        """Names of the leading identifier arguments (at most `count`), as macros bind them."""
        names: list[str] = []
        for arg in args[:count]:
            if not isinstance(arg, Ident) or arg.absolute:
                break
            names.append(arg.name)
        return tuple(names)

    def route_by_type(
        self,
        receiver: Expr,
        argument: Expr | None,
        type_name: str,
        internal: str,
        builtin: Callable[[Expr, Expr | None], Expr],
        at: Expr,
        *,
        dyn_result: bool = False,
    ) -> Expr:
        """`cel.bind(V, receiver, [cel.bind(W, argument,] type(V) == type_name ? internal(dyn(V)[, dyn(W)])
        : builtin(dyn(V)[, W])))`, wrapping both branches in `dyn` when their types differ."""
        bound = self.fresh()
        value = _dyn(_ident(bound, at), at)
        argument_name = self.fresh() if argument is not None else None
        arg_ident = _ident(argument_name, at) if argument_name is not None else None
        internal_args: tuple[Expr, ...] = (value,) if arg_ident is None else (value, _dyn(arg_ident, at))
        special: Expr = _call(internal, internal_args, at)
        ordinary = builtin(value, arg_ident)
        if dyn_result:
            special, ordinary = _dyn(special, at), _dyn(ordinary, at)
        body: Expr = _conditional(_type_is(bound, type_name, at), special, ordinary, at)
        if argument is not None and argument_name is not None:
            body = _bind(argument_name, argument, body, at)
        return _bind(bound, receiver, body, at)

    def two_var_comprehension(self, node: Call, key: str, value: str, scope: frozenset[str]) -> Expr:
        """Rewrite `e.f(k, v, ...)` into a one-variable comprehension over the indices or keys of `e`."""
        assert node.target is not None
        target = self.visit(node.target, scope)
        inner = scope | {key, value}
        rest = tuple(self.visit(arg, inner) for arg in node.args[2:])
        container = self.fresh()
        container_ident = _ident(container, node)
        key_ident = _ident(key, node)
        size = _call("size", (container_ident,), node)
        indices = _call("range", (size,), node, target=_ident("lists", node))
        iterated = _conditional(_type_is(container, "list", node), indices, container_ident, node)

        def with_value(expr: Expr) -> Expr:
            element = Index(start=node.start, end=node.end, operand=container_ident, index=key_ident)
            return _bind(value, element, expr, node)

        function = node.function
        body: Expr
        if function in _TWO_VAR_PREDICATES:
            macro = "exists_one" if function == "existsOne" else function
            body = _call(macro, (key_ident, with_value(rest[0])), node, target=iterated)
        else:
            *condition, transform = rest
            produced = with_value(transform)
            if function == "transformMap":
                produced = MapExpr(
                    start=node.start,
                    end=node.end,
                    entries=(MapEntry(start=node.start, end=node.end, key=key_ident, value=produced),),
                )
            mapped_args = (key_ident, *(with_value(c) for c in condition), produced)
            body = _call("map", mapped_args, node, target=iterated)
            if function != "transformList":
                body = _call(MERGE_ENTRIES, (body,), node)
        return _bind(container, _dyn(target, node), body, node)


__all__ = ["BINDER_PREFIX", "INTERNAL_FUNCTIONS", "Rewritten", "is_optional_typed", "rewrite"]
