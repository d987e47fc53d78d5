"""Which parts of `object` and `oldObject` a policy set can read, and the pruned copy its CEL activation gets.

Why this module exists: handing a request's object to the CEL runtime converts all of it into CEL values, and for
a typical 10 KB Pod that conversion costs more than evaluating a whole Pod Security policy set. Policies read a
small part of it (security contexts, host namespaces, volumes); environment variables, resource limits, probes
and `metadata.managedFields` are usually never looked at. So at compile time every expression's syntax tree is
analysed for the paths it reads from the two object variables, the paths of a policy set are merged into one
`ReadTree` per variable, and at evaluation time the activation gets a copy of the object holding only those
paths (`pruner`). Every other consumer (matching, patching, reports) keeps the full object.

The analysis is conservative: a value is kept whole as soon as an expression does anything with it other than
select a field, index it, iterate over it, or pass it through unchanged (`cel.bind`, `? :`, `orValue`, `dyn`,
`+`). Anything it does not understand (a parse failure, an unknown construct) makes the whole object needed, and
a tree node with nothing below it is a whole value. A pruned copy therefore answers every expression of the set
exactly as the full object would: every key an expression can observe, and every list length, is still there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from engine.cel.syntax import (
    Binary,
    Call,
    CelSyntaxError,
    Conditional,
    Constant,
    Expr,
    Ident,
    Index,
    ListExpr,
    MapExpr,
    Select,
    StructExpr,
    Unary,
    parse,
)

ROOTS = ("object", "oldObject")
"""The variables whose values are pruned."""
ANY = "*"
"""Path segment for "every element of a list, every value of a map"."""

Path = tuple[str, ...]
Aliases = frozenset[Path]
_NONE: Aliases = frozenset()

_ITERATING_MACROS = frozenset({"all", "exists", "exists_one", "existsOne", "filter", "map"})
_PASS_THROUGH_METHODS = frozenset({"orValue", "or", "value"})
_PASS_THROUGH_FUNCTIONS = frozenset({"dyn"})


class _Unanalysable(Exception):
    """The expression uses something the analysis does not model: it may read anything."""


@dataclass(frozen=True, slots=True)
class ReadTree:
    """The paths read below one value. `whole`: the value is read as it is (so is a node with no children)."""

    whole: bool = False
    children: Mapping[str, ReadTree] = field(default_factory=dict)

    @property
    def keeps_everything(self) -> bool:
        return self.whole or not self.children


WHOLE = ReadTree(whole=True)


@dataclass(frozen=True, slots=True)
class Reads:
    """What one expression (or a whole policy set) reads of each root variable; None means all of it."""

    trees: Mapping[str, ReadTree | None] = field(default_factory=dict)
    """Per root: None = read whole (or unknown), a tree = only those paths; a root absent = not read at all."""

    def tree(self, root: str) -> ReadTree | None:
        """The tree for `root`, None when it must be kept whole. An unread root needs nothing: an empty map."""
        if root not in self.trees:
            return ReadTree()
        return self.trees[root]


EVERYTHING = Reads({root: None for root in ROOTS})
"""What an expression that cannot be analysed may read."""


def reads_to_data(reads: Reads) -> dict[str, Any]:
    """`reads` as JSON-ready data (for caches): per root, None (whole) or a nested {"w": whole, "c": children}."""

    def tree(node: ReadTree) -> dict[str, Any]:
        return {"w": node.whole, "c": {key: tree(child) for key, child in node.children.items()}}

    return {root: None if node is None else tree(node) for root, node in reads.trees.items()}


def reads_from_data(data: Mapping[str, Any]) -> Reads:
    """The inverse of `reads_to_data`."""

    def tree(node: Mapping[str, Any]) -> ReadTree:
        return ReadTree(whole=bool(node["w"]), children={key: tree(child) for key, child in node["c"].items()})

    return Reads({root: None if node is None else tree(node) for root, node in data.items()})


# --- analysis --------------------------------------------------------------------------------------------------


class _Analysis:
    def __init__(self) -> None:
        self.touched: set[Path] = set()
        self.whole: set[Path] = set()

    def consume(self, aliases: Aliases) -> None:
        self.whole.update(aliases)

    def extend(self, aliases: Aliases, segment: str) -> Aliases:
        extended = frozenset((*path, segment) for path in aliases)
        self.touched.update(extended)
        return extended

    def visit(self, node: Expr, scope: Mapping[str, Aliases]) -> Aliases:
        if isinstance(node, Constant):
            return _NONE
        if isinstance(node, Ident):
            if not node.absolute and node.name in scope:
                return scope[node.name]
            if node.name in ROOTS:
                root: Aliases = frozenset({(node.name,)})
                self.touched.update(root)
                return root
            return _NONE
        if isinstance(node, Select):
            return self.extend(self.visit(node.operand, scope), node.field)
        if isinstance(node, Index):
            operand = self.visit(node.operand, scope)
            self.consume(self.visit(node.index, scope))
            index = node.index
            segment = index.value if isinstance(index, Constant) and isinstance(index.value, str) else ANY
            return self.extend(operand, segment)
        if isinstance(node, Call):
            return self.call(node, scope)
        if isinstance(node, Conditional):
            self.consume(self.visit(node.condition, scope))
            return self.visit(node.then, scope) | self.visit(node.otherwise, scope)
        if isinstance(node, Binary):
            left, right = self.visit(node.left, scope), self.visit(node.right, scope)
            if node.op == "+":  # list or string concatenation: made of both operands' values
                return left | right
            self.consume(left | right)
            return _NONE
        if isinstance(node, Unary):
            self.consume(self.visit(node.operand, scope))
            return _NONE
        if isinstance(node, ListExpr):
            for element in node.elements:
                self.consume(self.visit(element.value, scope))
            return _NONE
        if isinstance(node, MapExpr):
            for entry in node.entries:
                self.consume(self.visit(entry.key, scope) | self.visit(entry.value, scope))
            return _NONE
        if isinstance(node, StructExpr):
            for initializer in node.fields:
                self.consume(self.visit(initializer.value, scope))
            return _NONE
        raise _Unanalysable(type(node).__name__)

    def call(self, node: Call, scope: Mapping[str, Aliases]) -> Aliases:
        target, args, function = node.target, node.args, node.function
        binder = args[0].name if args and isinstance(args[0], Ident) and not args[0].absolute else None
        if (
            function == "bind"
            and isinstance(target, Ident)
            and target.name == "cel"
            and len(args) == 3
            and binder is not None
        ):
            value = self.visit(args[1], scope)
            return self.visit(args[2], {**scope, binder: value})
        if target is not None and function in _ITERATING_MACROS and binder is not None and len(args) in (2, 3):
            collection = self.visit(target, scope)
            inner = {**scope, binder: self.extend(collection, ANY)}
            results = [self.visit(arg, inner) for arg in args[1:]]
            if function == "filter":  # a sub-list of the collection's own elements
                self.consume(results[0])
                return collection
            for result in results:
                self.consume(result)
            return _NONE
        if target is not None and function in _PASS_THROUGH_METHODS and len(args) <= 1:
            passed = self.visit(target, scope)
            for arg in args:
                passed = passed | self.visit(arg, scope)
            return passed
        if target is None and function in _PASS_THROUGH_FUNCTIONS and len(args) == 1:
            return self.visit(args[0], scope)
        if isinstance(target, Ident) and target.name == "optional" and function == "of" and len(args) == 1:
            return self.visit(args[0], scope)
        if target is not None:
            self.consume(self.visit(target, scope))
        for arg in args:
            self.consume(self.visit(arg, scope))
        return _NONE


def analyse(expression: str) -> Reads:
    """The paths of `object` and `oldObject` that `expression` (CEL, as compiled) can read."""
    try:
        tree = parse(expression)
        analysis = _Analysis()
        analysis.consume(analysis.visit(tree, {}))
    except (CelSyntaxError, _Unanalysable, RecursionError):
        return EVERYTHING
    trees: dict[str, ReadTree | None] = {}
    for root in ROOTS:
        paths = [path[1:] for path in analysis.touched if path[0] == root]
        if not paths:
            continue
        whole = {path[1:] for path in analysis.whole if path[0] == root}
        trees[root] = None if () in whole else _tree(paths, whole)
    return Reads(trees)


def _tree(paths: Iterable[Path], whole: set[Path]) -> ReadTree:
    root: dict[str, Any] = {}
    for path in paths:
        node = root
        for segment in path:
            node = node.setdefault(segment, {})

    def build(children: dict[str, Any], prefix: Path) -> ReadTree:
        return ReadTree(
            whole=prefix in whole,
            children={key: build(value, (*prefix, key)) for key, value in children.items()},
        )

    return build(root, ())


# --- merging ---------------------------------------------------------------------------------------------------


def merge_trees(first: ReadTree | None, second: ReadTree | None) -> ReadTree | None:
    """What two readers read together (None: everything)."""
    if first is None or second is None:
        return None
    if first.keeps_everything or second.keeps_everything:
        return WHOLE
    children: dict[str, ReadTree] = dict(first.children)
    for key, child in second.children.items():
        children[key] = _merge_children(children[key], child) if key in children else child
    return ReadTree(children=children)


def _merge_children(first: ReadTree, second: ReadTree) -> ReadTree:
    merged = merge_trees(first, second)
    return WHOLE if merged is None else merged


def merge(reads: Iterable[Reads]) -> Reads:
    """What a set of expressions reads, together."""
    trees: dict[str, ReadTree | None] = {}
    for one in reads:
        for root, tree in one.trees.items():
            trees[root] = merge_trees(trees[root], tree) if root in trees else tree
    return Reads(trees)


def programs_in(value: Any, skip: tuple[type, ...] = ()) -> Iterable[Any]:
    """Every compiled `Program` reachable from compiled policies (dataclasses, tuples, lists, mappings), except
    inside instances of `skip`."""
    from engine.cel.environment import Program

    seen: set[int] = set()
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, (str, bytes, int, float, bool)) or item is None or id(item) in seen:
            continue
        if skip and isinstance(item, skip):
            continue
        seen.add(id(item))
        if isinstance(item, Program):
            yield item
        elif is_dataclass(item) and not isinstance(item, type):
            pending.extend(getattr(item, f.name) for f in fields(item))
        elif isinstance(item, Mapping):
            pending.extend(item.values())
        elif isinstance(item, (tuple, list, frozenset, set)):
            pending.extend(item)


# --- pruning ---------------------------------------------------------------------------------------------------

Pruner = Callable[[Any], Any]


def _keep(value: Any) -> Any:
    return value


def pruner(tree: ReadTree | None, *, element: bool = False) -> Pruner:
    """A function returning a copy of its argument holding only what `tree` reads (subtrees kept whole are shared,
    not copied). Built once per policy set: the tree is turned into nested closures, so pruning a request's
    object costs a few dict look-ups per kept key.

    Below a list element or map value (`element`), only the element's own keys are selected and each is kept
    whole: pruning inside every container's securityContext would cost more Python time than the conversion it
    saves, while dropping a container's env, probes and resources is where the gain is."""
    if tree is None or tree.keeps_everything:
        return _keep
    children = dict(tree.children)
    every = children.pop(ANY, None)
    if every is not None and not element:
        each = pruner(every, element=True)
        special = {key: pruner(_merge_children(every, child), element=True) for key, child in children.items()}

        def prune_every(value: Any) -> Any:
            if type(value) is dict:
                return {key: special.get(key, each)(item) for key, item in value.items()}
            if type(value) is list:
                return [each(item) for item in value]
            return value

        return prune_every
    if every is not None:  # an element's own elements: all of them, whole
        return _keep
    if element:
        whole: tuple[str, ...] = tuple(children)
        nested: tuple[tuple[str, Pruner], ...] = ()
    else:
        whole = tuple(key for key, child in children.items() if child.keeps_everything)
        nested = tuple((key, pruner(child)) for key, child in children.items() if not child.keeps_everything)

    def prune_keys(value: Any) -> Any:
        if type(value) is not dict:
            return value
        kept = {key: value[key] for key in whole if key in value}
        for key, prune_child in nested:
            if key in value:
                kept[key] = prune_child(value[key])
        return kept

    return prune_keys
