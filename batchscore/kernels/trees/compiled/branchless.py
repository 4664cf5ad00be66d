"""Branch-free trees: big bushy numeric trees padded to complete trees, walked by index.

A random forest's splits are random to the branch predictor, so a branchy walk mispredicts
about every other node. Here a tree of depth D is padded to 2^D - 1 internal nodes (padding
always goes left) and kept as constant arrays (input column, threshold, the leaf under each
padded leaf); `bs_walk`, one function shared by every tree of the library, walks one tree over
a whole block, INTERLEAVE rows in turn, with child = 2i + 1 + (x > threshold).

NaN costs nothing there: a group of consecutive branch-free trees first copies each input it
reads into two columns of a scratch block, NaN replaced by -inf in the first and +inf in the
second, and a node whose NaN goes left reads the first copy, one whose NaN goes right the
second. A threshold below +inf then sends the replaced value the node's NaN way, and every
other value as `x <= threshold` does (an infinity in the data is itself in both copies). A
node at +inf whose NaN goes right (scikit-learn's "missing apart" split) would send a +inf of
the data right too, so trees with one stay branchy (codegen.is_branchless). Values are
added into each row's sums tree by tree, the ensemble's order: the same bits as the model.
"""

from __future__ import annotations

import numpy as np

from batchscore.kernels.trees.compiled.c_text import c_double, int_array
from batchscore.kernels.trees.ir import Tree

INTERLEAVE = 12
"""Rows a branch-free tree walks together, each in its own register: independent load chains
overlap. RandomForest 100 trees depth 10, 1M rows, one thread, on a 2.1-2.5 GHz core, against
its own predict_proba (4.7-4.9 s): 8 rows with a NaN-aware node test kept in an array (the
code before `bs_walk`) 2.1-2.4 s, the same with registers no faster; NaN-free blocks 1.93 s in
an array; in registers 4 rows 2.20 s, 8 rows 1.50-1.61 s, 10 rows 1.34 s, 12 rows 1.19-1.23 s,
14 rows 1.15 s, 16 rows 1.37 s (x86-64 has 16 general registers)."""

GROUP_TREES = 256
"""Branch-free trees per group (one scratch copy of the inputs per group and block)."""

WALK_SIGNATURE = """HIDDEN void bs_walk(const int32_t* f, const double* th, const int32_t* q,
  const double* v, int depth, int width, const double* restrict X, int64_t n, int64_t ld,
  double* restrict out, int64_t n_outputs, int64_t col)"""


def group_columns(members: list[int], trees: tuple[Tree, ...]) -> dict[int, int]:
    """Input -> its place among the inputs the group's trees read (two scratch columns each)."""
    used = sorted({int(c) for t in members for c in trees[t].feature[trees[t].feature >= 0]})
    return {feature: i for i, feature in enumerate(used)}


def tree_arrays(tree: Tree, t: int, columns: dict[int, int]) -> str:
    """The padded tree as constant arrays: each node's scratch column (the input's NaN -> -inf
    copy where NaN goes left, its NaN -> +inf copy where it goes right), threshold, and the
    leaf under each padded leaf."""
    D = tree.depth
    n_int = 2**D - 1
    column = np.zeros(n_int, dtype=np.int64)  # padding: +inf thresholds, always left
    thr = np.full(n_int, np.inf)
    leaf = np.zeros(2**D, dtype=np.int64)
    stack = [(0, 0, 0)]
    while stack:
        code, pos, d = stack.pop()
        if code >= 0:
            nan_right = not bool(tree.nan_left[code])
            column[pos] = 2 * columns[int(tree.feature[code])] + int(nan_right)
            thr[pos] = tree.threshold[code]
            stack.append((int(tree.left[code]), 2 * pos + 1, d + 1))
            stack.append((int(tree.right[code]), 2 * pos + 2, d + 1))
        else:  # a leaf at depth d owns every padded leaf below it (padding goes left)
            span = 2 ** (D - d)
            first = (pos + 1) * span - 1 - n_int
            leaf[first : first + span] = ~code
    f, th, q = (f"bs_{p}{t}" for p in ("f", "t", "q"))
    return "\n".join(
        [
            int_array(f, "int32_t", column),
            f"static const double {th}[] = {{{','.join(c_double(v) for v in thr)}}};",
            int_array(q, "int32_t", leaf),
        ]
    )


def _walk_call(tree: Tree, t: int, col: int, n_outputs: int, width2: int) -> str:
    """One branch-free tree over every row of the scratch block (`bs_walk`)."""
    width = int(tree.leaf_value.shape[1])
    arrays = ", ".join(f"bs_{p}{t}" for p in ("f", "t", "q", "v"))
    return (
        f"  bs_walk({arrays}, {tree.depth}, {width}, scratch, n, {width2}, out, {n_outputs}, "
        f"{col});"
    )


def walker() -> str:
    """`bs_walk`: a padded tree of depth `depth` (node columns f, thresholds th; leaf q ->
    values v of `width`) over rows [0, n) of the scratch block X, INTERLEAVE rows in turn,
    each row's position in a register (j0, j1, ...), the exit leaves' values added into out's
    columns col... ."""
    R = INTERLEAVE
    ks = range(R)
    step = "j{k} = 2 * j{k} + 1 + (x{k}[f[j{k}]] > th[j{k}]);"
    return "\n".join(
        [
            "static inline void bs_add(const double* v, int32_t leaf, int width, double* o) {",
            "  if (width == 1) { o[0] += v[leaf]; return; }",
            "  for (int c = 0; c < width; ++c) o[c] += v[(int64_t)leaf * width + c];",
            "}",
            "",
            WALK_SIGNATURE + " {",
            "  const int32_t n_int = (1 << depth) - 1;",
            "  int64_t r = 0;",
            f"  for (; r + {R} <= n; r += {R}) {{",
            *(f"    const double* x{k} = X + (r + {k}) * ld; int32_t j{k} = 0;" for k in ks),
            "    for (int d = 0; d < depth; ++d) {",
            *(f"      {step.format(k=k)}" for k in ks),
            "    }",
            *(
                f"    bs_add(v, q[j{k} - n_int], width, out + (r + {k}) * n_outputs + col);"
                for k in ks
            ),
            "  }",
            "  for (; r < n; ++r) {",
            "    const double* x0 = X + r * ld; int32_t j0 = 0;",
            f"    for (int d = 0; d < depth; ++d) {step.format(k=0)}",
            "    bs_add(v, q[j0 - n_int], width, out + r * n_outputs + col);",
            "  }",
            "}",
        ]
    )


def tree_major_group(
    g: int,
    members: list[int],
    trees: tuple[Tree, ...],
    outputs: np.ndarray,
    n_outputs: int,
    columns: dict[int, int],
) -> str:
    """Branch-free trees one after the other, each over the whole block (per row, values are
    still added in tree order), after the inputs they read are copied into the scratch block
    (module doc). `scratch` holds 2 * len(columns) values a row."""
    used = list(columns)
    width2 = 2 * len(used)
    body = [
        f"HIDDEN void bs_group_{g}(const double* restrict X, int64_t n, int64_t ld, "
        "double* restrict out, double* restrict scratch) {",
        f"  {int_array('used', 'int32_t', used)}",
        "  for (int64_t r = 0; r < n; ++r) {",
        f"    const double* x = X + r * ld; double* y = scratch + r * {width2};",
        f"    for (int c = 0; c < {len(used)}; ++c) {{",
        "      double v = x[used[c]]; int nan = v != v;",
        "      y[2 * c] = nan ? -INFINITY : v; y[2 * c + 1] = nan ? INFINITY : v;",
        "    }",
        "  }",
    ]
    body += [_walk_call(trees[t], t, int(outputs[t]), n_outputs, width2) for t in members]
    body.append("}")
    return "\n".join(body)
