"""The three mutation primitives of MutatingPolicies, as pure functions returning data.

- `apply_configuration`: merge an ApplyConfiguration (the value of a CEL `Object{...}` literal: plain nested
  dicts and lists) into an object with server-side-apply semantics, as Kyverno does through Kubernetes'
  structured-merge-diff (`pkg/cel/policies/mpol/compiler/applyconfig.go`, `smd.go`).
- `apply_json_patch`: RFC 6902 (the `jsonpatch` library) with Kyverno's rule that a failing `test` leaves the
  object unchanged without error (`mpol/compiler/json.go`).
- `diff`: the RFC 6902 patch from the admitted object to the mutated one, which the admission webhook returns.

None of them raises for bad input: problems come back as an `error` string naming the field path or operation,
so that the caller can turn them into an `error` rule result. Inputs are never mutated. Results share unchanged
subtrees with the inputs (and `diff` operations share values with `final`): treat all of them as immutable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import jsonpatch
import jsonpointer
import orjson

from engine.schemas import LIST, MAP, NO_DEFAULT, SCALAR, STRUCT, Schema

__all__ = ["MergeOutcome", "PatchOutcome", "apply_configuration", "apply_json_patch", "diff"]

_ABSENT: Final = object()


@dataclass(frozen=True, slots=True)
class MergeOutcome:
    """The merged object (the input object itself on error), notes for result properties, or an error."""

    object: Mapping[str, Any]
    notes: tuple[str, ...] = ()
    error: str | None = None


@dataclass(frozen=True, slots=True)
class PatchOutcome:
    """The patched object (the input object itself on error or failed `test`), or an error."""

    object: Mapping[str, Any]
    error: str | None = None


# --------------------------------------------------------------------------------------------------------------
# ApplyConfiguration: server-side-apply merge


class _MergeError(Exception):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path or '<root>'}: {message}")


def apply_configuration(
    obj: Mapping[str, Any], patch: Mapping[str, Any], schema: Schema | None, *, reject_atomic: bool = False
) -> MergeOutcome:
    """Merge the ApplyConfiguration `patch` into `obj` as server-side apply does (structured-merge-diff).

    - Structs and granular maps merge key by key, recursively; keys only in `obj` are kept.
    - Map-lists (`x-kubernetes-list-type: map`) merge element by element on their key fields (`containers`,
      `volumes`, `env` by `name`; `ports` by `containerPort` + `protocol`, where a missing `protocol` keys as
      `TCP`). Element order is structured-merge-diff's: elements only in `obj` keep their places, elements in
      both are ordered as the patch lists them, and new elements go where the patch puts them relative to the
      shared ones (so new elements listed after every shared one are appended). Sets (`set`) union the same way.
      A patch element without a key field, or two patch elements with the same key, is an error.
    - Atomic lists, maps and structs are replaced whole. With `reject_atomic=True` (Kyverno's default,
      `evaluation.useServerSideApply: false`, which runs the upstream MutatingAdmissionPolicy guard) any
      atomic value in the patch is an error instead: "may not mutate atomic arrays, maps or structs: ...".
    - Without a schema (`schema` None: a kind nobody described; or an untyped / preserve-unknown-fields part of
      a CRD) maps still merge key by key, lists are replaced and a note says so ("spec.foo: no schema, list
      replaced"); this is structured-merge-diff's "deduced" type.
    - Explicit `null` in the patch, as structured-merge-diff's merge walker handles it (typed/merge.go: `doMap`
      and `doList` treat a null side as absent and promote "both empty" to a leaf; a leaf takes the patch's
      value): a null scalar, atomic list or atomic map sets the field to null; a null granular map/struct or
      map/set list is a no-op when the object holds a non-empty value there, and sets null when the object's
      value is absent or empty. The null stays in the result (as in Kyverno's patched resource); `diff` then
      emits it and the API server clears the field. An empty patch map or list likewise leaves a non-empty
      value alone and replaces an absent one. (SMD v3 briefly rejected nulls, "null not allowed in applied
      object"; v4+ as used by Kubernetes and Kyverno accept them as above, see merge_test.go "null/empty".)
    - Type mismatches against the schema (a map where a list is declared, a string for an integer, a field a
      struct does not declare) are errors naming the field path. A value of the wrong type in `obj` is treated
      as absent (the patch replaces it).
    """
    if not isinstance(obj, Mapping):
        return MergeOutcome({}, (), f"the object to mutate must be a map, got {_type_name(obj)}")
    if not isinstance(patch, Mapping):
        return MergeOutcome(obj, (), f"the apply configuration must be a map, got {_type_name(patch)}")
    merger = _Merger(reject_atomic)
    try:
        merged = merger.merge(obj, patch, schema, "")
    except _MergeError as error:
        return MergeOutcome(obj, (), str(error))
    except RecursionError:
        return MergeOutcome(obj, (), "the apply configuration is nested too deeply")
    if merger.atomics:
        return MergeOutcome(obj, (), "may not mutate atomic arrays, maps or structs: " + ", ".join(merger.atomics))
    if not isinstance(merged, Mapping):  # a null patch root cannot happen (patch is a map); keep mypy honest
        return MergeOutcome(obj, (), "the apply configuration did not produce an object")
    return MergeOutcome(merged, tuple(dict.fromkeys(merger.notes)))


class _Merger:
    __slots__ = ("atomics", "notes", "reject_atomic")

    def __init__(self, reject_atomic: bool) -> None:
        self.reject_atomic = reject_atomic
        self.notes: list[str] = []
        self.atomics: list[str] = []

    def merge(self, lhs: Any, rhs: Any, schema: Schema | None, path: str) -> Any:
        if rhs is None:
            return self._null(lhs, schema)
        if type(rhs) is dict or isinstance(rhs, Mapping):
            return self._map(lhs, rhs, schema, path)
        if isinstance(rhs, list | tuple):
            return self._list(lhs, rhs, schema, path)
        if schema is not None:
            if schema.kind != SCALAR:
                raise _MergeError(path, f"expected {_expected(schema)}, got {_type_name(rhs)}")
            _check_scalar(rhs, schema, path)
        return rhs

    @staticmethod
    def _null(lhs: Any, schema: Schema | None) -> Any:
        if schema is None or schema.kind in (STRUCT, MAP):
            if (schema is None or schema.map_type != "atomic") and isinstance(lhs, Mapping) and lhs:
                return lhs
            return None
        if schema.kind == LIST and schema.list_type != "atomic" and isinstance(lhs, list) and lhs:
            return lhs
        return None

    def _map(self, lhs: Any, rhs: Mapping[str, Any], schema: Schema | None, path: str) -> Any:
        if schema is not None:
            if schema.kind not in (STRUCT, MAP):
                raise _MergeError(path, f"expected {_expected(schema)}, got map")
            if schema.map_type == "atomic":
                if self.reject_atomic:
                    self.atomics.append(path or "<root>")
                return self._atomic(rhs, schema, path)
        base = lhs if type(lhs) is dict or isinstance(lhs, Mapping) else None
        if not rhs:
            return base if base else {}
        out: dict[str, Any] = dict(base) if base else {}
        for key, value in rhs.items():
            if not isinstance(key, str):
                raise _MergeError(path, f"map keys must be strings, got {_type_name(key)}")
            child_path = _join(path, key)
            child: Schema | None = None
            if schema is not None:
                child = schema.field(key)
                if child is None and not schema.has_field(key) and not schema.preserve_unknown_fields:
                    raise _MergeError(child_path, f"field not declared in schema ({schema.name or 'object'})")
            out[key] = self.merge(base.get(key, _ABSENT) if base else _ABSENT, value, child, child_path)
        return out

    def _atomic(self, rhs: Any, schema: Schema, path: str) -> Any:
        """An atomic value replaces the object's; its content is still checked against the schema."""
        if isinstance(rhs, Mapping):
            if schema.kind == MAP:
                additional = schema.additional()
                return {key: self._fresh(value, additional, _join(path, key)) for key, value in rhs.items()}
            out: dict[str, Any] = {}
            for key, value in rhs.items():
                child_path = _join(path, str(key))
                child = schema.field(key) if isinstance(key, str) else None
                if child is None and not schema.has_field(str(key)) and not schema.preserve_unknown_fields:
                    raise _MergeError(child_path, f"field not declared in schema ({schema.name or 'object'})")
                out[key] = self._fresh(value, child, child_path)
            return out
        items = schema.items()
        return [self._fresh(value, items, f"{path}[{index}]") for index, value in enumerate(rhs)]

    def _fresh(self, value: Any, schema: Schema | None, path: str) -> Any:
        """Inside an atomic value nothing merges: validate against the schema, keep the value as given."""
        if value is None or schema is None:
            return value
        if isinstance(value, Mapping):
            if schema.kind not in (STRUCT, MAP):
                raise _MergeError(path, f"expected {_expected(schema)}, got map")
            return self._atomic(value, schema, path)
        if isinstance(value, list | tuple):
            if schema.kind != LIST:
                raise _MergeError(path, f"expected {_expected(schema)}, got list")
            return self._atomic(value, schema, path)
        if schema.kind != SCALAR:
            raise _MergeError(path, f"expected {_expected(schema)}, got {_type_name(value)}")
        _check_scalar(value, schema, path)
        return value

    def _list(self, lhs: Any, rhs: Sequence[Any], schema: Schema | None, path: str) -> Any:
        if schema is None:
            self.notes.append(f"{path or '<root>'}: no schema, list replaced")
            if self.reject_atomic:
                self.atomics.append(path or "<root>")
            return list(rhs)
        if schema.kind != LIST:
            raise _MergeError(path, f"expected {_expected(schema)}, got list")
        if schema.list_type not in ("map", "set"):
            if self.reject_atomic:
                self.atomics.append(path or "<root>")
            return self._atomic(rhs, schema, path)
        items = schema.items()
        by_map_key = schema.list_type == "map"
        rhs_keys: list[Any] = []
        rhs_items: dict[Any, tuple[int, Any]] = {}
        for index, element in enumerate(rhs):
            element_path = f"{path}[{index}]"
            key = _map_key(element, schema, element_path) if by_map_key else _set_key(element, element_path)
            if key in rhs_items:
                raise _MergeError(path, f"duplicate entries for key {_render_key(key, schema)}")
            rhs_keys.append(key)
            rhs_items[key] = (index, element)
        base = lhs if isinstance(lhs, list) else None
        if not base:
            if not rhs:
                return []
            base = []
        elif not rhs:
            return base

        def merged(key: Any, lhs_element: Any) -> Any:
            index, element = rhs_items[key]
            if not by_map_key:
                if items is not None and items.kind == SCALAR and element is not None:
                    _check_scalar(element, items, f"{path}[{index}]")
                return element
            return self.merge(lhs_element, element, items, f"{path}[{index}]")

        # Key the object's elements. Elements without a usable key, and keys the object repeats, are kept where
        # they are (a repeated key that the patch also names is replaced by the patch's element, unmerged).
        lhs_keys: list[Any] = []
        lhs_items: dict[Any, Any] = {}
        repeated: set[Any] = set()
        for position, element in enumerate(base):
            try:
                key = _map_key(element, schema, "") if by_map_key else _set_key(element, "")
            except _MergeError:
                key = ("\0unkeyed", position)
            if key in lhs_items:
                repeated.add(key)
            lhs_keys.append(key)
            lhs_items[key] = element
        if repeated:
            pairs: list[tuple[Any, Any]] = []
            for position, (key, element) in enumerate(zip(lhs_keys, base, strict=True)):
                if key in repeated:
                    if key in rhs_items:
                        continue  # the patch's element replaces every copy, at the patch's position
                    key = ("\0repeated", position)
                pairs.append((key, element))
            lhs_keys = [key for key, _ in pairs]
            lhs_items = dict(pairs)
        return self._interleave(lhs_keys, lhs_items, rhs_keys, rhs_items, merged)

    @staticmethod
    def _interleave(
        lhs_keys: list[Any],
        lhs_items: dict[Any, Any],
        rhs_keys: list[Any],
        rhs_items: Mapping[Any, Any],
        merged: Any,
    ) -> list[Any]:
        """structured-merge-diff's `visitListItems` order (typed/merge.go)."""
        shared = iter([key for key in rhs_keys if key in lhs_items])
        next_shared = next(shared, _ABSENT)
        out: list[Any] = []
        left, right = 0, 0
        lhs_len, rhs_len = len(lhs_keys), len(rhs_keys)
        while left < lhs_len or right < rhs_len:
            progressed = False
            if left < lhs_len and right < rhs_len:
                key = lhs_keys[left]
                if key == rhs_keys[right]:
                    out.append(merged(key, lhs_items[key]))
                    left += 1
                    right += 1
                    next_shared = next(shared, _ABSENT)
                    continue
                if key in rhs_items and next_shared is not _ABSENT and next_shared != key:
                    left += 1  # a shared element the patch places later
                    continue
            if left < lhs_len:
                key = lhs_keys[left]
                if key not in rhs_items:
                    out.append(lhs_items[key])
                    left += 1
                    continue
            if right < rhs_len:
                key = rhs_keys[right]
                out.append(merged(key, lhs_items.get(key, _ABSENT)))
                right += 1
                progressed = True
                if next_shared is not _ABSENT and next_shared == key:
                    next_shared = next(shared, _ABSENT)
            if not progressed:
                left += 1  # a shared element already emitted; cannot happen without repeated keys
        return out


def _map_key(element: Any, schema: Schema, path: str) -> tuple[Any, ...]:
    if type(element) is not dict and not isinstance(element, Mapping):
        raise _MergeError(
            path, f"expected a map element (list keyed by {', '.join(schema.list_map_keys)}), got {_type_name(element)}"
        )
    values: list[Any] = []
    for field in schema.list_map_keys:
        value = element.get(field)
        if value is None:
            value = schema.key_default(field)
            if value is NO_DEFAULT:
                raise _MergeError(path, f"element omits key field {field!r} (and it has no default value)")
        if type(value) is str:
            values.append(("s", value))
            continue
        if isinstance(value, Mapping | list | tuple):
            raise _MergeError(_join(path, field), f"key field must be a scalar, got {_type_name(value)}")
        values.append(_scalar_key(value))
    return tuple(values)


def _set_key(element: Any, path: str) -> Any:
    if isinstance(element, Mapping | list | tuple):
        try:
            return ("\0json", orjson.dumps(element, option=orjson.OPT_SORT_KEYS))
        except TypeError:
            return ("\0repr", repr(element))
    return _scalar_key(element)


def _scalar_key(value: Any) -> Any:
    # Tag the type: in Python True == 1 == 1.0, in JSON only 1 == 1.0.
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int | float):
        return ("n", value)
    return ("s", value) if isinstance(value, str) else ("o", value)


def _render_key(key: Any, schema: Schema) -> str:
    if schema.list_type == "map":
        return (
            "["
            + ",".join(f"{field}={value[1]!r}" for field, value in zip(schema.list_map_keys, key, strict=False))
            + "]"
        )
    return f"[={key[1]!r}]"


def _check_scalar(value: Any, schema: Schema, path: str) -> None:
    expected = schema.scalar_type
    if expected is None or value is None:
        return
    if expected == "string":
        ok = isinstance(value, str)
    elif expected == "boolean":
        ok = isinstance(value, bool)
    else:  # structured-merge-diff has one "numeric" scalar for integer and number
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok:
        raise _MergeError(path, f"expected {expected}, got {_type_name(value)}")


def _expected(schema: Schema) -> str:
    if schema.kind == SCALAR:
        return schema.scalar_type or "scalar"
    return "list" if schema.kind == LIST else "map"


def _join(path: str, key: str) -> str:
    if key.isidentifier() or key.replace("-", "_").isidentifier():
        return f"{path}.{key}" if path else key
    return f"{path}[{key!r}]"


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, Mapping):
        return "map"
    if isinstance(value, list | tuple):
        return "list"
    return {str: "string", int: "int", float: "number"}.get(type(value), type(value).__name__)


# --------------------------------------------------------------------------------------------------------------
# JSON patch


def apply_json_patch(obj: Mapping[str, Any], operations: Sequence[Mapping[str, Any]]) -> PatchOutcome:
    """Apply RFC 6902 `operations` to `obj` (without mutating it), with Kyverno's semantics.

    A `test` that fails (the value differs, or the member is missing under an existing parent) leaves the object
    unchanged and is not an error: the whole patch is dropped, as Kyverno does on `jsonpatch.ErrTestFailed`.
    Any other failure is an error naming the operation: `"jsonPatch[2] (remove /spec/x): can't remove a
    non-existent object 'x'"` (a missing path or parent, an index out of range, an unknown op, a malformed
    operation). Paths use RFC 6901 escaping (`~0` for `~`, `~1` for `/`); `-` appends to a list. A `test` under
    a missing parent is an error, and a `test` of a missing member against `null` passes (evanphx/json-patch).

    `obj` is never mutated: containers on each operation's path are copied first (copy-on-write), so the result
    shares untouched subtrees with `obj`; operation values are deep-copied, so two `add`s of one value never alias.
    """
    if not isinstance(obj, Mapping):
        return PatchOutcome({}, f"the object to patch must be a map, got {_type_name(obj)}")
    if isinstance(operations, str | bytes) or not isinstance(operations, Sequence):
        return PatchOutcome(obj, f"a JSON patch must be a list of operations, got {_type_name(operations)}")
    document = _CopyOnWrite(obj)
    for index, operation in enumerate(operations):
        if not isinstance(operation, Mapping):
            return PatchOutcome(obj, f"jsonPatch[{index}]: an operation must be a map, got {_type_name(operation)}")
        op, path = operation.get("op"), operation.get("path")
        label = f"jsonPatch[{index}] ({op} {path})"
        operation_class = jsonpatch.JsonPatch.operations.get(op) if isinstance(op, str) else None
        if operation_class is None:
            return PatchOutcome(obj, f"{label}: unknown operation {op!r}" if op is not None else f"{label}: no 'op'")
        if not isinstance(path, str):
            return PatchOutcome(obj, f"{label}: 'path' must be a string")
        if op in ("move", "copy") and not isinstance(operation.get("from"), str):
            return PatchOutcome(obj, f"{label}: 'from' must be a string")
        if op in ("add", "replace", "test") and "value" not in operation:
            return PatchOutcome(obj, f"{label}: no 'value'")
        raw = {key: copy_json(value) if key == "value" else value for key, value in operation.items()}
        try:
            if op == "test":
                if _test_member_missing(document.root, path):
                    if operation.get("value") is None:
                        continue  # evanphx/json-patch: a missing member tests equal to null
                    return PatchOutcome(obj)
            elif op == "move":
                document.own_everything()  # list indices shift between the remove and the add
            else:
                document.own_path(path)
            document.root = operation_class(raw).apply(document.root)
        except jsonpatch.JsonPatchTestFailed:
            return PatchOutcome(obj)
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as error:
            return PatchOutcome(obj, f"{label}: {_short(str(error))}")
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as error:
            return PatchOutcome(obj, f"{label}: {type(error).__name__}: {error}")
    if not isinstance(document.root, Mapping):
        return PatchOutcome(obj, f"the patched document is not an object (got {_type_name(document.root)})")
    return PatchOutcome(document.root)


class _CopyOnWrite:
    """The document being patched, copied lazily: before an operation, the containers on its path are copied
    (once), so the caller's object is never mutated and untouched subtrees stay shared (which also makes a
    later `diff` cheap). A 2-operation patch of a 10 KB Pod copies a handful of small containers instead of
    deep-copying everything."""

    __slots__ = ("_owned", "_owns_everything", "root")

    def __init__(self, obj: Mapping[str, Any]) -> None:
        self.root: Any = dict(obj)
        self._owned: dict[int, Any] = {id(self.root): self.root}  # keeps our copies alive, so ids stay unique
        self._owns_everything = False

    def own_everything(self) -> None:
        if not self._owns_everything:
            self.root = copy_json(self.root)
            self._owns_everything = True

    def own_path(self, path: str) -> None:
        """Copy every container from the root down to the parent of `path` (and the target, for safety)."""
        if self._owns_everything:
            return
        try:
            parts = jsonpointer.JsonPointer(path).parts
        except jsonpointer.JsonPointerException:
            return  # the operation itself reports the bad path
        current = self.root
        for part in parts:
            if type(current) is dict:
                key: Any = part
                if key not in current:
                    return
            elif type(current) is list:
                if not part.isdigit() or int(part) >= len(current):
                    return
                key = int(part)
            else:
                return
            child = current[key]
            if id(child) not in self._owned:
                if isinstance(child, Mapping):
                    child = dict(child)
                elif isinstance(child, list | tuple):
                    child = list(child)
                else:
                    return
                self._owned[id(child)] = child
                current[key] = child
            current = child


def _short(message: str) -> str:
    """jsonpointer quotes the whole document it failed in ("member 'x' not found in {...}"): cut that part."""
    for marker in (" in {", " in ["):
        cut = message.find(marker)
        if cut != -1:
            message = message[:cut]
    return message if len(message) <= 200 else message[:197] + "..."


def _test_member_missing(document: Any, path: str) -> bool:
    """For `test`: True when the parent exists but the member does not. A missing parent raises (an error)."""
    pointer = jsonpointer.JsonPointer(path)
    if not pointer.parts:
        return False
    parent, part = pointer.to_last(document)
    if isinstance(parent, Mapping):
        return part not in parent
    if isinstance(parent, list):
        return part == "-" or (isinstance(part, int) and part >= len(parent))
    raise jsonpointer.JsonPointerException(f"test operation does not apply: {path!r} is not inside a map or list")


def copy_json(value: Any) -> Any:
    """A deep copy of a JSON value (dicts and lists; scalars are shared). Faster than copy.deepcopy."""
    kind = type(value)
    if kind is dict:
        return {key: copy_json(item) if type(item) in _CONTAINERS else item for key, item in value.items()}
    if kind is list:
        return [copy_json(item) if type(item) in _CONTAINERS else item for item in value]
    if isinstance(value, Mapping):
        return {key: copy_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [copy_json(item) for item in value]
    return value


_CONTAINERS: Final = frozenset({dict, list, tuple})


# --------------------------------------------------------------------------------------------------------------
# Diff


def diff(original: Mapping[str, Any], final: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The RFC 6902 patch that turns `original` into `final` (for the admission response).

    Maps are compared key by key; lists element by element when their lengths match, by trailing `add`s or
    `remove`s when one is a prefix of the other, else replaced whole. Unchanged subtrees shared by identity
    (as `apply_configuration` leaves them) are skipped without being walked. Numbers compare as JSON numbers
    (1 == 1.0) but booleans never equal numbers. `jsonpatch.apply_patch(original, diff(original, final))`
    equals `final`.
    """
    operations: list[dict[str, Any]] = []
    _diff(original, final, "", operations)
    return operations


def _diff(old: Any, new: Any, path: str, operations: list[dict[str, Any]]) -> None:
    if old is new:
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for key in old:
            if key not in new:
                operations.append({"op": "remove", "path": f"{path}/{_escape(key)}"})
        for key, value in new.items():
            previous = old.get(key, _ABSENT)
            if previous is value:
                continue  # shared, unchanged subtree (the common case after a merge)
            if previous is _ABSENT:
                operations.append({"op": "add", "path": f"{path}/{_escape(key)}", "value": value})
            else:
                _diff(previous, value, f"{path}/{_escape(key)}", operations)
        return
    if isinstance(old, list) and isinstance(new, list):
        old_len, new_len = len(old), len(new)
        if old_len == new_len:
            for index in range(old_len):
                if old[index] is not new[index]:
                    _diff(old[index], new[index], f"{path}/{index}", operations)
            return
        if old_len < new_len and all(_json_equal(a, b) for a, b in zip(old, new, strict=False)):
            for index in range(old_len, new_len):
                operations.append({"op": "add", "path": f"{path}/{index}", "value": new[index]})
            return
        if new_len < old_len and all(_json_equal(a, b) for a, b in zip(old, new, strict=False)):
            for index in range(old_len - 1, new_len - 1, -1):
                operations.append({"op": "remove", "path": f"{path}/{index}"})
            return
        operations.append({"op": "replace", "path": path, "value": new})
        return
    if not _json_equal(old, new):
        operations.append({"op": "replace", "path": path, "value": new})


def _escape(key: str) -> str:
    if "~" in key or "/" in key:
        return key.replace("~", "~0").replace("/", "~1")
    return key


def _json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values: 1 == 1.0, but True != 1 and nested values compare the same way."""
    if a is b:
        return True
    type_a, type_b = type(a), type(b)
    if type_a is not type_b:
        if type_a in _NUMBERS and type_b in _NUMBERS:
            return bool(a == b)
        if not (isinstance(a, dict) and isinstance(b, dict)) and not (isinstance(a, list) and isinstance(b, list)):
            return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_json_equal(value, b[key]) for key, value in a.items())
    if isinstance(a, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


_NUMBERS: Final = frozenset({int, float})
