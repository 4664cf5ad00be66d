"""Model converters, one module per library family: estimator object -> kernel.

Each module registers its converters in `models.converter_table` when imported, and
`models.compiled` imports them all. This package imports none of them, so importing one
converter module (or the opaque fallback, which `models.convert` needs) loads only that one.
"""
