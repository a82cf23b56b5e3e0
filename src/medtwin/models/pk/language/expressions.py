"""Expressions of the PK model language: checked, then translated to compilable Python.

An expression is one line of arithmetic as a pharmacometrician writes it in NONMEM's $PK or
mrgsolve's $MAIN/$ODE: ``TVCL * (WT / 70) ** 0.75 * exp(ETA_CL)``, with ``+ - * / **``,
comparisons, ``and/or/not``, conditionals ``a if WT > 50 else b`` and the functions of
:data:`FUNCTIONS`. Only names the model defines may appear; anything else (attribute access,
indexing, calls of other functions, strings) is refused with the name of the offending part.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping

from medtwin.core.errors import ValidationError

#: function name in the language -> its Python (numba-compilable) spelling
FUNCTIONS = {"exp": "math.exp", "log": "math.log", "log10": "math.log10", "sqrt": "math.sqrt",
             "abs": "abs", "min": "min", "max": "max", "pow": "math.pow", "logit": "_logit",
             "expit": "_expit", "floor": "math.floor", "ceil": "math.ceil"}
_ALLOWED = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.IfExp,
            ast.Call, ast.Name, ast.Load, ast.Constant, ast.Add, ast.Sub, ast.Mult, ast.Div,
            ast.Pow, ast.USub, ast.UAdd, ast.Not, ast.And, ast.Or, ast.Lt, ast.LtE, ast.Gt,
            ast.GtE, ast.Eq, ast.NotEq)


def parse(text: str | float | int, where: str) -> ast.Expression:
    """Parse and check one expression (a number is an expression too)."""
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise ValidationError(f"expected an expression or a number, got {text!r}", where=where)
    src = str(text).strip().replace("^", "**")
    try:
        tree = ast.parse(src, mode="eval")
    except SyntaxError as exc:
        raise ValidationError(f"cannot read the expression {src!r}: {exc.msg} (write e.g. "
                              "'TVCL * (WT / 70) ** 0.75 * exp(ETA_CL)')", where=where) from None
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED):
            raise ValidationError(f"{type(node).__name__.lower()} is not allowed in an "
                                  f"expression ({src!r}); use arithmetic, comparisons, "
                                  f"'a if cond else b' and {sorted(FUNCTIONS)}", where=where)
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
                name = getattr(node.func, "id", ast.unparse(node.func))
                raise ValidationError(f"unknown function {name!r}; use one of "
                                      f"{sorted(FUNCTIONS)}", where=where)
            if node.keywords:
                raise ValidationError("functions take positional arguments only", where=where)
        if isinstance(node, ast.Constant) and (isinstance(node.value, bool)
                                               or not isinstance(node.value, int | float)):
            raise ValidationError(f"{node.value!r} is not a number", where=where)
    return tree


def names(tree: ast.Expression) -> set[str]:
    """Names an expression reads (functions excluded)."""
    funcs = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and id(n) not in funcs}


def check_names(tree: ast.Expression, known: set[str] | Mapping[str, object], where: str,
                what: str) -> None:
    """Refuse names outside ``known`` (with the nearest known one)."""
    from difflib import get_close_matches

    for n in sorted(names(tree)):
        if n not in known:
            close = get_close_matches(n, sorted(known), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValidationError(f"unknown name {n!r}{hint}; {what}", where=where)


def translate(tree: ast.Expression, symbols: Mapping[str, str]) -> str:
    """Python source of ``tree`` with every name replaced by ``symbols[name]`` (e.g.
    ``theta[0]``) and functions by their compilable spelling."""

    class _Rename(ast.NodeTransformer):
        def visit_Call(self, node: ast.Call) -> ast.AST:  # noqa: N802 - ast API
            node.args = [self.visit(a) for a in node.args]
            node.func = ast.parse(FUNCTIONS[node.func.id], mode="eval").body  # type: ignore[attr-defined]
            return node

        def visit_Name(self, node: ast.Name) -> ast.AST:  # noqa: N802 - ast API
            return ast.parse(symbols[node.id], mode="eval").body

        def visit_Constant(self, node: ast.Constant) -> ast.AST:  # noqa: N802 - ast API
            return ast.Constant(float(node.value))

    copy = ast.parse(ast.unparse(tree), mode="eval")
    return ast.unparse(_Rename().visit(copy))


def is_linear(tree: ast.Expression, states: set[str]) -> bool:
    """Whether an ODE right-hand side is a linear form of ``states`` (every term one state
    times a state-free factor; no constant term), so the model can be stepped exactly."""

    def free(node: ast.AST) -> bool:
        return not any(isinstance(n, ast.Name) and n.id in states for n in ast.walk(node))

    def hom(node: ast.AST) -> bool:
        if isinstance(node, ast.Name):
            return node.id in states
        if isinstance(node, ast.BinOp):
            if isinstance(node.op, ast.Add | ast.Sub):
                return hom(node.left) and hom(node.right)
            if isinstance(node.op, ast.Mult):
                return (hom(node.left) and free(node.right)) or (free(node.left)
                                                                 and hom(node.right))
            if isinstance(node.op, ast.Div):
                return hom(node.left) and free(node.right)
            return False
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            return hom(node.operand)
        if isinstance(node, ast.IfExp):
            return free(node.test) and hom(node.body) and hom(node.orelse)
        return False

    return hom(tree.body)
