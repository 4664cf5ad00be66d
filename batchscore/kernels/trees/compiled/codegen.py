"""Tree IR -> C source: one function per tree, one driver that sums or lists exit leaves.

Why C generated per model: thresholds, feature offsets and the tree's shape become immediates
and code, so a node costs a compare and a (mostly predicted) branch instead of three dependent
loads. Each tree gets one of three forms, picked from its shape (`forms`):

- branchy: nested if/else, one path per row. Best for LightGBM's leaf-wise trees, whose deep,
  lopsided paths a padded layout would walk in full, and for every node the branchless form
  does not cover (categorical bitsets, zero-as-missing);
- branchless: the tree padded to a complete tree of its depth, walked with index arithmetic
  (child = 2i+1 or 2i+2) over 8 rows at once, so no branch depends on the data. Best for
  balanced trees (random forests, depth-limited boosting), where a branchy walk mispredicts
  about every other node. Chosen when depth <= BRANCHLESS_MAX_DEPTH, the tree has only numeric
  nodes without zero-as-missing, and its depth is at most 1.5x its mean leaf depth (padding
  a lopsided tree would walk far more levels than the real paths).
- table: the node arrays as constant data and one loop that walks them. For big trees (fully
  grown forests have thousands of leaves): code for them would take the compiler minutes
  (superlinear in function size), while constant tables compile in milliseconds. Trees with
  more than BRANCHY_MAX_NODES internal nodes, and the largest trees once all branchy code
  would pass BRANCHY_BUDGET_NODES, take this form.

The node semantics are those of `ir.goes_left`, in order: NaN -> `nan_left`; zero-as-missing
and x == 0 -> `default_left`; categorical bitsets; else `x <= threshold` in float64. Inputs are
prepared first by the ensemble's input rule (float32 round trip, LightGBM's zero threshold).

The factorized fact side (kernels.trees.factorized) uses the same generator: a node whose
feature lives in a factorized dimension is a *word test* instead. The dimension row's words are
the AND of the QuickScorer masks of its false nodes; a node on the row's path is true exactly
when some leaf of its left subtree is still set there (the exit leaf is never cleared, and a
false node clears its whole left subtree), so the test is an AND of the joined 32-bit words
with the node's left-leaf range, and the walk reaches the exit leaf QuickScorer would find.

The driver adds leaf values tree by tree in the ensemble's order, into zeroed float64 sums, the
order in which LightGBM and scikit-learn add them, so results match the libraries bit for bit
in the cases measured (tests compare at rtol 1e-12).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from batchscore.kernels.trees.ir import LIGHTGBM_ZERO, Tree, TreeEnsemble

CODEGEN_VERSION = "1"
"""Bumped whenever generated code can change for the same IR (part of every cache key)."""

ABI_VERSION = 1
"""What `bs_abi()` returns; the loader refuses a library built for another calling convention."""

BLOCK_ROWS = 1024
"""Rows per block: every tree runs over a block before the next tree (its code and branch
history stay hot). Measured on LightGBM 500 trees: 16 rows 3.1x, 256 4.9x, 1024 5.5x, 4096 5.3x
LightGBM's own predictor."""

INTERLEAVE = 8
"""Rows walked together by a branchless tree: independent load chains overlap."""

BRANCHLESS_MAX_DEPTH = 10
BRANCHY_MAX_NODES = 511
BRANCHY_BUDGET_NODES = 120_000
"""gcc -O2 compiles about 5,000 branchy nodes per second per core here (LightGBM, 500 trees x
62 nodes: 7.8 s on 2 cores); the budget keeps a cold compile near 15-30 s."""
TREES_PER_UNIT = 50
"""Trees per translation unit: units compile in parallel and keep gcc's memory small."""


BRANCHY, BRANCHLESS, TABLE = "branchy", "branchless", "table"

WordTests = dict[tuple[int, int], tuple[tuple[int, int], ...]]
"""(tree, node) -> ((input column, 32-bit mask), ...): the node goes left when any masked bit of
those columns (joined words, exact integers in float64) is set."""


@dataclass(frozen=True)
class Source:
    """The C translation units of one ensemble and what the driver computes."""

    units: tuple[str, ...]
    n_trees: int
    n_outputs: int
    n_inputs: int
    forms: tuple[str, ...]

    def count(self, form: str) -> int:
        return sum(f == form for f in self.forms)

    @property
    def size(self) -> int:
        return sum(len(u) for u in self.units)


def fingerprint(
    ens: TreeEnsemble,
    outputs: np.ndarray,
    n_outputs: int,
    words: WordTests | None = None,
    prepared: int | None = None,
) -> str:
    """sha256 of everything the generated code depends on (cheap: array bytes, no codegen)."""
    h = hashlib.sha256()
    h.update(f"{CODEGEN_VERSION}|{ens.input_rule}|{ens.category_rule}|{n_outputs}".encode())
    h.update(f"|{ens.n_features}|{prepared}|{sorted((words or {}).items())}".encode())
    h.update(np.ascontiguousarray(outputs, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(ens.cat_bitsets, dtype=np.uint32).tobytes())
    h.update(str(ens.cat_bitsets.shape).encode())
    for tree in ens.trees:
        for arr in (
            tree.feature,
            tree.threshold,
            tree.left,
            tree.right,
            tree.default_left,
            tree.nan_left,
            tree.zero_missing,
            tree.cat_left,
            tree.cat_known,
            tree.leaf_value,
        ):
            h.update(np.ascontiguousarray(arr).tobytes())
            h.update(str(arr.shape).encode())
    return h.hexdigest()


def generate(
    ens: TreeEnsemble,
    outputs: np.ndarray,
    n_outputs: int,
    words: WordTests | None = None,
    prepared: int | None = None,
) -> Source:
    """C source for `ens`: tree t adds its leaf row to sums columns outputs[t] .. + width.

    Features are read by the IR's own indexes: the caller passes rows of `ens.n_features`
    values (kernels.trees.compiled.forest gathers the columns the trees read). `words` turns
    nodes into word tests; the input rule applies to the first `prepared` columns (all when
    None): joined words must reach the tests untouched.
    """
    trees = ens.trees
    tests = words or {}
    chosen = forms(ens, tests)
    writers = {BRANCHY: _branchy_tree, BRANCHLESS: _branchless_tree, TABLE: _table_tree}
    units: list[str] = []
    unit: list[str] = []
    budget = 0
    for t, tree in enumerate(trees):
        own = {i: m for (tt, i), m in tests.items() if tt == t}
        unit.append(writers[chosen[t]](tree, t, own))
        budget += tree.n_internal if chosen[t] == BRANCHY else 8
        if budget >= TREES_PER_UNIT * 64:
            units.append("\n".join([_PRELUDE, _cat_decl(ens), *unit]))
            unit, budget = [], 0
    if unit:
        units.append("\n".join([_PRELUDE, _cat_decl(ens), *unit]))
    units.append(_driver(ens, outputs, n_outputs, prepared))
    return Source(tuple(units), len(trees), n_outputs, ens.n_features, chosen)


def forms(ens: TreeEnsemble, words: WordTests | None = None) -> tuple[str, ...]:
    """Each tree's form (module docstring), the largest branchy trees demoted to tables once
    the branchy code would exceed the compile budget. Trees with word tests are never
    branchless."""
    with_words = {t for t, _ in (words or {})}
    out: list[str] = []
    for t, tree in enumerate(ens.trees):
        if t not in with_words and is_branchless(tree):
            out.append(BRANCHLESS)
        elif tree.n_internal > BRANCHY_MAX_NODES:
            out.append(TABLE)
        else:
            out.append(BRANCHY)
    sizes = [(t.n_internal, i) for i, t in enumerate(ens.trees) if out[i] == BRANCHY]
    total = sum(n for n, _ in sizes)
    for n, i in sorted(sizes, reverse=True):
        if total <= BRANCHY_BUDGET_NODES:
            break
        out[i] = TABLE
        total -= n
    return tuple(out)


def is_branchless(tree: Tree) -> bool:
    """Balanced, shallow, numeric-only trees (module docstring)."""
    if tree.n_internal == 0 or tree.depth > BRANCHLESS_MAX_DEPTH:
        return False
    if tree.zero_missing.any() or (tree.cat_left >= 0).any():
        return False
    return tree.depth <= 1.5 * mean_leaf_depth(tree)


def mean_leaf_depth(tree: Tree) -> float:
    depths: list[int] = []
    stack = [(0, 0)]
    while stack:
        code, d = stack.pop()
        if code < 0:
            depths.append(d)
            continue
        stack.append((int(tree.left[code]), d + 1))
        stack.append((int(tree.right[code]), d + 1))
    return float(np.mean(depths)) if depths else 0.0


def c_double(value: float) -> str:
    """An exact C literal for a float64 (hex float; infinities and NaN by name)."""
    v = float(value)
    if math.isnan(v):
        return "NAN"
    if math.isinf(v):
        return "INFINITY" if v > 0 else "(-INFINITY)"
    return v.hex()


_PRELUDE = """#include <stdint.h>
#include <math.h>
#define HIDDEN __attribute__((visibility("hidden")))
#define EXPORT __attribute__((visibility("default")))
typedef int32_t bs_leaf;
"""


def _cat_decl(ens: TreeEnsemble) -> str:
    return "HIDDEN int bs_cat(double v, int row, int known, int dl);"


def _word_test(masks: tuple[tuple[int, int], ...]) -> str:
    terms = [f"((uint32_t)x[{col}] & {mask}u)" for col, mask in masks]
    return f"(({' | '.join(terms) or '0u'}) != 0u)"


def _node_test(tree: Tree, i: int, words: dict[int, tuple[tuple[int, int], ...]]) -> str:
    """The C expression that is 1 when node i sends its row left (`x` is the row)."""
    if i in words:
        return _word_test(words[i])
    x = f"x[{int(tree.feature[i])}]"
    dl = int(bool(tree.default_left[i]))
    nan_left = bool(tree.nan_left[i])
    if int(tree.cat_left[i]) >= 0:
        test = f"bs_cat({x}, {int(tree.cat_left[i])}, {int(tree.cat_known[i])}, {dl})"
        test = f"(isnan({x}) ? {int(nan_left)} : {test})"
    else:
        t = c_double(float(tree.threshold[i]))
        # NaN compares false both ways: !(x > t) sends NaN left, (x <= t) right
        test = f"!({x} > {t})" if nan_left else f"({x} <= {t})"
    if bool(tree.zero_missing[i]):
        test = f"({x} == 0.0 ? {dl} : {test})"
    return test


def _branchy_tree(tree: Tree, t: int, words: dict[int, tuple[tuple[int, int], ...]]) -> str:
    lines = [
        f"HIDDEN void bs_tree_{t}(const double* restrict X, int64_t n, int64_t ld, "
        "bs_leaf* restrict L) {",
        "  for (int64_t r = 0; r < n; ++r) {",
        "    const double* x = X + r * ld;",
    ]
    if tree.n_internal == 0:
        lines.append("    (void)x; L[r] = 0;")
    else:
        _emit(tree, words, 2, lines)
    lines.append("  }\n}")
    return "\n".join(lines)


def _emit(
    tree: Tree, words: dict[int, tuple[tuple[int, int], ...]], depth: int, out: list[str]
) -> None:
    """Nested if/else for the whole tree (iterative: trees can be deep)."""
    stack: list[tuple[str, int, int]] = [("node", 0, depth)]
    while stack:
        kind, c, d = stack.pop()
        pad = "  " * d
        if kind == "text":
            out.append(pad + ("} else {" if c == 0 else "}"))
            continue
        if c < 0:
            out.append(f"{pad}L[r] = {~c};")
            continue
        out.append(f"{pad}if ({_node_test(tree, c, words)}) {{")
        stack.append(("text", 1, d))
        stack.append(("node", int(tree.right[c]), d + 1))
        stack.append(("text", 0, d))
        stack.append(("node", int(tree.left[c]), d + 1))


def _branchless_tree(tree: Tree, t: int, words: dict[int, tuple[tuple[int, int], ...]]) -> str:
    assert not words, "trees with word tests are never branchless"
    D = tree.depth
    n_int = 2**D - 1
    feat = np.zeros(n_int, dtype=np.int64)
    thr = np.full(n_int, np.inf)
    nan_left = np.ones(n_int, dtype=np.int64)  # padding: always left, NaN too
    leaf = np.zeros(2**D, dtype=np.int64)
    stack = [(0, 0, 0)]
    while stack:
        code, pos, d = stack.pop()
        if code >= 0:
            feat[pos] = tree.feature[code]
            thr[pos] = tree.threshold[code]
            nan_left[pos] = int(bool(tree.nan_left[code]))
            stack.append((int(tree.left[code]), 2 * pos + 1, d + 1))
            stack.append((int(tree.right[code]), 2 * pos + 2, d + 1))
        else:  # a leaf at depth d owns every padded leaf below it (padding goes left)
            span = 2 ** (D - d)
            first = (pos + 1) * span - 1 - n_int
            leaf[first : first + span] = ~code
    R = INTERLEAVE
    f, th, nl, q = (f"{p}{t}" for p in ("bs_f", "bs_t", "bs_n", "bs_q"))
    step = f"int go = (v <= {th}[j]) | ({nl}[j] & (v != v)); j = 2 * j + 2 - go;"
    return "\n".join(
        [
            f"static const int32_t {f}[] = {{{','.join(map(str, feat))}}};",
            f"static const double {th}[] = {{{','.join(c_double(v) for v in thr)}}};",
            f"static const uint8_t {nl}[] = {{{','.join(map(str, nan_left))}}};",
            f"static const bs_leaf {q}[] = {{{','.join(map(str, leaf))}}};",
            f"HIDDEN void bs_tree_{t}(const double* restrict X, int64_t n, int64_t ld, "
            "bs_leaf* restrict L) {",
            "  int64_t r = 0;",
            f"  for (; r + {R} <= n; r += {R}) {{",
            f"    int32_t i[{R}] = {{0}};",
            f"    for (int d = 0; d < {D}; ++d) {{",
            f"      for (int k = 0; k < {R}; ++k) {{",
            "        int32_t j = i[k];",
            f"        double v = X[(r + k) * ld + {f}[j]];",
            f"        {step}",
            "        i[k] = j;",
            "      }",
            "    }",
            f"    for (int k = 0; k < {R}; ++k) L[r + k] = {q}[i[k] - {n_int}];",
            "  }",
            "  for (; r < n; ++r) {",
            "    int32_t j = 0;",
            f"    for (int d = 0; d < {D}; ++d) {{",
            f"      double v = X[r * ld + {f}[j]];",
            f"      {step}",
            "    }",
            f"    L[r] = {q}[j - {n_int}];",
            "  }",
            "}",
        ]
    )


def _table_tree(tree: Tree, t: int, words: dict[int, tuple[tuple[int, int], ...]]) -> str:
    """Node arrays as constant data, walked by one loop (big trees: see the module docstring).

    Children >= 0 are internal nodes, < 0 leaf ~c, as in the IR. Nodes that need more than a
    numeric test (zero-as-missing, categorical, word tests) are flagged and take the general
    test."""
    is_word = np.zeros(tree.n_internal, dtype=bool)
    is_word[list(words)] = True
    special = (tree.zero_missing | (tree.cat_left >= 0) | is_word).astype(np.int64)
    f, th, nl, lc, rc = (f"bs_{p}{t}" for p in ("f", "t", "n", "l", "r"))
    lines = [
        _int_array(f, "int32_t", tree.feature),
        f"static const double {th}[] = {{{','.join(c_double(v) for v in tree.threshold)}}};",
        _int_array(nl, "uint8_t", tree.nan_left.astype(np.int64)),
        _int_array(lc, "int32_t", tree.left),
        _int_array(rc, "int32_t", tree.right),
    ]
    test = f"int go = (v <= {th}[j]) | ({nl}[j] & (v != v));"
    if (special & ~is_word).any():
        sp_, dl, cl, ck = (f"bs_{p}{t}" for p in ("s", "d", "c", "k"))
        lines += [
            _int_array(sp_, "uint8_t", special),
            _int_array(dl, "uint8_t", tree.default_left.astype(np.int64)),
            _int_array(f"bs_z{t}", "uint8_t", tree.zero_missing.astype(np.int64)),
            _int_array(cl, "int32_t", tree.cat_left),
            _int_array(ck, "int32_t", tree.cat_known),
        ]
        test += (
            f" if ({sp_}[j]) {{ if (v != v) go = {nl}[j];"
            f" else if (bs_z{t}[j] && v == 0.0) go = {dl}[j];"
            f" else if ({cl}[j] >= 0) go = bs_cat(v, {cl}[j], {ck}[j], {dl}[j]); }}"
        )
    if words:
        start = np.zeros(tree.n_internal + 1, dtype=np.int64)
        cols: list[int] = []
        masks: list[int] = []
        for i in range(tree.n_internal):
            for col, mask in words.get(i, ()):
                cols.append(col)
                masks.append(mask)
            start[i + 1] = len(cols)
        wo, wc, wm = (f"bs_{p}{t}" for p in ("wo", "wc", "wm"))
        lines += [
            _int_array(wo, "int32_t", start),
            _int_array(wc, "int32_t", cols),
            _int_array(wm, "uint32_t", masks),
        ]
        # a word node reads no feature: its test replaces whatever the numeric one said
        test += (
            f" if ({wo}[j + 1] > {wo}[j]) {{ uint32_t any = 0u;"
            f" for (int32_t k = {wo}[j]; k < {wo}[j + 1]; ++k)"
            f" any |= (uint32_t)x[{wc}[k]] & {wm}[k]; go = any != 0u; }}"
        )
    lines += [
        f"HIDDEN void bs_tree_{t}(const double* restrict X, int64_t n, int64_t ld, "
        "bs_leaf* restrict L) {",
        "  for (int64_t r = 0; r < n; ++r) {",
        "    const double* x = X + r * ld;",
        "    int32_t j = 0;",
        "    while (j >= 0) {",
        f"      double v = x[{f}[j]];",
        f"      {test}",
        f"      j = go ? {lc}[j] : {rc}[j];",
        "    }",
        "    L[r] = ~j;",
        "  }",
        "}",
    ]
    return "\n".join(lines)


def _int_array(name: str, ctype: str, values: np.ndarray | list[int]) -> str:
    body = ",".join(str(int(v)) for v in values) or "0"
    return f"static const {ctype} {name}[] = {{{body}}};"


def _driver(ens: TreeEnsemble, outputs: np.ndarray, n_outputs: int, prepared: int | None) -> str:
    trees = ens.trees
    T = len(trees)
    values = np.concatenate([t.leaf_value.reshape(-1) for t in trees]) if T else np.zeros(1)
    value_offset = np.concatenate([[0], np.cumsum([t.leaf_value.size for t in trees])])[:-1]
    bits = ens.cat_bitsets
    words = max(int(bits.shape[1]), 1)
    flat_bits = bits.reshape(-1) if bits.size else np.zeros(1, dtype=np.uint32)
    exact = " && c == v" if ens.category_rule == "exact" else ""
    F = max(ens.n_features, 1)
    prepare = _prepare(ens, ens.n_features if prepared is None else prepared)
    decls = "\n".join(
        f"HIDDEN void bs_tree_{t}(const double*, int64_t, int64_t, bs_leaf*);" for t in range(T)
    )
    table = ",".join(f"bs_tree_{t}" for t in range(T)) or "0"
    return f"""{_PRELUDE}
#include <stdlib.h>
#include <string.h>
typedef void (*bs_tree_fn)(const double*, int64_t, int64_t, bs_leaf*);
{decls}
static const bs_tree_fn bs_trees[] = {{{table}}};
static const double bs_values[] = {{{",".join(c_double(v) for v in values)}}};
{_int_array("bs_value_at", "int64_t", value_offset)}
{_int_array("bs_out", "int32_t", outputs)}
{_int_array("bs_width", "int32_t", [t.leaf_value.shape[1] for t in trees])}
{_int_array("bs_bits", "uint32_t", flat_bits)}
#define BS_BLOCK {BLOCK_ROWS}
#define BS_T {T}
#define BS_F {F}
#define BS_K {n_outputs}

HIDDEN int bs_cat(double v, int row, int known, int dl) {{
  double c = trunc(v);
  int valid = c >= 0.0 && c < {32 * words}.0{exact};
  int ci = valid ? (int)c : 0;
  if (valid && ((bs_bits[row * {words} + (ci >> 5)] >> (ci & 31)) & 1u)) return 1;
  if (known < 0) return 0;
  if (valid && ((bs_bits[known * {words} + (ci >> 5)] >> (ci & 31)) & 1u)) return 0;
  return dl;
}}

static const double* bs_block(const double* X, int64_t nb, int64_t ld, double* buf,
                              int64_t* ldb) {{
{prepare}
}}

EXPORT int64_t bs_abi(void) {{ return {ABI_VERSION}; }}
EXPORT int64_t bs_n_trees(void) {{ return BS_T; }}
EXPORT int64_t bs_n_outputs(void) {{ return BS_K; }}
EXPORT int64_t bs_n_inputs(void) {{ return BS_F; }}

/* sums[r, k] += leaf values of row r's exit leaves, tree by tree; returns 0, or -1 when out of
   memory (sums untouched then). */
EXPORT int bs_sums(const double* X, int64_t n, int64_t ld, double* sums) {{
  bs_leaf* L = malloc(sizeof(bs_leaf) * BS_BLOCK);
  double* buf = malloc(sizeof(double) * BS_BLOCK * BS_F);
  if (!L || !buf) {{ free(L); free(buf); return -1; }}
  for (int64_t s = 0; s < n; s += BS_BLOCK) {{
    int64_t nb = n - s < BS_BLOCK ? n - s : BS_BLOCK, ldb = ld;
    const double* xb = bs_block(X + s * ld, nb, ld, buf, &ldb);
    double* ob = sums + s * BS_K;
    for (int t = 0; t < BS_T; ++t) {{
      bs_trees[t](xb, nb, ldb, L);
      const double* v = bs_values + bs_value_at[t];
      const int w = bs_width[t], o = bs_out[t];
      if (w == 1) {{
        for (int64_t r = 0; r < nb; ++r) ob[r * BS_K + o] += v[L[r]];
      }} else {{
        for (int64_t r = 0; r < nb; ++r)
          for (int k = 0; k < w; ++k) ob[r * BS_K + o + k] += v[(int64_t)L[r] * w + k];
      }}
    }}
  }}
  free(L); free(buf);
  return 0;
}}

/* leaves[r, t] = exit leaf of tree t for row r (IR numbering, left to right). */
EXPORT int bs_leaves(const double* X, int64_t n, int64_t ld, int32_t* leaves) {{
  bs_leaf* L = malloc(sizeof(bs_leaf) * BS_BLOCK);
  double* buf = malloc(sizeof(double) * BS_BLOCK * BS_F);
  if (!L || !buf) {{ free(L); free(buf); return -1; }}
  for (int64_t s = 0; s < n; s += BS_BLOCK) {{
    int64_t nb = n - s < BS_BLOCK ? n - s : BS_BLOCK, ldb = ld;
    const double* xb = bs_block(X + s * ld, nb, ld, buf, &ldb);
    for (int t = 0; t < BS_T; ++t) {{
      bs_trees[t](xb, nb, ldb, L);
      for (int64_t r = 0; r < nb; ++r) leaves[(s + r) * BS_T + t] = L[r];
    }}
  }}
  free(L); free(buf);
  return 0;
}}
"""


def _prepare(ens: TreeEnsemble, prepared: int) -> str:
    """The input rule over one block's first `prepared` columns, into `buf` (the block itself
    when the rule is a no-op)."""
    if ens.input_rule == "float64" or prepared == 0:
        return "  (void)nb; (void)buf; (void)ldb; (void)ld;\n  return X;"
    if ens.input_rule == "float32":
        conv = "(double)(float)v"
    else:
        conv = f"(fabs(v) <= {c_double(LIGHTGBM_ZERO)} ? 0.0 : v)"
    return (
        "  for (int64_t r = 0; r < nb; ++r)\n"
        "    for (int64_t j = 0; j < BS_F; ++j) {\n"
        f"      double v = X[r * ld + j]; buf[r * BS_F + j] = j < {prepared} ? {conv} : v;\n"
        "    }\n"
        "  *ldb = BS_F;\n"
        "  return buf;"
    )
