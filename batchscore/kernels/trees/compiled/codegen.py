"""Tree IR -> C source: trees as inline functions, walked in groups over each row.

Why C generated per model: thresholds, feature offsets and the tree's shape become immediates
and code, so a node costs a compare and a (mostly predicted) branch instead of three dependent
loads. The loop is row-major over groups of trees: for each block of rows, for each group of
GROUP_TREES trees, for each row, every tree of the group in order. The row's features stay in
L1 while the group's code (a few tens of KB) stays in the instruction cache, and the leaf values
are added straight into the row's sums. Measured on LightGBM 500 trees x 31 leaves, 20 features,
one thread, against `Booster.predict`: this layout 7.5-8.2x; one tree over a whole block of rows
before the next (the first version) 4.4x; 8 rows per tree in turn 5.9x; all 500 trees in one
function 5.0x (and 18 s to compile).

Each tree gets one of three forms, picked from its shape (`forms`):

- branchy: nested if/else returning the exit leaf, inlined into its group's row loop. Most
  trees (boosting's small trees are well predicted).
- branchless: a big, bushy, numeric-only tree (random forests) padded to a complete tree of its
  depth and walked with index arithmetic (child = 2i+1 or 2i+2) over branchless.INTERLEAVE rows,
  tree-major (one tree over the whole block, then the next): no branch depends on the data,
  where a branchy walk of random splits mispredicts about every other node. Consecutive
  branch-free trees form their own groups; per row the values are still added in tree order.
  The tree is constant data walked by one shared function (`bs_walk`, compiled.branchless),
  whose node is one compare: NaN is routed by the scratch copy of the inputs it reads.
- table: the node arrays as constant data and one loop that walks them. For big trees (fully
  grown forests have thousands of leaves): code for them would take the compiler minutes
  (superlinear in function size; 20 trees of ~5,000 leaves: 197 s as branches, 0.8 s as
  tables). Trees with more than BRANCHY_MAX_NODES internal nodes, and the largest trees once
  all branchy code would pass BRANCHY_BUDGET_NODES, take this form.

The node semantics are those of `ir.goes_left`, in order: NaN -> `nan_left`; zero-as-missing
and x == 0 -> `default_left`; categorical bitsets; else `x <= threshold` in float64. Inputs are
prepared per block by the ensemble's input rule (float32 round trip, LightGBM's zero threshold).

The factorized fact side (kernels.trees.factorized) uses the same generator: a node whose
feature lives in a factorized dimension is a *word test* instead. The dimension row's words are
the AND of the QuickScorer masks of its false nodes; a node on the row's path is true exactly
when some leaf of its left subtree is still set there (the exit leaf is never cleared, and a
false node clears its whole left subtree), so the test is an AND of the joined 32-bit words
with the node's left-leaf range, and the walk reaches the exit leaf QuickScorer would find.

Leaf values are added tree by tree in the ensemble's order into zeroed float64 sums, the order
in which LightGBM and scikit-learn add them: raw LightGBM scores come out bit-identical. Rows
may be walked in another order than the table's (`bs_sums`'s `order`, row_order.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from batchscore.kernels.trees.compiled import branchless
from batchscore.kernels.trees.compiled.c_text import c_double, int_array
from batchscore.kernels.trees.ir import LIGHTGBM_ZERO, Tree, TreeEnsemble

CODEGEN_VERSION = "7"
"""Bumped whenever generated code can change for the same IR (part of every cache key)."""

ABI_VERSION = 5
"""What `bs_abi()` returns; the loader refuses a library built for another calling convention."""

GROUP_TREES = 24
"""Trees walked together per row (16-32 measured within noise; 64 slower, 500 much slower)."""
BLOCK_BYTES = 512 << 10
"""Rows per block: as many as fit this many bytes of prepared inputs, 64..2048 rows."""
BLOCK_ROWS = 2048
BRANCHLESS_MAX_DEPTH = 10
BRANCHLESS_FILL = 0.1
BRANCHLESS_MIN_LEAVES = 64
"""A tree is walked branch-free when it has at least this many leaves and this share of a
complete tree's: big bushy trees (random forests) whose random splits defeat the branch
predictor. Measured (300k rows, 20 features, one thread, vs the model's own predict_proba):
RandomForest 100 trees depth 10 (~200 leaves each): branch-free 3.8x, branchy 2.5x;
HistGradientBoosting 200 x 31 leaves: all branchy 7.4-8.4x, with its 23 fullest trees
branch-free 7.0x; LightGBM 100 x 31 leaves: 5.8x vs 4.8x with 21 branch-free."""
BRANCHY_MAX_NODES = 511
BRANCHY_BUDGET_NODES = 120_000
"""gcc -O2 compiles about 7,000 branchy nodes per second per core here (LightGBM, 500 trees x
30 nodes: 4.2 s on 2 cores); the budget keeps a cold compile under ~20 s."""
UNIT_NODES = 4_000
"""Branchy nodes per translation unit: units compile in parallel and keep gcc's memory small."""

BRANCHY, BRANCHLESS, TABLE = "branchy", "branchless", "table"

WordTests = dict[tuple[int, int], tuple[tuple[int, int], ...]]
"""(tree, node) -> ((input column, 32-bit mask), ...): the node goes left when any masked bit of
those columns (joined words, exact integers in float64) is set."""
TreeWords = dict[int, tuple[tuple[int, int], ...]]


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
    tunables = (GROUP_TREES, BLOCK_BYTES, BLOCK_ROWS, BRANCHLESS_MAX_DEPTH, BRANCHY_MAX_NODES)
    tunables += (
        BRANCHLESS_FILL,
        BRANCHLESS_MIN_LEAVES,
        branchless.INTERLEAVE,
        branchless.GROUP_TREES,
    )  # type: ignore[assignment]
    h.update(f"|{tunables}|{BRANCHY_BUDGET_NODES}|{UNIT_NODES}".encode())
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
    writers = {BRANCHY: _branchy_tree, TABLE: _table_tree}
    groups = tree_groups(chosen)
    units: list[str] = []
    unit: list[str] = []
    budget = scratch = 0
    for g, members in enumerate(groups):
        tree_major = chosen[members[0]] == BRANCHLESS
        columns = branchless.group_columns(members, trees) if tree_major else {}
        for t in members:
            unit.append(_values(trees[t], t))
            if tree_major:  # never with word tests (`forms`)
                unit.append(branchless.tree_arrays(trees[t], t, columns))
            else:
                own = {i: m for (tt, i), m in tests.items() if tt == t}
                unit.append(writers[chosen[t]](trees[t], t, own))
            budget += trees[t].n_internal if chosen[t] == BRANCHY else 8
        if tree_major:
            unit.append(branchless.tree_major_group(g, members, trees, outputs, n_outputs, columns))
            scratch = max(scratch, 2 * len(columns))
        else:
            unit.append(_group(g, members, trees, outputs, n_outputs))
        if budget >= UNIT_NODES:
            units.append("\n".join([_PRELUDE, *unit]))
            unit, budget = [], 0
    if unit:
        units.append("\n".join([_PRELUDE, *unit]))
    units.append(_driver(ens, len(groups), n_outputs, prepared, scratch))
    return Source(tuple(units), len(trees), n_outputs, ens.n_features, chosen)


def tree_groups(chosen: tuple[str, ...]) -> list[list[int]]:
    """Runs of consecutive trees walked the same way (branchless trees tree-major, the others
    row-major), at most GROUP_TREES each (branchless.GROUP_TREES branch-free ones): groups run
    in order and trees in order within a group, so every row still gets its leaf values added
    in the ensemble's order."""
    groups: list[list[int]] = []
    for t, form in enumerate(chosen):
        major = form == BRANCHLESS
        if (
            groups
            and len(groups[-1]) < (branchless.GROUP_TREES if major else GROUP_TREES)
            and (chosen[groups[-1][0]] == BRANCHLESS) == major
        ):
            groups[-1].append(t)
        else:
            groups.append([t])
    return groups


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
    """Nearly complete, shallow, numeric-only trees (module docstring)."""
    if tree.n_internal == 0 or tree.depth > BRANCHLESS_MAX_DEPTH:
        return False
    if tree.zero_missing.any() or (tree.cat_left >= 0).any():
        return False
    if (np.isposinf(tree.threshold) & ~tree.nan_left.astype(bool)).any():
        return False  # "NaN right, every number left": the +inf copy cannot tell (branchless)
    leaves = tree.n_leaves
    return leaves >= BRANCHLESS_MIN_LEAVES and leaves >= BRANCHLESS_FILL * 2**tree.depth


def block_rows(n_inputs: int) -> int:
    """Rows per block for inputs of this width (BLOCK_BYTES of prepared values)."""
    return int(min(BLOCK_ROWS, max(64, BLOCK_BYTES // (8 * max(n_inputs, 1)))))


_PRELUDE = """#include <stdint.h>
#include <math.h>
#define HIDDEN __attribute__((visibility("hidden")))
#define EXPORT __attribute__((visibility("default")))
#define TREE static inline __attribute__((always_inline)) int32_t
HIDDEN int bs_cat(double v, int row, int known, int dl);
"""
_PRELUDE += branchless.WALK_SIGNATURE + ";\n"


def _word_test(masks: tuple[tuple[int, int], ...]) -> str:
    terms = [f"((uint32_t)x[{col}] & {mask}u)" for col, mask in masks]
    return f"(({' | '.join(terms) or '0u'}) != 0u)"


def _node_test(tree: Tree, i: int, words: TreeWords) -> str:
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


def _branchy_tree(tree: Tree, t: int, words: TreeWords) -> str:
    lines = [f"TREE bs_tree_{t}(const double* restrict x) {{"]
    if tree.n_internal == 0:
        lines.append("  (void)x; return 0;")
    else:
        _emit(tree, words, lines)
    lines.append("}")
    return "\n".join(lines)


def _emit(tree: Tree, words: TreeWords, out: list[str]) -> None:
    """Nested if/else returning the exit leaf (iterative: trees can be deep)."""
    stack: list[tuple[str, int, int]] = [("node", 0, 1)]
    while stack:
        kind, c, d = stack.pop()
        pad = "  " * d
        if kind == "text":
            out.append(pad + ("} else {" if c == 0 else "}"))
            continue
        if c < 0:
            out.append(f"{pad}return {~c};")
            continue
        out.append(f"{pad}if ({_node_test(tree, c, words)}) {{")
        stack.append(("text", 1, d))
        stack.append(("node", int(tree.right[c]), d + 1))
        stack.append(("text", 0, d))
        stack.append(("node", int(tree.left[c]), d + 1))


def _table_tree(tree: Tree, t: int, words: TreeWords) -> str:
    """Node arrays as constant data, walked by one loop (big trees: see the module docstring).

    Children >= 0 are internal nodes, < 0 leaf ~c, as in the IR. Nodes that need more than a
    numeric test (zero-as-missing, categorical, word tests) are flagged and take the general
    test."""
    is_word = np.zeros(tree.n_internal, dtype=bool)
    is_word[list(words)] = True
    special = (tree.zero_missing | (tree.cat_left >= 0) | is_word).astype(np.int64)
    f, th, nl, lc, rc = (f"bs_{p}{t}" for p in ("f", "t", "n", "l", "r"))
    lines = [
        int_array(f, "int32_t", tree.feature),
        f"static const double {th}[] = {{{','.join(c_double(v) for v in tree.threshold)}}};",
        int_array(nl, "uint8_t", tree.nan_left.astype(np.int64)),
        int_array(lc, "int32_t", tree.left),
        int_array(rc, "int32_t", tree.right),
    ]
    test = f"int go = (v <= {th}[j]) | ({nl}[j] & (v != v));"
    if (special & ~is_word).any():
        sp_, dl, zm, cl, ck = (f"bs_{p}{t}" for p in ("s", "d", "z", "c", "k"))
        lines += [
            int_array(sp_, "uint8_t", special),
            int_array(dl, "uint8_t", tree.default_left.astype(np.int64)),
            int_array(zm, "uint8_t", tree.zero_missing.astype(np.int64)),
            int_array(cl, "int32_t", tree.cat_left),
            int_array(ck, "int32_t", tree.cat_known),
        ]
        test += (
            f" if ({sp_}[j]) {{ if (v != v) go = {nl}[j];"
            f" else if ({zm}[j] && v == 0.0) go = {dl}[j];"
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
            int_array(wo, "int32_t", start),
            int_array(wc, "int32_t", cols),
            int_array(wm, "uint32_t", masks),
        ]
        # a word node reads no feature: its test replaces whatever the numeric one said
        test += (
            f" if ({wo}[j + 1] > {wo}[j]) {{ uint32_t any = 0u;"
            f" for (int32_t k = {wo}[j]; k < {wo}[j + 1]; ++k)"
            f" any |= (uint32_t)x[{wc}[k]] & {wm}[k]; go = any != 0u; }}"
        )
    lines += [
        f"TREE bs_tree_{t}(const double* restrict x) {{",
        "  int32_t j = 0;",
        "  while (j >= 0) {",
        f"    double v = x[{f}[j]];",
        f"    {test}",
        f"    j = go ? {lc}[j] : {rc}[j];",
        "  }",
        "  return ~j;",
        "}",
    ]
    return "\n".join(lines)


def _values(tree: Tree, t: int) -> str:
    flat = tree.leaf_value.reshape(-1)
    return f"static const double bs_v{t}[] = {{{','.join(c_double(v) for v in flat)}}};"


def _group(
    g: int, members: list[int], trees: tuple[Tree, ...], outputs: np.ndarray, n_outputs: int
) -> str:
    """One group's row loop: every tree of the group for each row, values added in order."""
    cols = sorted(
        {int(outputs[t]) + k for t in members for k in range(trees[t].leaf_value.shape[1])}
    )
    acc = {c: f"a{c}" for c in cols}  # the row's sums in locals: registers, not memory
    body = [
        f"HIDDEN void bs_group_{g}(const double* restrict X, int64_t n, int64_t ld, "
        "double* restrict out, double* restrict scratch) {",
        "  (void)scratch;  /* for branch-free groups */",
        "  for (int64_t r = 0; r < n; ++r) {",
        "    const double* restrict x = X + r * ld;",
        f"    double* restrict o = out + r * {n_outputs};",
        *(f"    double {acc[c]} = o[{c}];" for c in cols),
    ]
    for t in members:
        width = int(trees[t].leaf_value.shape[1])
        col = int(outputs[t])
        if width == 1:
            body.append(f"    {acc[col]} += bs_v{t}[bs_tree_{t}(x)];")
        else:
            adds = " ".join(f"{acc[col + k]} += v[{k}];" for k in range(width))
            body.append(
                f"    {{ const double* v = bs_v{t} + (int64_t)bs_tree_{t}(x) * {width}; {adds} }}"
            )
    body += [*(f"    o[{c}] = {acc[c]};" for c in cols), "  }", "}"]
    return "\n".join(body)


def _driver(
    ens: TreeEnsemble, n_groups: int, n_outputs: int, prepared: int | None, scratch: int
) -> str:
    bits = ens.cat_bitsets
    words = max(int(bits.shape[1]), 1)
    flat_bits = bits.reshape(-1) if bits.size else np.zeros(1, dtype=np.uint32)
    exact = " && c == v" if ens.category_rule == "exact" else ""
    F = max(ens.n_features, 1)
    prepare = _prepare(ens, ens.n_features if prepared is None else prepared)
    decls = "\n".join(
        f"HIDDEN void bs_group_{g}(const double*, int64_t, int64_t, double*, double*);"
        for g in range(n_groups)
    )
    calls = "\n".join(f"    bs_group_{g}(xb, nb, ldb, ob, sb);" for g in range(n_groups))
    return f"""{_PRELUDE}
#include <stdlib.h>
{decls}
{int_array("bs_bits", "uint32_t", flat_bits)}
#define BS_BLOCK {block_rows(ens.n_features)}
#define BS_F {F}
#define BS_K {n_outputs}
#define BS_SCRATCH {scratch}

{branchless.walker()}

HIDDEN int bs_cat(double v, int row, int known, int dl) {{
  double c = trunc(v);
  int valid = c >= 0.0 && c < {32 * words}.0{exact};
  int ci = valid ? (int)c : 0;
  if (valid && ((bs_bits[row * {words} + (ci >> 5)] >> (ci & 31)) & 1u)) return 1;
  if (known < 0) return 0;
  if (valid && ((bs_bits[known * {words} + (ci >> 5)] >> (ci & 31)) & 1u)) return 0;
  return dl;
}}

static const double* bs_block(const double* X, int64_t nb, int64_t ld, const int64_t* cols,
                              const int64_t* rows, double* buf, int64_t* ldb) {{
{prepare}
}}

EXPORT int64_t bs_abi(void) {{ return {ABI_VERSION}; }}
EXPORT int64_t bs_n_trees(void) {{ return {ens.n_trees}; }}
EXPORT int64_t bs_n_outputs(void) {{ return BS_K; }}
EXPORT int64_t bs_n_inputs(void) {{ return BS_F; }}

/* sums[r, k] += leaf values of row r's exit leaves, tree by tree; returns 0, or -1 when out of
   memory (sums untouched then). `cols`: the column of X holding each of the BS_F inputs (a
   block at a time, gathered where the input rule reads them anyway), or NULL when X holds
   exactly the inputs. `order`: NULL, or the n rows of X (and sums) to walk, in that order
   (row_order: sorted so that branches predict); each row's sums are its own either way. */
EXPORT int bs_sums(const double* X, int64_t n, int64_t ld, const int64_t* cols,
                   const int64_t* order, double* sums) {{
  double* buf = malloc(sizeof(double) * BS_BLOCK * BS_F);
  double* obuf = order ? malloc(sizeof(double) * BS_BLOCK * BS_K) : NULL;
  double* sb = BS_SCRATCH ? malloc(sizeof(double) * BS_BLOCK * BS_SCRATCH) : NULL;
  if (!buf || (order && !obuf) || (BS_SCRATCH && !sb)) {{
    free(buf); free(obuf); free(sb); return -1;
  }}
  for (int64_t s = 0; s < n; s += BS_BLOCK) {{
    int64_t nb = n - s < BS_BLOCK ? n - s : BS_BLOCK, ldb = ld;
    const int64_t* rows = order ? order + s : NULL;
    const double* xb = bs_block(rows ? X : X + s * ld, nb, ld, cols, rows, buf, &ldb);
    double* ob = sums + s * BS_K;
    for (int64_t r = 0; rows && r < nb; ++r) for (int64_t k = 0; k < BS_K; ++k)
      obuf[r * BS_K + k] = sums[rows[r] * BS_K + k];
    if (rows) ob = obuf;
{calls}
    for (int64_t r = 0; rows && r < nb; ++r) for (int64_t k = 0; k < BS_K; ++k)
      sums[rows[r] * BS_K + k] = obuf[r * BS_K + k];
  }}
  free(buf);
  free(obuf);
  free(sb);
  return 0;
}}
"""


def _prepare(ens: TreeEnsemble, prepared: int) -> str:
    """One block of inputs for the trees, in `buf`: column `cols[j]` of X (column j without
    `cols`) of row `rows[r]` (row r without `rows`) under the input rule for the first
    `prepared` of them. Without `cols` and `rows` and with a no-op rule, the block itself."""
    conv = {"float64": "v", "float32": "(double)(float)v"}.get(
        ens.input_rule, f"(fabs(v) <= {c_double(LIGHTGBM_ZERO)} ? 0.0 : v)"
    )
    value = "v" if conv == "v" or prepared == 0 else f"j < {prepared} ? {conv} : v"
    loop = (
        "    for (int64_t r = 0; r < nb; ++r) {{\n"
        "      const double* xr = X + (rows ? rows[r] : r) * ld;\n"
        "      for (int64_t j = 0; j < BS_F; ++j) {{\n"
        "        double v = xr[{0}]; buf[r * BS_F + j] = " + value + ";\n      }}\n    }}\n"
    )
    direct = "    return X;\n" if value == "v" else loop.format("j")
    return (
        f"  if (!cols && !rows) {{\n{direct}  }} else if (!cols) {{\n{loop.format('j')}"
        f"  }} else {{\n{loop.format('cols[j]')}  }}\n  *ldb = BS_F;\n  return buf;"
    )
